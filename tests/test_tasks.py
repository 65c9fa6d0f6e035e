"""Tasks and futures end to end, in one process: ``open_cluster`` plus ``connect``.

The workers ``open_cluster`` starts run in this process and this trio run,
so a task can meet the test through module globals: functions defined at
module level are pickled by reference, and when a worker runs one it sees
the same ``SHARED`` object as the test (a fresh one for every test).  Async
tasks use its trio events directly; thread tasks (plain functions) report
with ``trio.from_thread`` and wait on ``threading.Event`` gates, always with
a timeout, so a failing test never leaves a thread behind for long.
Lambdas and closures are pickled by value and cannot see ``SHARED``: they
only compute.

Every wait is bounded by ``trio.fail_after``; nothing synchronises by
sleeping.  Where a test must know the scheduler has applied what this
client sent, it makes a round trip (``client.status()``): requests on one
connection are applied in order.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import procs
import pytest
import trio
import trio.testing
from gated_tasks import add, async_add, async_thread_ident, thread_ident

import trioq

WAIT = 10.0  # seconds any one step may take (generous: CI boxes are slow)
THREAD_GATE = 20.0  # a thread task waiting on a gate gives up after this


class Shared:
    """What tasks and the test share: named trio events, thread gates, a log."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.events: defaultdict[str, trio.Event] = defaultdict(trio.Event)
        self.gates: defaultdict[str, threading.Event] = defaultdict(threading.Event)
        self.ran: list[str] = []  # what the tasks did, in order
        self.calls: defaultdict[str, int] = defaultdict(int)

    def event(self, name: str) -> trio.Event:
        return self.events[name]


SHARED = Shared()


@pytest.fixture(autouse=True)
def shared() -> Any:
    """``SHARED`` fresh for every test; thread gates are opened on the way out."""
    SHARED.reset()
    yield SHARED
    for gate in list(SHARED.gates.values()):
        gate.set()


@asynccontextmanager
async def cluster_and_client(
    workers: int = 1, nthreads: int = 1
) -> AsyncIterator[tuple[trioq.Cluster, trioq.Client]]:
    async with (
        trioq.open_cluster(workers=workers, nthreads=nthreads) as cluster,
        trioq.connect(cluster.address, name="test") as client,
    ):
        yield cluster, client


def readers(cluster: trioq.Cluster, future: trioq.Future) -> int:
    """Reads of ``future`` parked in the scheduler (white box; 0 if it is unknown yet)."""
    task = cluster.scheduler.state.tasks._tasks.get(future.key)
    return 0 if task is None else len(task.readers)


async def wait_for(condition: Callable[[], bool]) -> None:
    """Poll a condition nothing notifies us of, such as the scheduler's state (bound it)."""
    await procs.poll_until(condition)


# -- task functions (module level: pickled by reference, they see SHARED) ------------------


async def gated(name: str, value: Any = None) -> Any:
    """Log ``name``, say it started, wait for its "go", return ``value``."""
    SHARED.ran.append(name)
    SHARED.event(f"{name}:started").set()
    await SHARED.event(f"{name}:go").wait()
    return value


def log(name: str) -> str:
    """A thread task that logs its name."""
    SHARED.ran.append(name)
    return name


def gated_thread(name: str, value: Any = None) -> Any:
    """``gated`` in a worker thread: started and finished go to the log."""
    SHARED.ran.append(f"{name}:started")
    trio.from_thread.run_sync(SHARED.event(f"{name}:started").set)
    if not SHARED.gates[name].wait(THREAD_GATE):
        raise TimeoutError(f"gate {name} never opened")
    SHARED.ran.append(f"{name}:finished")
    return value


async def watch_cancellation(name: str) -> str:
    """Run until cancelled; log that it saw the cancellation."""
    SHARED.event(f"{name}:started").set()
    try:
        await trio.sleep_forever()
    except trio.Cancelled:
        SHARED.ran.append(f"{name}:cancelled")
        SHARED.event(f"{name}:cancelled").set()
        raise
    return "never"


class TaskFailure(Exception):
    """A picklable exception raised by a task."""


def raise_failure(text: str) -> None:
    raise TaskFailure(text)


async def async_raise_failure(text: str) -> None:
    await trio.lowlevel.checkpoint()
    raise TaskFailure(text)


class UnpicklableFailure(Exception):
    """Holds a lock, so it cannot be pickled to go back to the client."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.lock = threading.Lock()


def raise_unpicklable(text: str) -> None:
    raise UnpicklableFailure(text)


class TwoArgumentFailure(Exception):
    """Pickles, but cannot be unpickled: ``__init__`` wants two arguments."""

    def __init__(self, text: str, code: int) -> None:
        super().__init__(text)
        self.code = code


def raise_two_argument_failure(text: str) -> None:
    raise TwoArgumentFailure(text, 7)


def return_a_lock() -> Any:
    return threading.Lock()


def fail_until(name: str, failures: int) -> str:
    """Raise the first ``failures`` times it is called for ``name``, then succeed."""
    SHARED.calls[name] += 1
    if SHARED.calls[name] <= failures:
        raise TaskFailure(f"{name} attempt {SHARED.calls[name]}")
    return f"{name} ok after {SHARED.calls[name]}"


def make_multiplier(factor: int) -> Callable[[int], int]:
    def multiply(x: int) -> int:
        return x * factor

    return multiply


async def start_blocker(client: trioq.Client, name: str = "blocker") -> trioq.Future:
    """Submit a gated task and wait until it runs (on a 1-slot worker: it is busy)."""
    future = await client.submit(gated, name, name)
    with trio.fail_after(WAIT):
        await SHARED.event(f"{name}:started").wait()
    return future


# -- results ----------------------------------------------------------------------------------


async def test_sync_and_async_functions_return_their_results() -> None:
    async with cluster_and_client() as (_, client):
        with trio.fail_after(WAIT):
            sync = await client.submit(add, 2, b=3)
            async_ = await client.submit(async_add, 10, b=5)
            assert await sync == 5
            assert await async_.result() == 15


async def test_plain_functions_run_in_worker_threads_and_async_ones_in_the_trio_thread() -> None:
    async with cluster_and_client() as (_, client):
        with trio.fail_after(WAIT):
            in_thread = await (await client.submit(thread_ident))
            in_trio = await (await client.submit(async_thread_ident))
    assert in_trio == threading.get_ident()  # the workers share this trio run
    assert in_thread != threading.get_ident()


async def test_lambdas_closures_and_builtins_run_on_workers() -> None:
    offset = 100
    async with cluster_and_client() as (_, client):
        with trio.fail_after(WAIT):
            assert await (await client.submit(lambda x: x + offset, 1)) == 101
            assert await (await client.submit(make_multiplier(7), 6)) == 42
            assert await (await client.submit(sorted, [3, 1, 2], reverse=True)) == [3, 2, 1]


async def test_submit_refuses_a_non_callable() -> None:
    async with cluster_and_client(workers=0) as (_, client):
        with pytest.raises(TypeError, match="fn must be callable, got int"):
            await client.submit(42)  # type: ignore[arg-type]


async def test_map_and_gather_give_results_in_submission_order_whatever_order_they_end() -> None:
    names = ["m0", "m1", "m2", "m3"]
    async with cluster_and_client(workers=1, nthreads=4) as (_, client):
        with trio.fail_after(WAIT):
            futures = await client.map(gated, names, [n.upper() for n in names])
            assert len({f.key for f in futures}) == 4
            for name in names:
                await SHARED.event(f"{name}:started").wait()
            for name, future in reversed(list(zip(names, futures, strict=True))):
                SHARED.event(f"{name}:go").set()  # the last one ends first
                await future
            assert await client.gather(futures) == ["M0", "M1", "M2", "M3"]
            powers = await client.map(pow, [2, 3, 4], [2, 2, 2])
            assert await client.gather(powers) == [4, 9, 16]


async def test_map_passes_options_to_every_task() -> None:
    async with cluster_and_client() as (_, client):
        with trio.fail_after(WAIT):
            futures = await client.map(add, [1, 2], [10, 20], retries=1, priority=3)
            assert await client.gather(futures) == [11, 22]


async def test_gather_raises_the_first_error_in_order() -> None:
    async with cluster_and_client() as (_, client):
        with trio.fail_after(WAIT):
            ok = await client.submit(add, 1)
            bad = await client.submit(raise_failure, "first")
            worse = await client.submit(raise_failure, "second")
            with pytest.raises(TaskFailure) as caught:
                await client.gather([ok, bad, worse])
            assert str(caught.value) == "first"


async def test_a_cancelled_gather_withdraws_its_reads_and_the_tasks_go_on() -> None:
    names = ["g0", "g1"]
    async with cluster_and_client(workers=1, nthreads=2) as (cluster, client):
        with trio.fail_after(WAIT):
            futures = await client.map(gated, names, names)
            with trio.CancelScope() as scope:
                async with trio.open_nursery() as nursery:

                    async def cancel_once_parked() -> None:
                        await wait_for(lambda: all(readers(cluster, f) for f in futures))
                        scope.cancel()

                    nursery.start_soon(cancel_once_parked)
                    await client.gather(futures)
            assert scope.cancelled_caught
            await wait_for(lambda: not any(readers(cluster, f) for f in futures))
            for name in names:
                SHARED.event(f"{name}:go").set()
            assert await client.gather(futures) == names


async def test_gather_of_nothing_is_an_empty_list() -> None:
    async with cluster_and_client(workers=0) as (_, client):
        assert await client.gather([]) == []


async def test_as_completed_yields_every_future_once_in_the_order_they_end() -> None:
    names = ["c0", "c1", "c2"]
    order = ["c1", "c2", "c0"]
    async with cluster_and_client(workers=1, nthreads=3) as (_, client):
        with trio.fail_after(WAIT):
            futures = [await client.submit(gated, name, name) for name in names]
            for name in names:
                await SHARED.event(f"{name}:started").wait()
            send, receive = trio.open_memory_channel[trioq.Future](0)

            async def follow() -> None:
                async with send:
                    async for future in client.as_completed(futures):
                        await send.send(future)

            yielded: list[trioq.Future] = []
            async with trio.open_nursery() as nursery:
                nursery.start_soon(follow)
                for name in order:
                    SHARED.event(f"{name}:go").set()
                    yielded.append(await receive.receive())
                async for extra in receive:  # the iterator must end, having yielded no more
                    yielded.append(extra)
    assert [f.key for f in yielded] == [futures[names.index(n)].key for n in order]
    assert all(f.done() and f.status == "finished" for f in yielded)


async def test_as_completed_yields_futures_that_already_ended_without_waiting() -> None:
    async with cluster_and_client() as (_, client):
        with trio.fail_after(WAIT):
            futures = await client.map(add, [1, 2, 3])
            await client.gather(futures)
            seen = [f async for f in client.as_completed(futures)]
    assert sorted(f.key for f in seen) == sorted(f.key for f in futures)
    assert len(seen) == 3


# -- errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize("fn", [raise_failure, async_raise_failure], ids=["thread", "async"])
async def test_a_remote_exception_is_reraised_with_its_type_and_the_remote_traceback(
    fn: Callable[[str], Any],
) -> None:
    async with cluster_and_client() as (_, client):
        with trio.fail_after(WAIT):
            future = await client.submit(fn, "it broke")
            with pytest.raises(TaskFailure) as caught:
                await future
    assert str(caught.value) == "it broke"
    (note,) = caught.value.__notes__
    assert note.startswith("remote traceback:\n")
    assert fn.__name__ in note and "TaskFailure: it broke" in note
    assert future.status == "error" and future.done()


async def test_an_unpicklable_exception_raises_remote_task_error_with_its_type_and_text() -> None:
    async with cluster_and_client() as (_, client):
        with trio.fail_after(WAIT):
            future = await client.submit(raise_unpicklable, "locked")
            with pytest.raises(trioq.RemoteTaskError, match="UnpicklableFailure: locked") as caught:
                await future
    assert "raise_unpicklable" in caught.value.__notes__[0]
    assert future.status == "error"


async def test_an_exception_the_client_cannot_unpickle_raises_remote_task_error() -> None:
    async with cluster_and_client() as (_, client):
        with trio.fail_after(WAIT):
            future = await client.submit(raise_two_argument_failure, "two")
            with pytest.raises(trioq.RemoteTaskError, match="TwoArgumentFailure: two"):
                await future


async def test_an_unpicklable_result_fails_the_task_with_a_serialization_error() -> None:
    async with cluster_and_client() as (_, client):
        with trio.fail_after(WAIT):
            future = await client.submit(return_a_lock)
            with pytest.raises(trioq.SerializationError, match="lock") as caught:
                await future
            assert "remote traceback" in caught.value.__notes__[0]
            assert future.status == "error"
            assert await (await client.submit(add, 1, 1)) == 2  # the worker goes on


async def test_retries_run_a_failing_task_again_until_it_succeeds() -> None:
    async with cluster_and_client() as (_, client):
        with trio.fail_after(WAIT):
            future = await client.submit(fail_until, "flaky", 2, retries=2)
            assert await future == "flaky ok after 3"
    assert SHARED.calls["flaky"] == 3


async def test_a_task_that_fails_more_often_than_its_retries_raises_its_last_error() -> None:
    async with cluster_and_client() as (_, client):
        with trio.fail_after(WAIT):
            future = await client.submit(fail_until, "stubborn", 5, retries=1)
            with pytest.raises(TaskFailure) as caught:
                await future
            assert str(caught.value) == "stubborn attempt 2"
            plain = await client.submit(fail_until, "once", 1)  # retries=0: never again
            with pytest.raises(TaskFailure) as caught:
                await plain
            assert str(caught.value) == "once attempt 1"
    assert SHARED.calls["stubborn"] == 2
    assert SHARED.calls["once"] == 1


# -- cancellation -----------------------------------------------------------------------------


async def test_cancel_of_a_pending_task_removes_it_and_it_never_runs() -> None:
    async with cluster_and_client(workers=1, nthreads=1) as (_, client):
        with trio.fail_after(WAIT):
            blocker = await start_blocker(client)
            victim = await client.submit(log, "victim")
            assert not victim.done()
            await victim.cancel()
            with pytest.raises(trioq.TaskCancelledError, match=r"'.*' was cancelled"):
                await victim
            assert victim.status == "cancelled" and victim.done()
            SHARED.event("blocker:go").set()
            await blocker
            assert await (await client.submit(log, "after")) == "after"
    assert SHARED.ran == ["blocker", "after"]


async def test_cancel_of_a_running_async_task_cancels_it_on_the_worker() -> None:
    async with cluster_and_client(workers=1, nthreads=1) as (_, client):
        with trio.fail_after(WAIT):
            future = await client.submit(watch_cancellation, "watched")
            await SHARED.event("watched:started").wait()
            await future.cancel()
            await SHARED.event("watched:cancelled").wait()  # the task itself saw it
            with pytest.raises(trioq.TaskCancelledError):
                await future
            assert future.status == "cancelled"
            # Its slot is free again: the single-slot worker takes the next task.
            assert await (await client.submit(add, 1, 2)) == 3
    assert SHARED.ran == ["watched:cancelled"]


async def test_cancel_of_a_running_thread_task_discards_its_result() -> None:
    async with cluster_and_client(workers=1, nthreads=1) as (_, client):
        with trio.fail_after(WAIT):
            future = await client.submit(gated_thread, "sync", "unwanted")
            await SHARED.event("sync:started").wait()
            await future.cancel()
            with pytest.raises(trioq.TaskCancelledError):
                await future  # at once: the thread is still running
            assert SHARED.ran == ["sync:started"]
            after = await client.submit(log, "next")
            SHARED.gates["sync"].set()  # the thread runs to its end ...
            assert await after == "next"
            with pytest.raises(trioq.TaskCancelledError):
                await future  # ... and its result is dropped
            assert future.status == "cancelled"
    # One thread at a time: the next task waited for the abandoned thread.
    assert SHARED.ran == ["sync:started", "sync:finished", "next"]


async def test_a_cancelled_wait_for_a_future_leaves_the_task_running() -> None:
    async with cluster_and_client() as (cluster, client):
        with trio.fail_after(WAIT):
            future = await client.submit(gated, "slow", "still here")
            await SHARED.event("slow:started").wait()
            with trio.CancelScope() as scope:
                async with trio.open_nursery() as nursery:

                    async def wait_then_cancel() -> None:
                        # The read is parked in the scheduler before it is cancelled.
                        await wait_for(lambda: readers(cluster, future) > 0)
                        scope.cancel()

                    nursery.start_soon(wait_then_cancel)
                    await future
            assert scope.cancelled_caught
            await wait_for(lambda: readers(cluster, future) == 0)  # withdrawn
            assert future.status == "pending" and not future.done()
            SHARED.event("slow:go").set()
            assert await future == "still here"
            assert future.status == "finished"


async def test_cancel_of_a_finished_task_keeps_its_result() -> None:
    async with cluster_and_client() as (_, client):
        with trio.fail_after(WAIT):
            future = await client.submit(add, 4, 4)
            assert await future == 8
            await future.cancel()
            assert await future == 8
            assert future.status == "finished"


# -- dispatch ---------------------------------------------------------------------------------


async def test_a_single_slot_worker_runs_queued_tasks_by_priority_then_submission_order() -> None:
    tasks = [("p0-a", 0), ("p5-a", 5), ("pm3", -3), ("p5-b", 5), ("p10", 10), ("p0-b", 0)]
    async with cluster_and_client(workers=1, nthreads=1) as (_, client):
        with trio.fail_after(WAIT):
            blocker = await start_blocker(client)
            futures = [await client.submit(log, name, priority=p) for name, p in tasks]
            await client.status()  # a round trip: every submit is queued behind the blocker
            SHARED.event("blocker:go").set()
            await blocker
            await client.gather(futures)
    assert SHARED.ran == ["blocker", "p10", "p5-a", "p5-b", "p0-a", "p0-b", "pm3"]


async def test_series_tasks_run_only_on_a_worker_qualified_for_the_series() -> None:
    async with cluster_and_client(workers=1, nthreads=2) as (cluster, client):
        with trio.fail_after(WAIT):
            gpu = [await client.submit(gated, f"gpu-{i}", i, series="gpu") for i in range(2)]
            plain = await client.submit(log, "plain")
            assert await plain == "plain"  # the plain worker is idle ...
            report = await client.status()
            assert report["tasks"].get("pending") == 2  # ... and still never takes them
            assert not any(f.done() for f in gpu) and SHARED.ran == ["plain"]
            async with trio.open_nursery() as nursery:
                worker = trioq.Worker(cluster.address, name="gpu-box", nthreads=2, series=["gpu"])
                await nursery.start(worker.run)
                for i in range(2):
                    await SHARED.event(f"gpu-{i}:started").wait()
                running = {w["name"]: w["running"] for w in (await client.status())["workers"]}
                assert running == {"worker-0": 0, "gpu-box": 2}
                assert worker.running == 2
                for i in range(2):
                    SHARED.event(f"gpu-{i}:go").set()
                assert await client.gather(gpu) == [0, 1]
                nursery.cancel_scope.cancel()


async def test_a_series_worker_also_runs_tasks_without_a_series() -> None:
    async with cluster_and_client(workers=0) as (cluster, client):
        with trio.fail_after(WAIT):
            async with trio.open_nursery() as nursery:
                worker = trioq.Worker(cluster.address, name="gpu-box", series=["gpu"])
                await nursery.start(worker.run)
                assert await (await client.submit(add, 1, 1)) == 2
                assert await (await client.submit(add, 2, 2, series="gpu")) == 4
                nursery.cancel_scope.cancel()


async def test_a_worker_joining_a_push_scheduler_with_queued_tasks_runs_them() -> None:
    scheduler = trioq.Scheduler("127.0.0.1", 0, dispatch="push")
    async with trio.open_nursery() as nursery:
        address = await nursery.start(scheduler.serve)
        async with trioq.connect(address, token=scheduler.token) as client:
            future = await client.submit(add, 20, 22)
            await client.status()  # queued, with no worker yet
            worker = trioq.Worker(address, token=scheduler.token, name="late")
            with trio.move_on_after(WAIT) as waited:
                async with trio.open_nursery() as workers:
                    workers.start_soon(worker.run)
                    assert await future == 42
                    workers.cancel_scope.cancel()
            assert not waited.cancelled_caught
        nursery.cancel_scope.cancel()


def test_a_worker_refuses_one_string_for_its_series() -> None:
    with pytest.raises(TypeError, match="not one string"):
        trioq.Worker("tcp://127.0.0.1:1", series="gpu")


def test_a_worker_needs_at_least_one_thread() -> None:
    with pytest.raises(ValueError, match="nthreads must be a positive int, got 0"):
        trioq.Worker("tcp://127.0.0.1:1", nthreads=0)


# -- keys, status, release --------------------------------------------------------------------


async def test_a_key_this_client_uses_already_is_refused_by_submit() -> None:
    async with cluster_and_client() as (_, client):
        with trio.fail_after(WAIT):
            first = await client.submit(add, 1, key="same")
            with pytest.raises(ValueError, match="this client has a task with key 'same'"):
                await client.submit(add, 2, key="same")
            assert first.key == "same"
            assert await first == 1


async def test_a_key_another_client_uses_is_refused_when_the_future_is_awaited() -> None:
    async with cluster_and_client() as (cluster, client):
        with trio.fail_after(WAIT):
            theirs = await client.submit(add, 1, key="shared-key")
            assert await theirs == 1
            async with trioq.connect(cluster.address, name="second") as other:
                mine = await other.submit(add, 2, key="shared-key")  # no error yet
                with pytest.raises(ValueError, match="a task with key 'shared-key' exists"):
                    await mine
                assert mine.status == "error"
            assert await theirs == 1  # the first task is untouched


async def test_a_refused_key_is_raised_at_once_while_the_other_clients_task_runs() -> None:
    async with cluster_and_client() as (cluster, client):
        theirs = await start_blocker(client)
        try:
            async with trioq.connect(cluster.address, name="second") as other:
                mine = await other.submit(add, 2, key=theirs.key)
                with trio.move_on_after(1) as waited:
                    with pytest.raises(ValueError, match="exists already"):
                        await mine
                assert not waited.cancelled_caught, "the refusal waited for the other task"
        finally:
            SHARED.event("blocker:go").set()


async def test_gather_raises_a_refused_key_at_once_while_the_other_clients_task_runs() -> None:
    async with cluster_and_client() as (cluster, client):
        theirs = await start_blocker(client)
        try:
            async with trioq.connect(cluster.address, name="second") as other:
                fine = await other.submit(add, 1)
                mine = await other.submit(add, 2, key=theirs.key)
                with trio.move_on_after(1) as waited:
                    with pytest.raises(ValueError, match="exists already"):
                        await other.gather([fine, mine])
                assert not waited.cancelled_caught, "gather waited for the other task"
        finally:
            SHARED.event("blocker:go").set()


async def test_as_completed_yields_a_future_whose_submit_was_refused() -> None:
    async with cluster_and_client() as (cluster, client):
        theirs = await start_blocker(client)
        try:
            async with trioq.connect(cluster.address, name="second") as other:
                mine = await other.submit(add, 2, key=theirs.key)
                seen = []
                with trio.move_on_after(1):
                    seen = [f async for f in other.as_completed([mine])]
                assert mine.status == "error"
                assert seen == [mine], "as_completed never yielded the refused future"
        finally:
            SHARED.event("blocker:go").set()


async def test_bad_task_options_are_refused_by_submit_before_anything_is_sent() -> None:
    async with cluster_and_client() as (cluster, client):
        with trio.fail_after(WAIT):
            with pytest.raises(ValueError, match="retries must be >= 0, got -1"):
                await client.submit(add, 1, retries=-1)
            with pytest.raises(TypeError, match="priority must be an int, got str"):
                await client.submit(add, 1, priority="high")  # type: ignore[arg-type]
            with pytest.raises(ValueError, match="priority must fit in 64 bits"):
                await client.submit(add, 1, priority=2**70)
            with pytest.raises(TypeError, match="series must be a str or None, got int"):
                await client.submit(add, 1, series=3)  # type: ignore[arg-type]
            with pytest.raises(trioq.SerializationError, match="cannot pickle the function"):
                await client.submit(threading.Lock().acquire)
            assert await (await client.submit(add, 1, 2)) == 3  # the connection is fine
            assert cluster.scheduler.state.tasks.status()["tasks"] == {"finished": 1}


async def test_cancel_of_a_refused_future_raises_its_refusal_and_spares_the_other_task() -> None:
    async with (
        cluster_and_client(workers=0) as (cluster, client),
        trioq.connect(cluster.address, name="other") as other,
    ):
        with trio.fail_after(WAIT):
            theirs = await other.submit(add, 1, key="shared")
            await other.status()  # applied first
            mine = await client.submit(add, 2, key="shared")
            with pytest.raises(ValueError, match="exists already"):
                await mine
            with pytest.raises(ValueError, match="exists already"):
                await mine.cancel()
            await client.status()
            assert cluster.scheduler.state.tasks._tasks["shared"].status == "pending"
            assert not theirs.done()


async def test_gather_refuses_what_is_not_a_future_and_futures_of_two_clients() -> None:
    async with (
        cluster_and_client() as (cluster, client),
        trioq.connect(cluster.address, name="other") as other,
    ):
        with trio.fail_after(WAIT):
            with pytest.raises(TypeError, match="gather expects futures, got int"):
                await client.gather([1])  # type: ignore[list-item]
            mine, theirs = await client.submit(add, 1), await other.submit(add, 2)
            with pytest.raises(ValueError, match="futures of one client"):
                await client.gather([mine, theirs])


@asynccontextmanager
async def stoppable_scheduler() -> AsyncIterator[tuple[str, str, trio.CancelScope]]:
    """A scheduler (no workers) and the cancel scope that stops it: (address, token, scope)."""
    scheduler = trioq.Scheduler("127.0.0.1", 0)
    async with trio.open_nursery() as nursery:
        stop = trio.CancelScope()

        async def serve(task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
            with stop:
                await scheduler.serve(task_status=task_status)

        address = await nursery.start(serve)
        yield address, scheduler.token, stop
        nursery.cancel_scope.cancel()


async def test_awaiting_a_future_raises_broken_resource_error_when_the_scheduler_goes() -> None:
    async with (
        stoppable_scheduler() as (address, token, stop),
        trioq.connect(address, token=token) as client,
    ):
        future = await client.submit(add, 1)  # no worker: it stays pending
        await client.status()
        with trio.fail_after(WAIT):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(stop_when_all_wait, stop)
                with pytest.raises(trio.BrokenResourceError):
                    await future


async def stop_when_all_wait(stop: trio.CancelScope) -> None:
    await trio.testing.wait_all_tasks_blocked()
    stop.cancel()


async def test_as_completed_raises_broken_resource_error_when_the_scheduler_goes() -> None:
    async with (
        stoppable_scheduler() as (address, token, stop),
        trioq.connect(address, token=token) as client,
    ):
        future = await client.submit(add, 1)
        await client.status()
        with trio.move_on_after(2) as waited:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(stop_when_all_wait, stop)
                with pytest.raises(trio.BrokenResourceError):
                    async for _ in client.as_completed([future]):
                        pass
        assert not waited.cancelled_caught, "as_completed was still waiting"


async def test_future_status_and_done_follow_the_task() -> None:
    async with cluster_and_client(workers=1, nthreads=1) as (_, client):
        with trio.fail_after(WAIT):
            running = await start_blocker(client)
            queued = await client.submit(add, 1, key="queued-one")
            failing = await client.submit(raise_failure, "x")
            assert (running.status, queued.status, failing.status) == ("pending",) * 3
            assert not running.done() and not queued.done()
            assert repr(queued) == "<trioq.Future 'queued-one' pending>"
            SHARED.event("blocker:go").set()
            # Status follows the scheduler's notices, without awaiting the futures.
            await wait_for(failing.done)
            assert (running.status, queued.status, failing.status) == (
                "finished",
                "finished",
                "error",
            )
            assert repr(queued) == "<trioq.Future 'queued-one' finished>"


async def test_a_released_future_can_no_longer_be_awaited_and_the_scheduler_forgets_it() -> None:
    async with cluster_and_client() as (cluster, client):
        with trio.fail_after(WAIT):
            future = await client.submit(add, 1, 2)
            assert await future == 3
            assert future.key in cluster.scheduler.state.tasks._tasks
            await future.release()
            await client.status()  # the release (one-way) has been applied
            assert future.key not in cluster.scheduler.state.tasks._tasks
            with pytest.raises(LookupError, match="never submitted, or released"):
                await future


async def test_a_closing_client_lets_the_scheduler_forget_its_finished_tasks() -> None:
    async with trioq.open_cluster(workers=1) as cluster:
        async with trioq.connect(cluster.address) as client:
            with trio.fail_after(WAIT):
                futures = await client.map(add, range(5))
                assert await client.gather(futures) == [0, 1, 2, 3, 4]
                assert (await client.status())["tasks"] == {"finished": 5}
        async with trioq.connect(cluster.address) as watcher:
            with trio.fail_after(WAIT):

                async def forgotten() -> bool:
                    return not (await watcher.status())["tasks"]

                await procs.poll_until(forgotten)


async def test_a_task_may_submit_tasks_of_its_own_through_its_own_client() -> None:
    async with cluster_and_client(workers=1, nthreads=2) as (cluster, client):
        with trio.fail_after(WAIT):
            future = await client.submit(submit_inner, cluster.address)
            assert await future == 42


async def submit_inner(address: str) -> int:
    async with trioq.connect(address, name="inner") as inner:
        return int(await (await inner.submit(add, 40, 2)))


async def test_a_task_reaches_the_cluster_through_its_workers_connection() -> None:
    async with cluster_and_client(workers=1, nthreads=2) as (_, client):
        with trio.fail_after(WAIT):
            assert await (await client.submit(put_through_worker_client, "from-async")) is None
            await client.submit(put_from_thread_through_worker_client, "from-thread")
            queue = client.queue("worker-client")
            assert sorted([await queue.get(), await queue.get()]) == ["from-async", "from-thread"]


def test_worker_client_outside_a_task_is_a_runtime_error() -> None:
    with pytest.raises(RuntimeError, match="inside a task"):
        trioq.worker_client()


async def put_through_worker_client(item: str) -> None:
    await trioq.worker_client().queue("worker-client").put(item)


def put_from_thread_through_worker_client(item: str) -> None:
    client = trioq.worker_client()
    queue = trio.from_thread.run_sync(client.queue, "worker-client")  # handles talk to trio
    trio.from_thread.run(queue.put, item)


async def test_scatter_of_a_value_or_a_list_gives_data_futures_tasks_receive_as_values() -> None:
    async with cluster_and_client(workers=1) as (_, client):
        with trio.fail_after(WAIT):
            one = await client.scatter({"x": 40})
            many = await client.scatter([1, 2, 3])
            assert isinstance(one, trioq.Future) and len(many) == 3
            assert one.done() and await one == {"x": 40}
            assert await (await client.submit(add, many[0], many[2])) == 4
            assert await client.gather(many) == [1, 2, 3]


async def test_a_streaming_map_refuses_more_than_one_channel() -> None:
    async with cluster_and_client(workers=1) as (_, client):
        first, second = trio.open_memory_channel[int](1)[1], trio.open_memory_channel[int](1)[1]
        with pytest.raises(TypeError, match="exactly one receive channel"):
            await client.map(add, first, second)


BARRIER: dict[str, threading.Barrier] = {}


def meet(name: str) -> str:
    """A thread task that returns only once another thread task met it."""
    BARRIER[name].wait(timeout=THREAD_GATE)
    return name


async def test_a_worker_runs_as_many_thread_tasks_at_once_as_it_has_threads() -> None:
    BARRIER["pair"] = threading.Barrier(2)
    async with cluster_and_client(workers=1, nthreads=2) as (_, client):
        with trio.fail_after(WAIT):
            first = await client.submit(meet, "pair")
            second = await client.submit(meet, "pair")
            assert await client.gather([first, second]) == ["pair", "pair"]
