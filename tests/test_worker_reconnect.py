"""A worker whose scheduler goes away comes back when it returns, or leaves (issue #13, item 4).

Real processes: a scheduler is stopped and started again on the same port
with the same token while a ``python -m trioq worker`` process runs.
"""

from __future__ import annotations

import os
import signal
import sys
from contextlib import AsyncExitStack
from pathlib import Path

import procs
import trio

import trioq

TIMEOUT = 60


def pid_of() -> int:
    return os.getpid()


async def test_a_worker_rejoins_a_scheduler_restarted_on_its_port_and_runs_tasks(
    tmp_path: Path,
) -> None:
    with trio.fail_after(TIMEOUT):
        async with AsyncExitStack() as stack:
            first = await stack.enter_async_context(procs.scheduler_process(tmp_path / "first"))
            port = first.address.rsplit(":", 1)[1]
            args = [sys.executable, "-m", "trioq", "worker", first.address, "--name", "comeback"]
            env = {**procs.client_env(first.token), "PYTHONPATH": str(Path(__file__).parent)}
            worker = await stack.enter_async_context(
                procs.started(args, env=env, stderr_path=tmp_path / "worker.err", label="worker")
            )
            async with trioq.connect(first.address, token=first.token) as client:
                await procs.poll_until(lambda: _workers(client, 1))
            first.proc.send_signal(signal.SIGTERM)
            await first.proc.finish()
            second = await stack.enter_async_context(
                procs.scheduler_process(
                    tmp_path / "second", token=first.token, extra_args=["--port", port]
                )
            )
            assert second.address == first.address
            async with trioq.connect(second.address, token=second.token) as client:
                await procs.poll_until(lambda: _workers(client, 1))
                assert await (await client.submit(pid_of)) == worker.pid
            assert worker.returncode is None  # it never left


async def test_a_worker_whose_scheduler_stays_away_exits_with_status_1_and_says_why(
    tmp_path: Path,
) -> None:
    with trio.fail_after(TIMEOUT):
        async with procs.scheduler_process(tmp_path) as scheduler:
            args = [sys.executable, "-m", "trioq", "worker", scheduler.address]
            args += ["--reconnect-timeout", "1"]
            async with procs.started(
                args,
                env=procs.client_env(scheduler.token),
                stderr_path=tmp_path / "worker.err",
                label="worker",
            ) as worker:
                async with trioq.connect(scheduler.address, token=scheduler.token) as client:
                    await procs.poll_until(lambda: _workers(client, 1))
                began = trio.current_time()
                scheduler.proc.send_signal(signal.SIGTERM)
                await scheduler.proc.finish()
                status, _ = await worker.finish()
                waited = trio.current_time() - began
        assert status == 1
        assert 1 <= waited < 1 + 5, waited  # it tried for the timeout, then left
        said = (tmp_path / "worker.err").read_text()
        assert "lost the scheduler" in said and "not back within 1 s" in said, said


async def _workers(client: trioq.Client, n: int) -> bool:
    return len((await client.status())["workers"]) == n
