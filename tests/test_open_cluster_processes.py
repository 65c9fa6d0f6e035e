"""``open_cluster(processes=True)``, and ``WorkerProcesses`` that the ``cluster`` command shares.

The test process is the caller: its scheduler is embedded, its workers
are real ``python -m trioq worker`` children on 127.0.0.1, port 0.  Task
functions are module level, so they travel by reference: the children can
import this module because they get the caller's ``sys.path``.  Every
child is waited for by the code under test; each test then checks that no
process it saw is left (``gone``).  Every wait is bounded; conditions in
other processes (a worker rejoining) are polled through the scheduler's
own state, and nothing synchronises by sleeping.

What is checked: tasks run in the children, in parallel with the caller;
a task that kills its worker process fails with ``WorkerLostError`` after
three deaths while the caller and the cluster go on with restarted
workers; a killed worker is started again; leaving the block by an error
or a cancellation, even one while the children are still starting, stops
every child; a child that ignores SIGTERM is
killed after the grace period; a child that cannot join fails the start
with ``RuntimeError``; a worker whose scheduler went away exits; and the
``cluster`` command restarts a killed worker too.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import procs
import pytest
import trio

import trioq
from trioq._cluster import WorkerProcesses

TIMEOUT = 60.0  # any one test: children import trio and trioq, on a loaded CI box


@pytest.fixture(autouse=True)
async def deadline() -> AsyncIterator[None]:
    """Fail a test still running after TIMEOUT (the explicit bounds are inside)."""

    async def fail_when_too_slow() -> None:
        await trio.sleep(TIMEOUT)
        raise AssertionError(f"the test was still running after {TIMEOUT}s")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(fail_when_too_slow)
        yield
        nursery.cancel_scope.cancel()


def pid_of(_: Any = None) -> int:
    return os.getpid()


def exit_process() -> None:
    os._exit(1)


async def ignore_sigterm() -> int:
    """An async task runs in the worker's trio thread, where handlers can be set."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    return os.getpid()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"


def gone(pids: set[int]) -> bool:
    """None of ``pids`` is still running (the code under test waited for them all)."""
    return not [pid for pid in pids if alive(pid)]


def joined_workers(cluster: Any) -> int:
    return len(cluster.scheduler.state.status()["workers"])


async def test_tasks_run_in_child_processes_that_have_joined_before_the_block_starts() -> None:
    async with trioq.open_cluster(workers=2, processes=True) as cluster:
        assert cluster.processes is not None
        children = set(cluster.processes.pids)
        assert len(children) == 2 and os.getpid() not in children
        assert joined_workers(cluster) == 2  # both joined: the block starts after that
        async with trioq.connect(cluster.address) as client:
            pids = await client.gather(await client.map(pid_of, range(40)))
    assert set(pids) <= children and os.getpid() not in pids
    assert gone(children)


async def test_in_process_workers_stay_the_default() -> None:
    async with trioq.open_cluster(workers=1) as cluster, trioq.connect(cluster.address) as client:
        assert cluster.processes is None
        assert await (await client.submit(pid_of)) == os.getpid()


async def test_a_task_that_kills_its_worker_process_fails_and_the_cluster_goes_on() -> None:
    async with trioq.open_cluster(workers=2, processes=True) as cluster:
        assert cluster.processes is not None
        first = set(cluster.processes.pids)
        async with trioq.connect(cluster.address) as client:
            doomed = await client.submit(exit_process)
            with pytest.raises(trioq.WorkerLostError, match="3 workers that died"):
                await doomed
            assert cluster.processes.restarts >= 2  # three deaths, each child restarted
            pids = await client.gather(await client.map(pid_of, range(10)))
            assert not set(pids) & first  # restarted children ran them
            assert os.getpid() not in pids  # and this process is still here to see it
            await procs.poll_until(lambda: joined_workers(cluster) == 2)
            seen = first | set(cluster.processes.pids)
    assert gone(seen)


async def test_a_worker_process_killed_from_outside_is_started_again() -> None:
    async with trioq.open_cluster(workers=1, processes=True) as cluster:
        assert cluster.processes is not None
        (victim,) = cluster.processes.pids
        os.kill(victim, signal.SIGKILL)
        await procs.poll_until(lambda: cluster.processes.restarts == 1)
        await procs.poll_until(lambda: joined_workers(cluster) == 1)
        async with trioq.connect(cluster.address) as client:
            pid = await (await client.submit(pid_of))
        assert pid != victim and cluster.processes.pids == [pid]
    assert gone({victim, pid})


@pytest.mark.parametrize("how", ["error", "cancel"])
async def test_leaving_the_block_early_stops_every_worker_process(how: str) -> None:
    seen: set[int] = set()
    raises = pytest.raises(KeyError) if how == "error" else contextlib.nullcontext()
    with trio.CancelScope() as scope, raises:
        async with trioq.open_cluster(workers=2, processes=True) as cluster:
            assert cluster.processes is not None
            seen.update(cluster.processes.pids)
            if how == "error":
                raise KeyError("inside")
            scope.cancel()
            await trio.sleep_forever()
    assert len(seen) == 2
    assert gone(seen)


def worker_children() -> set[int]:
    """Live children of this process that run ``python -m trioq worker`` (Linux /proc)."""
    found = set()
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text()
            command = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        is_worker = command[1:4] == [b"-m", b"trioq", b"worker"]
        if is_worker and int(fields[1]) == os.getpid() and fields[0] != "Z":
            found.add(int(entry.name))
    return found


async def test_a_cancellation_while_the_children_start_stops_them_too() -> None:
    spawned: set[int] = set()
    with trio.CancelScope() as scope:
        async with trio.open_nursery() as nursery:

            async def cancel_once_both_exist() -> None:
                while len(spawned) < 2:  # another process's state: polled
                    spawned.update(worker_children())
                    await trio.sleep(procs.POLL_INTERVAL)
                scope.cancel()  # long before they have imported trioq and joined

            nursery.start_soon(cancel_once_both_exist)
            async with trioq.open_cluster(workers=2, processes=True):
                raise AssertionError("the block started: the cancellation came too late")
    assert scope.cancelled_caught
    assert len(spawned) == 2
    assert gone(spawned) and not worker_children()


async def test_a_child_that_ignores_sigterm_is_killed_after_the_grace_period() -> None:
    async with trioq.open_cluster() as cluster, trioq.connect(cluster.address) as client:
        children = WorkerProcesses(cluster.address, cluster.token, 1, grace=0.5)
        async with trio.open_nursery() as nursery:
            await nursery.start(children.run)
            (pid,) = children.pids
            assert await (await client.submit(ignore_sigterm)) == pid
            started = trio.current_time()
            nursery.cancel_scope.cancel()
        waited = trio.current_time() - started
    assert 0.5 <= waited < 5.0, waited  # SIGTERM did nothing; SIGKILL came after the grace
    assert gone({pid})


async def test_a_child_that_cannot_join_fails_the_start_with_runtime_error() -> None:
    async with trioq.open_cluster() as cluster:
        children = WorkerProcesses(cluster.address, "not-the-token", 2)
        async with trio.open_nursery() as nursery:
            with pytest.raises(RuntimeError, match=r"worker-\d exited with status 2 before it "):
                await nursery.start(children.run)
        assert children.pids == [] and joined_workers(cluster) == 0


async def test_bad_arguments_are_refused_before_anything_starts() -> None:
    with pytest.raises(ValueError, match="nthreads"):
        WorkerProcesses("tcp://127.0.0.1:1", "t", 1, nthreads=0)
    with pytest.raises(ValueError, match="workers"):
        WorkerProcesses("tcp://127.0.0.1:1", "t", -1)


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [({"processes": 1}, TypeError), ({"workers": -1}, ValueError), ({"nthreads": 0}, ValueError)],
)
async def test_open_cluster_refuses_bad_arguments(kwargs: dict[str, Any], error: type) -> None:
    with pytest.raises(error):
        async with trioq.open_cluster(**kwargs):
            pass  # pragma: no cover


async def test_a_worker_process_exits_with_status_1_when_its_scheduler_goes_away(
    tmp_path: Path,
) -> None:
    """So a launcher can start again a worker that the scheduler dropped."""
    async with AsyncExitStack() as stack:
        async with trioq.open_cluster() as cluster:
            command = [sys.executable, "-m", "trioq", "worker", cluster.address, "--name", "w"]
            command += ["--reconnect-timeout", "0.5"]
            worker = await stack.enter_async_context(
                procs.started(
                    command,
                    env=procs.client_env(cluster.token),
                    stderr_path=tmp_path / "worker.err",
                    label="worker",
                )
            )
            await procs.poll_until(lambda: joined_workers(cluster) == 1)
        status, _ = await worker.finish()  # no signal: the connection ended
        assert status == 1, worker.describe()
        said = (tmp_path / "worker.err").read_text()
        assert f"stopping: lost the scheduler at {cluster.address}, not back within 0.5 s" in said


async def test_the_cluster_command_starts_a_killed_worker_again(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "trioq", "cluster", "--workers", "1", "--port", "0"]
    async with procs.started(
        command,
        env={**procs.base_env(), "PYTHONPATH": str(Path(__file__).parent)},
        stderr_path=tmp_path / "cluster.err",
        label="cluster",
    ) as cluster:
        address = (await cluster.expect("trioq cluster: scheduler on ")).split(",")[0]
        token = await cluster.expect("token: ")
        async with trioq.connect(address, token=token) as client:
            victim = await (await client.submit(pid_of))  # it had joined before the line
            os.kill(victim, signal.SIGKILL)
            again = await (await client.submit(pid_of))  # waits for the restarted worker
        assert again != victim
        assert f"worker-0 (pid {victim}) exited with status -9" in cluster.stderr()
        cluster.send_signal(signal.SIGTERM)
        status, _ = await cluster.finish()
        assert status == 0, cluster.describe()
        await procs.poll_until(lambda: not procs.process_group_members(cluster.pid))


async def test_no_worker_outlives_a_sigkilled_cluster_command(tmp_path: Path) -> None:
    """Its workers see both their scheduler's connection and their launcher's
    lifeline pipe end, and stop on either."""
    command = [sys.executable, "-m", "trioq", "cluster", "--workers", "2", "--port", "0"]
    async with procs.started(
        command, env=procs.base_env(), stderr_path=tmp_path / "cluster.err", label="cluster"
    ) as cluster:
        with trio.fail_after(60):
            await cluster.expect("trioq cluster: scheduler on ")
            workers = set(procs.process_group_members(cluster.pid)) - {cluster.pid}
            assert len(workers) == 2, workers
            os.kill(cluster.pid, signal.SIGKILL)  # the cluster alone, not its group
            await cluster.process.wait()
            await procs.poll_until(lambda: not any(alive(pid) for pid in workers))
