"""``python -m trioq cluster``: a scheduler and worker processes in one command."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import procs
import pytest
import trio

import trioq

TIMEOUT = 60


def worker_pid(_: int) -> int:
    return os.getpid()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
async def test_cluster_command_runs_tasks_on_its_workers_and_stops_every_process_on_a_signal(
    tmp_path: Path, signum: int
) -> None:
    command = [sys.executable, "-m", "trioq", "cluster", "--workers", "2", "--port", "0"]
    with trio.fail_after(TIMEOUT):
        async with procs.started(
            command,
            env={**procs.base_env(), "PYTHONPATH": str(Path(__file__).parent)},
            stderr_path=tmp_path / "cluster.err",
            label="cluster",
        ) as cluster:
            address = (await cluster.expect("trioq cluster: scheduler on ")).split(",")[0]
            token = await cluster.expect("token: ")
            async with trioq.connect(address, token=token) as client:

                async def both_workers_joined() -> bool:
                    return len((await client.status())["workers"]) == 2

                await procs.poll_until(both_workers_joined)
                pids = await client.gather(await client.map(worker_pid, range(40)))
            assert len(set(pids)) == 2, "both worker processes ran tasks"
            assert cluster.pid not in pids, "tasks ran in worker processes, not the launcher"
            members = procs.process_group_members(cluster.pid)
            assert len(members) >= 3, members  # the launcher and its two workers
            cluster.send_signal(signum)
            status, lines = await cluster.finish()
            assert status == 0, cluster.describe()
            assert "trioq cluster stopped" in lines
            await procs.poll_until(lambda: not procs.process_group_members(cluster.pid))


@pytest.mark.parametrize("token_from", ["file", "env"])
async def test_cluster_command_never_prints_a_token_it_was_given(
    tmp_path: Path, token_from: str
) -> None:
    token = "given-token-" + "x" * 24
    command = [sys.executable, "-m", "trioq", "cluster", "--workers", "1", "--port", "0"]
    env = procs.base_env()
    if token_from == "file":
        (tmp_path / "token").write_text(token + "\n")
        command += ["--token-file", str(tmp_path / "token")]
    else:
        env = procs.client_env(token)
    with trio.fail_after(TIMEOUT):
        async with procs.started(
            command, env=env, stderr_path=tmp_path / "cluster.err", label="cluster"
        ) as cluster:
            first = await cluster.expect("trioq cluster: scheduler on ")
            address = first.split(",")[0]
            async with trioq.connect(address, token=token) as client:  # it uses the token given

                async def worker_joined() -> bool:
                    return len((await client.status())["workers"]) == 1

                await procs.poll_until(worker_joined)
            cluster.send_signal(signal.SIGTERM)
            status, lines = await cluster.finish()
    assert status == 0, cluster.describe()
    assert "trioq cluster stopped" in lines, lines
    printed = [first, *lines]  # its workers share its stdout
    assert not [line for line in printed if token in line or line.startswith("token:")], printed
    assert token not in cluster.stderr()


async def test_cluster_command_counts_one_worker_in_the_singular(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "trioq", "cluster", "--workers", "1", "--port", "0"]
    with trio.fail_after(TIMEOUT):
        async with procs.started(
            command, env=procs.base_env(), stderr_path=tmp_path / "cluster.err", label="cluster"
        ) as cluster:
            line = await cluster.expect("trioq cluster: ")
    assert line.startswith("scheduler on tcp://127.0.0.1:"), line
    assert line.endswith(", 1 worker"), line
