"""A worker the scheduler stops hearing from is treated as dead (heartbeats)."""

from __future__ import annotations

import os
import secrets
import signal
import sys
from pathlib import Path

import procs
import trio

import trioq

TIMEOUT = 60


def slow_pid(seconds: float) -> int:
    import time

    time.sleep(seconds)
    return os.getpid()


async def test_a_silent_worker_is_dropped_and_its_task_reruns_on_another(tmp_path: Path) -> None:
    token = secrets.token_urlsafe(16)
    token_file = tmp_path / "token"
    token_file.write_text(token)
    scheduler_args = [sys.executable, "-m", "trioq", "scheduler", "--port", "0"]
    scheduler_args += ["--token-file", str(token_file), "--worker-timeout", "1"]
    env = {**procs.client_env(token), "PYTHONPATH": str(Path(__file__).parent)}
    with trio.fail_after(TIMEOUT):
        async with procs.started(
            scheduler_args, env=procs.base_env(), stderr_path=tmp_path / "s.err", label="sched"
        ) as scheduler:
            address = (await scheduler.expect("trioq scheduler listening on ")).strip()
            worker_args = [sys.executable, "-m", "trioq", "worker", address]
            async with (
                procs.started(
                    [*worker_args, "--name", "frozen"],
                    env=env,
                    stderr_path=tmp_path / "w1.err",
                    label="frozen",
                ) as frozen,
                trioq.connect(address, token=token) as client,
            ):

                async def one_worker() -> bool:
                    return len((await client.status())["workers"]) == 1

                await procs.poll_until(one_worker)
                future = await client.submit(slow_pid, 0.5)

                async def running() -> bool:
                    workers = (await client.status())["workers"]
                    return bool(workers) and workers[0]["running"] == 1

                await procs.poll_until(running)
                frozen.send_signal(signal.SIGSTOP)  # alive, connected, silent

                async def dropped() -> bool:
                    return not (await client.status())["workers"]

                await procs.poll_until(dropped)
                async with procs.started(
                    [*worker_args, "--name", "fresh"],
                    env=env,
                    stderr_path=tmp_path / "w2.err",
                    label="fresh",
                ) as fresh:
                    assert await future == fresh.pid  # the task ran again, elsewhere
