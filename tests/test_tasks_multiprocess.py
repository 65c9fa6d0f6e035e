"""Tasks across real processes: a scheduler process and ``python -m trioq worker`` processes.

The test process is the client.  Task functions are made by factories
(nested functions), so cloudpickle sends them by value: the worker
processes cannot import this module.  Workers are started, owned and
cleaned up through ``tests/procs.py`` (each in its own session, SIGTERM
then SIGKILL on the way out); a worker counts as up once the scheduler's
status lists it.  Only 127.0.0.1 and port 0; every wait is bounded.

What is checked: workers SIGKILLed at random moments while hundreds of
tasks run lose none of them (every future gives back its own input, each
exactly once), and a task that kills whichever worker runs it is given up
with ``WorkerLostError`` after three workers died, not a fourth.
"""

from __future__ import annotations

import random
import secrets
import signal
import sys
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import procs
import pytest
import trio

import trioq

READY_TIMEOUT = 30.0  # worker processes start, import and connect, on a loaded CI box
RUN_TIMEOUT = 40.0  # hundreds of short tasks with workers dying under them
STEP_TIMEOUT = 10.0  # one task, or one process to be reaped
TEST_TIMEOUT = 90.0  # any one test, whatever it waits for


async def _fail_when_too_slow() -> None:
    await trio.sleep(TEST_TIMEOUT)
    raise AssertionError(f"the test was still running after {TEST_TIMEOUT}s")


@pytest.fixture
async def deadline() -> AsyncIterator[None]:
    """The net under the explicit bounds: cancel the test past TEST_TIMEOUT."""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_fail_when_too_slow)
        yield
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def scheduler_process(directory: Path, dispatch: str) -> AsyncIterator[procs.SchedulerProc]:
    """``procs.scheduler_process`` with a ``--dispatch`` policy."""
    await trio.Path(directory).mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(24)
    token_file = directory / "scheduler.token"
    await trio.Path(token_file).write_text(token + "\n")
    args = [sys.executable, "-m", "trioq", "scheduler", "--host", "127.0.0.1", "--port", "0"]
    args += ["--token-file", str(token_file), "--dispatch", dispatch]
    async with procs.started(
        args,
        env=procs.base_env(),
        stderr_path=directory / "scheduler.stderr",
        label="scheduler",
        cwd=directory,
    ) as proc:
        line: str | None = None
        with trio.move_on_after(procs.START_TIMEOUT):
            line = await proc.readline()
        match = procs.LISTENING.match(line or "")
        if match is None:
            raise AssertionError(f"no address from the scheduler ({line!r}): {proc.describe()}")
        yield procs.SchedulerProc(match.group(1), token, proc, directory)


@pytest.fixture
async def scheduler(
    request: pytest.FixtureRequest, tmp_path: Path, deadline: None
) -> AsyncIterator[procs.SchedulerProc]:
    """A scheduler process (pull dispatch unless parametrized) on 127.0.0.1:0."""
    dispatch = getattr(request, "param", "pull")
    async with scheduler_process(tmp_path / "cluster", dispatch) as running:
        yield running
    print(running.proc.describe())  # shown by pytest only when the test failed


@asynccontextmanager
async def worker_process(
    scheduler: procs.SchedulerProc, name: str, *, nthreads: int = 1, series: tuple[str, ...] = ()
) -> AsyncIterator[procs.Proc]:
    """``python -m trioq worker`` for ``scheduler``, the token in its environment."""
    args = [sys.executable, "-m", "trioq", "worker", scheduler.address]
    args += ["--nthreads", str(nthreads), "--name", name]
    for each in series:
        args += ["--series", each]
    async with procs.started(
        args,
        env=procs.client_env(scheduler.token),
        stderr_path=scheduler.directory / f"{name}.stderr",
        label=name,
    ) as proc:
        yield proc


async def workers_up(client: trioq.Client) -> dict[str, int]:
    """Worker name -> tasks running, as the scheduler sees it now."""
    return {w["name"]: w["running"] for w in (await client.status())["workers"]}


async def wait_for_workers(client: trioq.Client, names: set[str]) -> None:
    async def up() -> bool:
        return names <= set(await workers_up(client))

    await procs.poll_until(up)


class Pool:
    """Worker processes that can be killed and replaced while the test runs."""

    def __init__(self, scheduler: procs.SchedulerProc, stack: AsyncExitStack) -> None:
        self._scheduler = scheduler
        self._stack = stack
        self._count = 0
        self.live: dict[str, procs.Proc] = {}
        self.killed: list[procs.Proc] = []

    async def start(self, **options: Any) -> str:
        name = f"worker-{self._count}"
        self._count += 1
        proc = await self._stack.enter_async_context(
            worker_process(self._scheduler, name, **options)
        )
        self.live[name] = proc
        return name

    def kill(self, name: str) -> None:
        proc = self.live.pop(name)
        proc.send_signal(signal.SIGKILL)
        self.killed.append(proc)

    async def fail_if_a_worker_exits(self) -> None:
        """Raise as soon as a worker the test did not kill has exited (it crashed)."""

        def crashed() -> list[procs.Proc]:
            return [p for p in self.live.values() if p.process.poll() is not None]

        await procs.poll_until(lambda: bool(crashed()))
        raise AssertionError("a worker exited by itself:\n" + crashed()[0].describe())

    def describe(self) -> str:
        return "\n".join(p.describe() for p in [*self.live.values(), *self.killed])


@asynccontextmanager
async def coordinated_pool(
    scheduler: procs.SchedulerProc, note: str = ""
) -> AsyncIterator[tuple[Pool, Any]]:
    """A pool of worker processes and a "coordinator" client; on failure, says who did what."""
    async with AsyncExitStack() as stack:
        pool = Pool(scheduler, stack)
        client = await stack.enter_async_context(
            trioq.connect(scheduler.address, token=scheduler.token, name="coordinator")
        )
        try:
            yield pool, client
        except BaseException:
            print(f"{note}\n{pool.describe()}".strip())
            raise


# -- task functions, sent by value ------------------------------------------------------------


def make_echo() -> Callable[[int, float], int]:
    def echo(value: int, seconds: float) -> int:
        import time

        time.sleep(seconds)
        return value

    return echo


def make_async_echo() -> Callable[[int, float], Any]:
    async def async_echo(value: int, seconds: float) -> int:
        import trio

        await trio.sleep(seconds)
        return value

    return async_echo


def make_suicide() -> Callable[[], None]:
    def kill_my_worker() -> None:
        import os
        import signal

        os.kill(os.getpid(), signal.SIGKILL)

    return kill_my_worker


def make_getpid() -> Callable[[], int]:
    def worker_pid() -> int:
        import os

        return os.getpid()

    return worker_pid


# -- tests --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "scheduler",
    [
        "pull",
        "push",
    ],
    indirect=True,
)
async def test_workers_killed_at_random_moments_lose_no_task_and_repeat_none(
    scheduler: procs.SchedulerProc,
) -> None:
    count = 300
    rng = random.Random()
    seed = rng.randrange(2**32)
    rng.seed(seed)
    echo, async_echo = make_echo(), make_async_echo()
    async with coordinated_pool(scheduler, f"seed {seed}") as (pool, client):
        for _ in range(3):
            await pool.start(nthreads=2)
        with trio.fail_after(READY_TIMEOUT):
            await wait_for_workers(client, set(pool.live))
        futures = [
            await client.submit(echo if i % 2 else async_echo, i, rng.uniform(0, 0.02))
            for i in range(count)
        ]
        kills = 0
        with trio.fail_after(RUN_TIMEOUT):
            seen: Counter[str] = Counter()
            finished = [trio.Event()]  # set when a task finishes
            async with trio.open_nursery() as nursery:

                async def killer() -> None:
                    nonlocal kills
                    # Random moments, measured in finished tasks so that they fall
                    # while tasks still run however fast the cluster is.
                    # Two kills at most: a task dealt to three workers that all died
                    # fails on purpose (WorkerLostError, the next test), and push
                    # dispatch deals tasks ahead, so a third kill could make one.
                    for mark in sorted(rng.sample(range(count // 10, count * 7 // 10), 4)):
                        if kills == 2:
                            break
                        while sum(seen.values()) < mark:
                            await finished[0].wait()
                        busy = [n for n, r in (await workers_up(client)).items() if r]
                        busy = [n for n in busy if n in pool.live]
                        if busy and len(pool.live) > 1:
                            pool.kill(rng.choice(busy))
                            kills += 1
                            await pool.start(nthreads=2)  # a replacement joins later

                nursery.start_soon(killer)
                nursery.start_soon(pool.fail_if_a_worker_exits)
                async for future in client.as_completed(futures):
                    seen[future.key] += 1
                    finished[0].set()  # wakes the killer; the next finish sets a new one
                    finished[0] = trio.Event()
                nursery.cancel_scope.cancel()
            results = await client.gather(futures)
    assert results == list(range(count)), f"seed {seed}"
    assert set(seen) == {f.key for f in futures} and set(seen.values()) == {1}
    assert kills >= 2, f"only {kills} workers were killed while the tasks ran (seed {seed})"
    assert all(p.returncode == -signal.SIGKILL for p in pool.killed)


async def test_a_task_that_kills_its_worker_fails_with_worker_lost_after_three_deaths(
    scheduler: procs.SchedulerProc,
) -> None:
    async with coordinated_pool(scheduler) as (pool, client):
        names = {await pool.start() for _ in range(4)}
        procs_by_name = dict(pool.live)
        with trio.fail_after(READY_TIMEOUT):
            await wait_for_workers(client, names)
        deadly = await client.submit(make_suicide())
        with trio.fail_after(RUN_TIMEOUT):
            with pytest.raises(trioq.WorkerLostError, match="3 workers that died"):
                await deadly
        assert deadly.status == "lost"

        def dead() -> list[procs.Proc]:
            return [p for p in procs_by_name.values() if p.process.poll() is not None]

        with trio.fail_after(STEP_TIMEOUT):
            await procs.poll_until(lambda: len(dead()) >= 3)
            (survivor,) = set(await workers_up(client))
        assert len(dead()) == 3
        assert all(p.returncode == -signal.SIGKILL for p in dead())
        assert procs_by_name[survivor].returncode is None
        with trio.fail_after(STEP_TIMEOUT):
            assert await (await client.submit(make_echo(), 7, 0)) == 7  # it still works


async def test_series_tasks_run_only_in_the_worker_process_started_with_that_series(
    scheduler: procs.SchedulerProc,
) -> None:
    async with coordinated_pool(scheduler) as (pool, client):
        plain = await pool.start(nthreads=2)
        gpu = await pool.start(nthreads=2, series=("gpu",))
        with trio.fail_after(READY_TIMEOUT):
            await wait_for_workers(client, {plain, gpu})
        getpid = make_getpid()
        with trio.fail_after(RUN_TIMEOUT):
            gpu_pids = await client.gather(
                [await client.submit(getpid, series="gpu") for _ in range(20)]
            )
            any_pids = await client.gather([await client.submit(getpid) for _ in range(20)])
        assert set(gpu_pids) == {pool.live[gpu].pid}
        assert set(any_pids) <= {pool.live[gpu].pid, pool.live[plain].pid}


def local_only(x: int) -> int:
    """Pickled by reference: a worker process cannot import this test module."""
    return x


async def test_a_function_the_worker_process_cannot_load_fails_the_task_not_the_worker(
    scheduler: procs.SchedulerProc,
) -> None:
    async with coordinated_pool(scheduler) as (pool, client):
        name = await pool.start()
        with trio.fail_after(READY_TIMEOUT):
            await wait_for_workers(client, {name})
        with trio.fail_after(STEP_TIMEOUT):
            future = await client.submit(local_only, 1)
            with pytest.raises(trioq.SerializationError, match="test_tasks_multiprocess") as c:
                await future
            assert "remote traceback" in c.value.__notes__[0]
            assert await (await client.submit(make_echo(), 5, 0)) == 5
        assert pool.live[name].returncode is None
