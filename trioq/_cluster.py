"""``open_cluster()``: an embedded scheduler, and workers in-process or as child processes.

Rules:

* Everything ``open_cluster`` starts lives in a nursery it owns and is
  cancelled and joined when the ``async with`` block exits, however it
  exits.  The cluster's token is registered in this process, so
  ``trioq.connect(cluster.address)`` needs no token argument here; other
  processes get it from ``cluster.token``.
* Worker child processes (``open_cluster(processes=True)`` and
  ``python -m trioq cluster``) are kept by ``WorkerProcesses``: each one is
  ``python -m trioq worker``, given the token in its environment (never on
  its command line) and this process's ``sys.path``, so whatever can be
  imported here (the modules of functions pickled by reference) can be
  imported there.  A child counts as started once it has joined the
  scheduler: it says so on a pipe (``--ready-fd``).
* A child that exits while the cluster runs (a task called ``os._exit``,
  it crashed, it was killed) is started again under the same name, after a
  pause that doubles while it keeps dying young (``RESTART_DELAY`` up to
  ``MAX_RESTART_DELAY``).  The scheduler reruns the tasks it was running
  elsewhere, and gives up on a task whose workers died ``MAX_DEATHS`` times
  (its future raises ``WorkerLostError``).
* Stopping a child is SIGTERM, then SIGKILL after ``STOP_GRACE`` seconds
  (a worker stuck in a thread's call cannot stop by itself), and it is
  always waited for: no child outlives the block or the command.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import trio

from ._client.dial import register_local_token
from ._exceptions import collapse_single_groups
from ._scheduler.server import Scheduler
from ._wire.auth import TOKEN_ENV
from ._wire.heartbeat import HEARTBEAT_INTERVAL, check_interval
from ._worker.worker import Worker

__all__ = ["Cluster", "WorkerProcesses", "open_cluster"]

log = logging.getLogger("trioq.cluster")

STOP_GRACE = 5.0  # seconds between SIGTERM and SIGKILL when a child worker is stopped
RESTART_DELAY = 0.1  # seconds before a child that exited is started again
MAX_RESTART_DELAY = 5.0  # the pause doubles up to this while a child keeps dying young
STABLE_AFTER = 10.0  # seconds a child must live for the pause to start from RESTART_DELAY again


def _check_nthreads(nthreads: int) -> None:
    if type(nthreads) is not int or nthreads < 1:
        raise ValueError(f"nthreads must be a positive int, got {nthreads!r}")


def _python_path() -> str:
    """This process's ``sys.path`` as a ``PYTHONPATH`` (what ``multiprocessing``'s
    spawn gives its children)."""
    entries = [entry or os.getcwd() for entry in sys.path if isinstance(entry, str)]
    return os.pathsep.join(entries)


class WorkerProcesses:
    """``count`` worker child processes for the scheduler at ``address``.

    ``await nursery.start(processes.run)`` starts them all and reports
    started once every one has joined; they are kept running (restarted
    when one exits) until ``run`` is cancelled, which stops them all.
    ``nthreads`` tasks run at once in each.  Raises ``ValueError`` for a
    negative ``count`` or an ``nthreads`` that is not a positive int.
    """

    def __init__(
        self,
        address: str,
        token: str,
        count: int,
        *,
        nthreads: int = 1,
        grace: float = STOP_GRACE,
        heartbeat_interval: float = HEARTBEAT_INTERVAL,
    ) -> None:
        if type(count) is not int or count < 0:
            raise ValueError(f"the number of workers must be an int >= 0, got {count!r}")
        _check_nthreads(nthreads)
        self.address = address
        self.count = count
        self.nthreads = nthreads
        self.heartbeat_interval = check_interval(heartbeat_interval)
        self.grace = grace
        #: How many times a child was started again after it exited.
        self.restarts = 0
        self._env = {**os.environ, TOKEN_ENV: token, "PYTHONPATH": _python_path()}
        self._running: dict[int, trio.Process] = {}  # by worker index
        # Per worker: the write end of a pipe it watches.  It is never written;
        # the worker reads end-of-file once this process is gone, SIGKILL included.
        self._lifelines: dict[int, int] = {}

    @property
    def pids(self) -> list[int]:
        """The process ids of the children running now, by worker index."""
        return [self._running[index].pid for index in sorted(self._running)]

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Start every child, report started once all have joined, keep them running.

        Raises ``RuntimeError`` (stopping the others) if a child exits before
        it first joins: it could not connect, say, or could not start at all.
        Cancelled, it stops every child (see the module's rules) and returns
        once all have exited.
        """
        with collapse_single_groups():  # a failure to start is raised as itself
            await self._run(task_status)

    async def _run(self, task_status: trio.TaskStatus[None]) -> None:
        async with trio.open_nursery() as nursery:
            failures: list[RuntimeError] = []

            async def start(index: int) -> None:
                try:
                    await nursery.start(self._keep, index)
                except RuntimeError as exc:  # the first one says it: stop starting the rest
                    failures.append(exc)
                    starting.cancel_scope.cancel()

            async with trio.open_nursery() as starting:  # all at once, not one by one
                for index in range(self.count):
                    starting.start_soon(start, index)
            if failures:
                raise failures[0]
            task_status.started()

    async def _keep(self, index: int, task_status: trio.TaskStatus[None]) -> None:
        """Run worker ``index`` until cancelled, starting it again whenever it exits."""
        delay = RESTART_DELAY
        first = True
        while True:
            began = trio.current_time()
            process, joined = await self._start(index, first)
            if joined and first:
                task_status.started()
                first = False
            try:
                status = await process.wait()
            finally:
                del self._running[index]
                with trio.CancelScope(shield=True):
                    await self._stop(process)
                os.close(self._lifelines.pop(index))
            if trio.current_time() - began >= STABLE_AFTER:
                delay = RESTART_DELAY
            log.warning(
                "worker-%d (pid %d) exited with status %s%s; starting it again in %.1f s",
                index,
                process.pid,
                status,
                "" if joined else " before it joined",
                delay,
            )
            await trio.sleep(delay)
            delay = min(delay * 2, MAX_RESTART_DELAY)
            self.restarts += 1

    async def _start(self, index: int, first: bool) -> tuple[trio.Process, bool]:
        """Start worker ``index``; the process, and whether it joined the scheduler.

        Raises ``RuntimeError`` for a ``first`` start that exits before joining.
        """
        read_fd, write_fd = os.pipe()
        life_read, life_write = os.pipe()
        self._lifelines[index] = life_write
        command = [sys.executable, "-m", "trioq", "worker", self.address]
        command += ["--name", f"worker-{index}", "--nthreads", str(self.nthreads)]
        command += ["--ready-fd", str(write_fd), "--lifeline-fd", str(life_read)]
        command += ["--heartbeat-interval", repr(self.heartbeat_interval)]
        try:
            process = await trio.lowlevel.open_process(
                command,
                stdin=subprocess.DEVNULL,
                env=self._env,
                pass_fds=(write_fd, life_read),
            )
        except BaseException:
            os.close(read_fd)
            os.close(self._lifelines.pop(index))
            raise
        finally:
            os.close(write_fd)  # the child holds its own copies
            os.close(life_read)
        self._running[index] = process
        try:
            async with trio.lowlevel.FdStream(read_fd) as ready:
                joined = bool(await ready.receive_some(16))  # b"" if it exited first
            if not joined and first:
                status = await process.wait()
                raise RuntimeError(
                    f"worker process worker-{index} exited with status {status} before "
                    f"it joined the scheduler at {self.address}"
                )
        except BaseException:
            del self._running[index]
            with trio.CancelScope(shield=True):
                await self._stop(process)
            os.close(self._lifelines.pop(index))
            raise
        return process, joined

    async def _stop(self, process: trio.Process) -> None:
        """SIGTERM, and SIGKILL after ``grace`` seconds; returns once it has exited."""
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.terminate()
            with trio.move_on_after(self.grace):
                await process.wait()
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()


@dataclass(frozen=True)
class Cluster:
    """A running embedded cluster."""

    address: str  #: ``tcp://host:port`` to pass to ``trioq.connect``
    token: str  #: the shared secret clients and workers authenticate with
    scheduler: Scheduler  #: the scheduler object (its ``state`` is inspectable)
    #: The worker child processes (``processes=True``), else None.
    processes: WorkerProcesses | None = None


@asynccontextmanager
async def open_cluster(
    workers: int = 0,
    *,
    processes: bool = False,
    nthreads: int = 1,
    host: str = "127.0.0.1",
    port: int = 0,
    token: str | None = None,
    dispatch: str = "pull",
    prefetch: int = 1,
    heartbeat_interval: float = HEARTBEAT_INTERVAL,
) -> AsyncIterator[Cluster]:
    """Run a scheduler, and ``workers`` workers, for the duration of an ``async with`` block.

    Use it as ``async with trioq.open_cluster() as cluster:``; it yields a
    ``Cluster`` once every worker has joined.  The arguments:

    * ``workers``: how many workers to start (0: none; tasks then wait for
      a worker from elsewhere).
    * ``processes``: False (the default) runs the workers in this process,
      as trio tasks: they start in milliseconds, and tasks may be closures
      over this process's objects and see its module state, but they share
      its GIL, and a task that kills the interpreter kills the caller.  True
      runs each worker as a child process, as ``python -m trioq cluster``
      does: tasks run in parallel, a child that exits is started again (the
      scheduler reruns its tasks elsewhere, and fails a task with
      ``WorkerLostError`` once its workers died three times), and functions
      and arguments must pickle (a module-level function must be importable
      there; children get this process's ``sys.path``).  The tasks guide
      weighs the two.
    * ``nthreads``: the tasks each worker runs at once.
    * ``host``, ``port``: where the scheduler listens, 127.0.0.1 and a free
      port by default (``cluster.address`` says which).
    * ``token``: the shared secret (``cluster.token``); None generates one,
      which only a loopback ``host`` allows.  Within this process
      ``trioq.connect(cluster.address)`` finds it without being told.
    * ``dispatch``, ``prefetch``: how tasks reach workers, "pull" (the
      default) or "push" with ``prefetch`` tasks beyond each worker's
      slots (see ``Scheduler``).
    * ``heartbeat_interval``: seconds between signs of life on an idle
      connection, for the scheduler and the workers (see ``Scheduler``).

    Leaving the block, by any path, stops the workers (a child gets
    SIGTERM, then SIGKILL five seconds later) and the scheduler, closes its
    connections and drops its state.

    Raises what ``Scheduler`` raises (``ValueError`` for a bad ``dispatch``,
    ``prefetch``, ``heartbeat_interval`` or token, or no token on a
    non-loopback ``host``; ``TypeError`` for a ``prefetch`` that is not an
    int), ``ValueError`` for an ``nthreads`` that is not a positive int or a
    ``workers`` that is not an int >= 0, ``TypeError`` for a ``processes``
    that is not a bool, ``OSError`` if it cannot listen, ``RuntimeError``
    if a worker process exits before it first joins.
    """
    if type(processes) is not bool:
        raise TypeError(f"processes must be a bool, got {type(processes).__name__}")
    if type(workers) is not int or workers < 0:
        raise ValueError(f"workers must be an int >= 0, got {workers!r}")
    _check_nthreads(nthreads)
    scheduler = Scheduler(
        host,
        port,
        token=token,
        dispatch=dispatch,
        prefetch=prefetch,
        heartbeat_interval=heartbeat_interval,
    )
    with collapse_single_groups():
        async with trio.open_nursery() as nursery:
            address = await nursery.start(scheduler.serve)
            register_local_token(address, scheduler.token)
            children = None
            if processes:
                children = WorkerProcesses(
                    address,
                    scheduler.token,
                    workers,
                    nthreads=nthreads,
                    heartbeat_interval=heartbeat_interval,
                )
                await nursery.start(children.run)
            else:
                for index in range(workers):
                    worker = Worker(
                        address,
                        name=f"worker-{index}",
                        nthreads=nthreads,
                        heartbeat_interval=heartbeat_interval,
                    )
                    await nursery.start(worker.run)
            try:
                yield Cluster(address, scheduler.token, scheduler, children)
            finally:
                nursery.cancel_scope.cancel()
