"""Processes for the multi-process tests: a scheduler, and client programs.

Rules:

* Every process is started by an async context manager that owns it: on
  the way out (test passed, failed or was cancelled) the process is sent
  SIGTERM, waited for, and killed if it has not gone within a few
  seconds.  Each one runs in its own session, so whatever it might start
  belongs to a process group the tests can inspect and clean up.
* Every wait here is bounded; callers add ``trio.fail_after`` around
  whatever else they wait for.  Nothing synchronises by sleeping: tests
  read lines the processes print (flushed) and poll real conditions.
* Only 127.0.0.1 and port 0.  The token reaches clients through the
  ``TRIOQ_TOKEN`` environment variable and the scheduler through
  ``--token-file``; the tests' own environment never leaks one in.

Imported by the tests (``tests/`` is on ``sys.path`` under pytest's default
import mode).  Run as a script, ``python tests/procs.py ROLE ...``, it is the
client program the tests start: see ``_producer`` and ``_consumer``.
"""

from __future__ import annotations

import argparse
import array
import fcntl
import json
import os
import re
import secrets
import signal
import socket
import struct
import subprocess
import sys
import termios
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio

__all__ = [
    "Proc",
    "SchedulerProc",
    "base_env",
    "client_env",
    "client_process",
    "poll_until",
    "process_group_members",
    "run_python",
    "scheduler_process",
    "started",
    "unread_bytes",
]

TOKEN_ENV = "TRIOQ_TOKEN"
STOP_GRACE = 5.0  # seconds between SIGTERM and SIGKILL when cleaning up
START_TIMEOUT = 20.0  # seconds for a scheduler to report its address
POLL_INTERVAL = 0.01  # seconds between checks of a condition in another process
SCRIPT = Path(__file__).resolve()
LISTENING = re.compile(r"^trioq scheduler listening on (tcp://127\.0\.0\.1:(\d+))$")


def base_env(**extra: str) -> dict[str, str]:
    """This process's environment without a token, plus ``extra``."""
    env = {key: value for key, value in os.environ.items() if key != TOKEN_ENV}
    env.update(extra)
    return env


def client_env(token: str) -> dict[str, str]:
    """The environment of a client process: the token in ``TRIOQ_TOKEN``."""
    return base_env(**{TOKEN_ENV: token})


# -- owning a process -----------------------------------------------------------------


class Proc:
    """A started process: its stdout read line by line, its stderr kept in a file."""

    def __init__(self, process: trio.Process, stderr_path: Path, label: str) -> None:
        self.process = process
        self.label = label
        self._stderr_path = stderr_path
        self._buffer = bytearray()
        self._eof = False

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def returncode(self) -> int | None:
        return self.process.returncode

    def stderr(self) -> str:
        """What the process wrote to stderr so far."""
        try:
            return self._stderr_path.read_text(errors="replace")
        except OSError:
            return ""

    def describe(self) -> str:
        """A few lines for assertion messages: who, exit status, stderr."""
        return f"{self.label} (pid {self.pid}, exit {self.returncode}) stderr:\n{self.stderr()}"

    async def readline(self) -> str | None:
        """The next line of stdout without its newline, or ``None`` at end of file."""
        stream = self.process.stdout
        assert stream is not None
        while True:
            newline = self._buffer.find(b"\n")
            if newline >= 0:
                line = bytes(self._buffer[:newline])
                del self._buffer[: newline + 1]
                return line.decode()
            if self._eof:
                if self._buffer:
                    line = bytes(self._buffer)
                    self._buffer.clear()
                    return line.decode()
                return None
            data = await stream.receive_some(65536)
            if not data:
                self._eof = True
            else:
                self._buffer += data

    async def expect(self, prefix: str) -> str:
        """Read lines until one starts with ``prefix``; return the rest of it.

        Raises ``AssertionError`` (with stderr) if stdout ends first.
        """
        while True:
            line = await self.readline()
            if line is None:
                with trio.move_on_after(STOP_GRACE):
                    await self.process.wait()
                raise AssertionError(f"expected a line {prefix!r} from {self.describe()}")
            if line.startswith(prefix):
                return line[len(prefix) :]

    async def read_rest(self) -> list[str]:
        """Every remaining line of stdout, up to end of file."""
        lines = []
        while (line := await self.readline()) is not None:
            lines.append(line)
        return lines

    async def wait(self) -> int:
        """Wait for the process to exit; its exit status."""
        return await self.process.wait()

    async def finish(self) -> tuple[int, list[str]]:
        """Read stdout to its end and wait for the exit: (exit status, lines)."""
        lines = await self.read_rest()
        return await self.process.wait(), lines

    def stdout_nearly_full(self) -> bool:
        """Whether at most a page of the stdout pipe is free (nothing read meanwhile).

        A process printing lines of a few hundred bytes is then blocked in a
        write, or a few lines away from it (Linux: ``FIONREAD`` and
        ``F_GETPIPE_SZ`` on the read end; a pipe stores writes by page).
        """
        assert self.process.stdout is not None
        fd = self.process.stdout.fileno()
        capacity = fcntl.fcntl(fd, fcntl.F_GETPIPE_SZ)
        unread = array.array("i", [0])
        fcntl.ioctl(fd, termios.FIONREAD, unread, True)
        return unread[0] >= capacity - 4096

    def send_signal(self, signum: int) -> None:
        if self.process.returncode is None:
            self.process.send_signal(signum)


async def _stop(process: trio.Process) -> None:
    """SIGTERM, wait, SIGKILL the process and its group; never waits unboundedly."""
    if process.returncode is None:
        process.terminate()
        with suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGCONT)  # in case a test stopped it
        with trio.move_on_after(STOP_GRACE):
            await process.wait()
    if process.returncode is None:
        process.kill()
        with trio.move_on_after(STOP_GRACE):
            await process.wait()
    # Anything left in the group this process led (it ran in its own session).
    for pid in process_group_members(process.pid):
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@asynccontextmanager
async def started(
    args: Sequence[str],
    *,
    env: dict[str, str],
    stderr_path: Path,
    label: str,
    cwd: Path | None = None,
) -> AsyncIterator[Proc]:
    """Start ``args`` in a new session, stdout piped; stop it on the way out."""
    stderr = os.open(stderr_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        process = await trio.lowlevel.open_process(
            list(args),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=stderr,
            env=env,
            cwd=cwd,
            start_new_session=True,
        )
    finally:
        os.close(stderr)
    try:
        yield Proc(process, stderr_path, label)
    finally:
        with trio.CancelScope(shield=True):
            await _stop(process)
            assert process.stdout is not None
            await process.stdout.aclose()


def process_group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes whose process group is ``pgid`` (Linux /proc)."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses.
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry.name))
    return members


def unread_bytes(port: int) -> int:
    """Bytes received but not yet read by the 127.0.0.1 TCP sockets bound to ``port``.

    Read from /proc/net/tcp (Linux): the receive queues of a listener's
    accepted connections, which is what a stopped server has not read.
    """
    total = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, queues = fields[1], fields[4]
        if int(local.rsplit(":", 1)[1], 16) == port:
            total += int(queues.split(":")[1], 16)
    return total


async def poll_until(condition: Callable[[], bool | Awaitable[bool]]) -> None:
    """Check ``condition`` every POLL_INTERVAL seconds until it holds.

    For conditions nothing notifies this process of (another process's
    state); bound it with a cancel scope.
    """
    while True:
        holds = condition()
        if not isinstance(holds, bool):
            holds = await holds
        if holds:
            return
        await trio.sleep(POLL_INTERVAL)


# -- the scheduler ----------------------------------------------------------------------


@dataclass(frozen=True)
class SchedulerProc:
    """A scheduler process the tests started, and how to reach it."""

    address: str
    token: str
    proc: Proc
    directory: Path


@asynccontextmanager
async def scheduler_process(
    directory: Path, *, token: str | None = None, extra_args: Sequence[str] = ()
) -> AsyncIterator[SchedulerProc]:
    """``python -m trioq scheduler`` on 127.0.0.1, port 0, with a token file.

    Yields once the scheduler has printed the address it listens on; raises
    ``AssertionError`` (with its stderr) if it does not within START_TIMEOUT.
    """
    await trio.Path(directory).mkdir(parents=True, exist_ok=True)
    token = token or secrets.token_urlsafe(24)
    token_file = directory / "scheduler.token"
    await trio.Path(token_file).write_text(token + "\n")
    args = [sys.executable, "-m", "trioq", "scheduler"]
    args += ["--host", "127.0.0.1", "--port", "0", "--token-file", str(token_file)]
    args += extra_args
    async with started(
        args,
        env=base_env(),
        stderr_path=directory / "scheduler.stderr",
        label="scheduler",
        cwd=directory,
    ) as proc:
        line: str | None = None
        with trio.move_on_after(START_TIMEOUT):
            line = await proc.readline()
        match = LISTENING.match(line or "")
        if match is None:
            raise AssertionError(
                f"the scheduler did not report its address (first line {line!r}): "
                + proc.describe()
            )
        yield SchedulerProc(match.group(1), token, proc, directory)


# -- client programs ------------------------------------------------------------------------


@asynccontextmanager
async def client_process(
    scheduler: SchedulerProc, role: str, *args: object, label: str | None = None
) -> AsyncIterator[Proc]:
    """Run this file as a client program (``role`` and ``args``) against ``scheduler``."""
    label = label or f"{role}-{secrets.token_hex(3)}"
    async with script_process(scheduler, SCRIPT, role, *args, label=label) as proc:
        yield proc


@asynccontextmanager
async def script_process(
    scheduler: SchedulerProc, script: Path, role: str, *args: object, label: str | None = None
) -> AsyncIterator[Proc]:
    """Run ``script`` (a test file's own ``__main__``) as the client program ``role``
    against ``scheduler``, the token in its environment only."""
    label = label or role
    command = [sys.executable, str(script), role, scheduler.address, *map(str, args)]
    async with started(
        command,
        env=client_env(scheduler.token),
        stderr_path=scheduler.directory / f"{label}.stderr",
        label=label,
    ) as proc:
        yield proc


@asynccontextmanager
async def worker_process(
    scheduler: SchedulerProc, name: str, nthreads: int = 4
) -> AsyncIterator[Proc]:
    """``python -m trioq worker`` for ``scheduler``, the token in its environment."""
    args = [sys.executable, "-m", "trioq", "worker", scheduler.address]
    args += ["--nthreads", str(nthreads), "--name", name]
    async with started(
        args,
        env=client_env(scheduler.token),
        stderr_path=scheduler.directory / f"{name}.stderr",
        label=name,
    ) as proc:
        yield proc


async def finished(proc: Proc) -> list[str]:
    """A program's stdout lines, once it has exited with status 0."""
    status, lines = await proc.finish()
    assert status == 0, proc.describe()
    return lines


@asynccontextmanager
async def limited_scheduler(directory: Path, limit: float) -> AsyncIterator[SchedulerProc]:
    """``scheduler_process``; the test fails if it is still running after ``limit`` s."""

    async def fail_when_too_slow() -> None:
        await trio.sleep(limit)
        raise AssertionError(f"the test was still running after {limit}s")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(fail_when_too_slow)
        async with scheduler_process(directory) as running:
            yield running
        print(running.proc.describe())  # shown by pytest only when the test failed
        nursery.cancel_scope.cancel()


def limited_scheduler_fixture(limit: float) -> Any:
    """A ``scheduler`` fixture for a test file: ``limited_scheduler`` in the test's
    temporary directory, failing the test past ``limit`` seconds."""

    @pytest.fixture
    async def scheduler(tmp_path: Path) -> AsyncIterator[SchedulerProc]:
        async with limited_scheduler(tmp_path / "cluster", limit) as running:
            yield running

    return scheduler


def programs_of(script: Path) -> Callable[..., Any]:
    """``program(scheduler, role, *args, label=None)``: ``script`` (a test file run
    as its own client programs) as the client program ``role``."""

    def program(
        scheduler: SchedulerProc, role: str, *args: object, label: str | None = None
    ) -> Any:
        return script_process(scheduler, script, role, *args, label=label)

    return program


async def _kill_now(process: trio.Process) -> None:
    process.kill()


async def run_python(
    args: Sequence[str], *, env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    """Run ``python ARGS`` to completion, capturing its output as text.

    Bound it with a cancel scope: cancelled, it kills the process and waits for it.
    """
    result = await trio.run_process(
        [sys.executable, *args],
        stdin=subprocess.DEVNULL,
        capture_stdout=True,
        capture_stderr=True,
        env=env,
        check=False,
        deliver_cancel=_kill_now,
    )
    return subprocess.CompletedProcess(
        result.args, result.returncode, result.stdout.decode(), result.stderr.decode()
    )


# -- the client programs themselves (run in the child process) -----------------------------


def _say(*parts: object) -> None:
    print(*parts, flush=True)


async def _producer(args: argparse.Namespace) -> None:
    """Put ``count`` items ``[producer, seq]`` through a send endpoint, then close it.

    Prints ``ready`` once its send endpoint is counted by the scheduler,
    ``done`` when every item is committed.
    """
    import trioq

    async with trioq.connect(args.address, name=f"producer-{args.id}") as client:
        queue = client.queue(args.queue, args.maxsize)
        send = queue.open_send_channel()
        await queue.qsize()  # a round trip: the endpoint is counted
        _say("ready")
        async with send:
            for seq in range(args.count):
                await send.send([args.id, seq])
        _say("done")


async def _consumer(args: argparse.Namespace) -> None:
    """Receive until ``EndOfChannel``.

    Prints ``ready`` once its receive endpoint is counted.  With ``--stream``
    prints ``item JSON`` for each item as soon as it has it (``--pad N`` adds
    N dots, so a test can fill the pipe quickly); otherwise ``items
    JSON-LIST`` at the end.  ``--pause-after K`` stops taking items after K
    (printing ``paused``) and waits to be killed, holding whatever it has
    prefetched.  ``end`` means ``EndOfChannel``.
    """
    import trioq

    async with trioq.connect(args.address, name=args.name) as client:
        queue = client.queue(args.queue, args.maxsize, prefetch=args.prefetch)
        receive = queue.open_receive_channel()
        await queue.qsize()
        _say("ready")
        items: list[Any] = []
        taken = 0
        async with receive:
            async for item in receive:
                taken += 1
                if args.stream:
                    _say("item", json.dumps(item), "." * args.pad)
                else:
                    items.append(item)
                if taken == args.pause_after:
                    _say("paused")
                    await trio.sleep_forever()
        if not args.stream:
            _say("items", json.dumps(items))
        _say("end")


async def _reset(args: argparse.Namespace) -> None:
    """Authenticate, print ``connected``, then die so the kernel resets the connection.

    ``SO_LINGER`` with a zero timeout makes closing the socket send an RST
    (what a killed process with unread data on its socket sends anyway).
    """
    import trioq

    async with trioq.connect(args.address, name="reset") as client:
        await client.queue("reset").qsize()
        sock = client._session.connection.stream.socket  # no public handle on the socket
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        _say("connected")
        os.kill(os.getpid(), signal.SIGKILL)


def _main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="tests/procs.py")
    roles = parser.add_subparsers(dest="role", required=True)
    producer = roles.add_parser("producer")
    producer.add_argument("address")
    producer.add_argument("queue")
    producer.add_argument("id", type=int)
    producer.add_argument("count", type=int)
    producer.add_argument("maxsize", type=int)
    consumer = roles.add_parser("consumer")
    consumer.add_argument("address")
    consumer.add_argument("queue")
    consumer.add_argument("name")
    consumer.add_argument("maxsize", type=int)
    consumer.add_argument("prefetch", type=int)
    consumer.add_argument("--stream", action="store_true")
    consumer.add_argument("--pause-after", type=int, default=0)
    consumer.add_argument("--pad", type=int, default=0)
    reset = roles.add_parser("reset")
    reset.add_argument("address")
    args = parser.parse_args(argv)
    trio.run({"producer": _producer, "consumer": _consumer, "reset": _reset}[args.role], args)


if __name__ == "__main__":
    _main()
