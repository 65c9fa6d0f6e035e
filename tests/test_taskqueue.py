"""``trioq.TaskQueue`` over thread and remote workers, in this process and this trio run.

What is checked, straight from the TaskQueue spec: dispatch order (niceness,
then submission order, with series interleaving fairly), where series calls
may run, streamed generator results with back pressure, call timeouts and
cancellation, attaching and detaching workers (with and without crash and
reassign), updates, shutdown, failures and logging.

How the tests meet the calls they make: task functions live at module level
and share ``SHARED`` with the test (a fresh one for every test).  A
``ThreadWorker`` runs them in this process; a ``RemoteWorker`` talks to an
``open_cluster(workers=1)`` whose worker runs in this trio run too, and gets
them pickled by reference, so it sees the same ``SHARED``.  Async functions
use its trio events directly; plain functions run in worker threads, report
with ``trio.from_thread`` and wait on ``threading.Event`` gates, always with
a timeout, so a failing test never leaves a thread behind for long.

Every wait is bounded by ``trio.fail_after``; nothing synchronises by
sleeping.  Where a test must know a call is queued it watches ``queue.pending()``
(calls queued or running); where it must know nothing more will happen by
itself it uses ``trio.testing.wait_all_tasks_blocked``, which sees trio
tasks only: a producer in a thread is observed directly instead (the
stream's channel says when it waits for room).
"""

from __future__ import annotations

import functools
import logging
import threading
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import outcome
import procs
import pytest
import trio
import trio.testing
from gated_tasks import add, async_add, async_thread_ident, thread_ident
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import trioq

WAIT = 10.0  # seconds any one step may take (generous: CI boxes are slow)
THREAD_GATE = 20.0  # a thread task waiting on a gate gives up after this
LOGGER = "trioq.taskqueue"
# A streaming producer may be this many items ahead of its consumer: the spec's
# buffer of 16 on each side of one hop (a channel, a credit window, a remote
# queue and its prefetch), plus an item in hand at each end.  Unbounded is 200.
STREAM_AHEAD = 2 * 16 + 2
STREAM_ITEMS = 200
QUIET = 0.05  # seconds all tasks stay blocked before a producer counts as stalled
PROMPT = 2.0  # seconds within which something that waits for nothing must be done


class Shared:
    """What tasks and the test share: named trio events, thread gates, logs, counts."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.events: defaultdict[str, trio.Event] = defaultdict(trio.Event)
        self.gates: defaultdict[str, threading.Event] = defaultdict(threading.Event)
        self.ran: list[str] = []  # what the tasks did, in order
        self.calls: defaultdict[str, int] = defaultdict(int)  # runs per name
        self.produced = 0  # items streaming generators have made
        self.consumed = 0  # items the test has read from a stream
        self.lead = 0  # the most items a watched generator was ever ahead of the reader

    def event(self, name: str) -> trio.Event:
        return self.events[name]

    def open_gates(self) -> None:
        for gate in list(self.gates.values()):
            gate.set()


SHARED = Shared()


@pytest.fixture(autouse=True)
def shared() -> Iterator[Shared]:
    """``SHARED`` fresh for every test; thread gates are opened on the way out."""
    SHARED.reset()
    yield SHARED
    SHARED.open_gates()


@pytest.fixture(autouse=True)
def taskqueue_logger() -> Iterator[logging.Logger]:
    """The TaskQueue's logger with no level of its own, before and after each test."""
    logger = logging.getLogger(LOGGER)
    logger.setLevel(logging.NOTSET)
    yield logger
    logger.setLevel(logging.NOTSET)


@dataclass(frozen=True)
class Kind:
    """A kind of worker: its name and how to make one (``series=`` passes through)."""

    name: str
    new: Callable[..., Any]


@pytest.fixture(params=["thread", "remote"])
async def kind(request: pytest.FixtureRequest) -> AsyncIterator[Kind]:
    """Each worker kind that runs in this process: threads, or a one-worker cluster."""
    if request.param == "thread":
        yield Kind("thread", trioq.ThreadWorker)
        return
    async with trioq.open_cluster(workers=1) as cluster:
        yield Kind("remote", functools.partial(trioq.RemoteWorker, cluster.address))


class Callers:
    """Calls made in the background, one trio task each, by name.

    ``submit`` returns once the new call is queued (every task is blocked and
    ``queue.pending()`` counts it), so calls are queued in a known order (trio does
    not promise the order in which tasks started together first run).  Use
    it while nothing finishes meanwhile, e.g. behind a call blocking the only
    worker.
    """

    def __init__(self, queue: trioq.TaskQueue, nursery: trio.Nursery) -> None:
        self.queue = queue
        self.nursery = nursery
        self.outcomes: dict[str, outcome.Outcome[Any]] = {}
        self.done: defaultdict[str, trio.Event] = defaultdict(trio.Event)
        self.scopes: dict[str, trio.CancelScope] = {}

    def start(self, name: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        scope = self.scopes[name] = trio.CancelScope()

        async def call() -> None:
            with scope:
                try:
                    value = await self.queue.call(fn, *args, **kwargs)
                except Exception as exc:
                    self.outcomes[name] = outcome.Error(exc)
                else:
                    self.outcomes[name] = outcome.Value(value)
            self.done[name].set()

        self.nursery.start_soon(call)

    async def submit(self, name: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        """Start the call and return once the queue counts it."""
        expected = self.queue.pending() + 1
        self.start(name, fn, *args, **kwargs)
        await trio.testing.wait_all_tasks_blocked()
        assert self.queue.pending() == expected, f"the call {name!r} is not counted as queued"

    async def result(self, name: str) -> Any:
        """The call's result, or its exception raised."""
        await self.done[name].wait()
        assert name in self.outcomes, f"the call {name!r} was cancelled"
        return self.outcomes[name].unwrap()

    async def cancel(self, name: str) -> None:
        """Cancel the caller's scope; return once it has caught the cancellation."""
        self.scopes[name].cancel()
        await self.done[name].wait()
        assert self.scopes[name].cancelled_caught
        assert name not in self.outcomes


async def start_blocker(callers: Callers, name: str = "blocker", **options: Any) -> None:
    """Call ``gated`` and wait until it runs: a one-slot worker is then busy."""
    callers.start(name, gated, name, name, **options)
    await SHARED.event(f"{name}:started").wait()


def records(caplog: pytest.LogCaptureFixture, level: int | None = None) -> list[logging.LogRecord]:
    """The TaskQueue logger's records (at exactly ``level`` if given)."""
    return [r for r in caplog.records if r.name == LOGGER and (level is None or r.levelno == level)]


def formatted(record: logging.LogRecord) -> str:
    """A record as a handler would print it: message, then any traceback."""
    return logging.Formatter().format(record)


# -- task functions (module level: pickled by reference, they see SHARED) ------------------


def log(name: str) -> str:
    """Log ``name`` (in a worker thread)."""
    SHARED.calls[name] += 1
    SHARED.ran.append(name)
    return name


async def async_log(name: str) -> str:
    """Log ``name`` (as a trio task)."""
    await trio.lowlevel.checkpoint()
    SHARED.calls[name] += 1
    SHARED.ran.append(name)
    return name


async def gated(name: str, value: Any = None) -> Any:
    """Log ``name``, say it started, wait for its "go", return ``value``."""
    SHARED.calls[name] += 1
    SHARED.ran.append(name)
    SHARED.event(f"{name}:started").set()
    await SHARED.event(f"{name}:go").wait()
    return value


def gated_thread(name: str, value: Any = None) -> Any:
    """``gated`` in a worker thread, which cannot be interrupted: it waits on a gate."""
    SHARED.calls[name] += 1
    SHARED.ran.append(f"{name}:started")
    trio.from_thread.run_sync(SHARED.event(f"{name}:started").set)
    if not SHARED.gates[name].wait(THREAD_GATE):
        raise TimeoutError(f"gate {name} never opened")
    SHARED.ran.append(f"{name}:finished")
    return value


async def watch_cancellation(name: str, value: Any = None) -> Any:
    """Run until cancelled; log that it saw the cancellation."""
    SHARED.calls[name] += 1
    SHARED.event(f"{name}:started").set()
    try:
        await trio.sleep_forever()
    except trio.Cancelled:
        SHARED.ran.append(f"{name}:cancelled")
        SHARED.event(f"{name}:cancelled").set()
        raise
    return value


def stuck_first(name: str) -> str:
    """The first run blocks in its thread (until the test opens its gate); later runs return."""
    SHARED.calls[name] += 1
    run = SHARED.calls[name]
    SHARED.ran.append(name)
    if run == 1:
        trio.from_thread.run_sync(SHARED.event(f"{name}:started").set)
        SHARED.gates[name].wait(THREAD_GATE)
    return f"{name} run {run}"


async def async_stuck_first(name: str) -> str:
    """The first run waits until cancelled; later runs return."""
    SHARED.calls[name] += 1
    run = SHARED.calls[name]
    SHARED.ran.append(name)
    if run == 1:
        SHARED.event(f"{name}:started").set()
        await trio.sleep_forever()
    return f"{name} run {run}"


class TaskFailure(Exception):
    """A picklable exception raised by a task."""


async def tally(name: str) -> int:
    """Count a run of ``name``; return which run it is (1, 2, ...)."""
    await trio.lowlevel.checkpoint()
    SHARED.calls[name] += 1
    SHARED.ran.append(name)
    return SHARED.calls[name]


async def fail_first(name: str) -> int:
    """``tally``, but its first run raises ``TaskFailure``."""
    run = await tally(name)
    if run == 1:
        raise TaskFailure(f"{name} run 1")
    return run


def raise_failure(text: str) -> None:
    raise TaskFailure(text)


async def async_raise_failure(text: str) -> None:
    await trio.lowlevel.checkpoint()
    raise TaskFailure(text)


def count_up(n: int) -> Iterator[int]:
    for i in range(n):
        SHARED.produced += 1
        yield i


async def async_count_up(n: int) -> AsyncIterator[int]:
    for i in range(n):
        await trio.lowlevel.checkpoint()
        SHARED.produced += 1
        yield i


def count_up_watched(n: int) -> Iterator[int]:
    """``count_up`` that also records its largest lead over the reader."""
    for i in range(n):
        SHARED.produced += 1
        SHARED.lead = max(SHARED.lead, SHARED.produced - SHARED.consumed)
        yield i


async def async_count_up_watched(n: int) -> AsyncIterator[int]:
    for i in range(n):
        await trio.lowlevel.checkpoint()
        SHARED.produced += 1
        SHARED.lead = max(SHARED.lead, SHARED.produced - SHARED.consumed)
        yield i


def count_forever(name: str) -> Iterator[int]:
    i = 0
    try:
        while True:
            SHARED.produced += 1
            yield i
            i += 1
    finally:
        SHARED.gates[f"{name}:closed"].set()


async def async_count_forever(name: str) -> AsyncIterator[int]:
    i = 0
    try:
        while True:
            await trio.lowlevel.checkpoint()
            SHARED.produced += 1
            yield i
            i += 1
    finally:
        SHARED.gates[f"{name}:closed"].set()


def fail_mid_stream(n: int) -> Iterator[int]:
    yield from range(n)
    raise TaskFailure("mid-stream")


async def async_fail_mid_stream(n: int) -> AsyncIterator[int]:
    for i in range(n):
        await trio.lowlevel.checkpoint()
        yield i
    raise TaskFailure("mid-stream")


# -- workers run functions --------------------------------------------------------------------


async def test_every_worker_kind_runs_plain_functions_in_threads_and_async_ones_in_trio(
    kind: Kind,
) -> None:
    async with trioq.TaskQueue(kind.new()) as queue:
        with trio.fail_after(WAIT):
            assert await queue.call(add, 2, b=3) == 5
            assert await queue.call(async_add, 10, b=5) == 15
            assert await queue.call(sorted, [3, 1, 2], reverse=True) == [3, 2, 1]
            in_thread = await queue.call(thread_ident)
            in_trio = await queue.call(async_thread_ident)
    assert in_thread != threading.get_ident()
    assert in_trio == threading.get_ident()  # this trio run (the cluster's worker shares it)


async def test_a_queue_is_running_only_between_entering_and_shutdown_and_pending_counts_calls() -> (
    None
):
    queue = trioq.TaskQueue(trioq.ThreadWorker())
    assert not queue.is_running() and not queue and queue.pending() == 0
    async with queue as entered, trio.open_nursery() as nursery:
        assert entered is queue
        assert queue.is_running() and queue and queue.pending() == 0
        callers = Callers(queue, nursery)
        with trio.fail_after(WAIT):
            await start_blocker(callers)
            assert queue.pending() == 1  # running
            await callers.submit("queued", add, 1)
            assert queue.pending() == 2  # running and queued
            SHARED.event("blocker:go").set()
            assert await callers.result("queued") == 1
            assert await callers.result("blocker") == "blocker"
            assert queue.pending() == 0
        assert queue.is_running() and queue
    assert not queue.is_running() and not queue


async def test_len_is_the_number_of_attached_workers_whatever_the_calls() -> None:
    queue = trioq.TaskQueue(trioq.ThreadWorker(), trioq.ThreadWorker())
    assert len(queue) == 0  # the constructor's workers are attached on entering
    async with queue, trio.open_nursery() as nursery:
        assert len(queue) == 2
        callers = Callers(queue, nursery)
        with trio.fail_after(WAIT):
            await start_blocker(callers, "b1")
            await start_blocker(callers, "b2")
            await callers.submit("queued", add, 1)
            assert len(queue) == 2 and queue.pending() == 3  # calls do not count in len
            third = await queue.attach_worker(trioq.ThreadWorker())
            assert len(queue) == 3
            assert await callers.result("queued") == 1  # on the third worker
            assert await queue.detach_worker(third) == []
            assert len(queue) == 2
            SHARED.event("b1:go").set()
            SHARED.event("b2:go").set()
    assert len(queue) == 0  # shutdown stopped every worker


async def test_a_queue_is_true_only_while_running_with_at_least_one_worker() -> None:
    queue = trioq.TaskQueue()
    assert not queue
    async with queue:
        with trio.fail_after(WAIT):
            assert queue.is_running() and not queue  # running, but nobody to run a call
            worker_id = await queue.attach_worker(trioq.ThreadWorker())
            assert queue
            await queue.detach_worker(worker_id)
            assert queue.is_running() and not queue
            await queue.attach_worker(trioq.ThreadWorker())
            assert queue
            await queue.shutdown()
            assert not queue  # stopped: its workers are gone too
    assert not queue


async def test_calling_a_queue_that_was_never_entered_is_a_runtime_error() -> None:
    queue = trioq.TaskQueue(trioq.ThreadWorker())
    with pytest.raises(RuntimeError):
        await queue.call(add, 1)


async def test_a_non_callable_fn_is_a_type_error_at_once() -> None:
    async with trioq.TaskQueue() as queue:  # no worker: a valid call would wait
        with trio.fail_after(WAIT):
            with pytest.raises(TypeError):
                await queue.call(42)  # type: ignore[arg-type]
        assert queue.pending() == 0


@pytest.mark.parametrize("niceness", [-21, 21, 1000])
async def test_a_niceness_outside_minus_20_to_20_is_a_value_error(niceness: int) -> None:
    async with trioq.TaskQueue(trioq.ThreadWorker()) as queue:
        with trio.fail_after(WAIT):
            with pytest.raises(ValueError, match="niceness"):
                await queue.call(add, 1, niceness=niceness)
            assert queue.pending() == 0
            assert await queue.call(add, 1, niceness=-20) == 1  # the ends are fine
            assert await queue.call(add, 2, niceness=20) == 2


async def test_after_shutdown_call_update_and_attach_raise_closed_resource_error() -> None:
    async with trioq.TaskQueue(trioq.ThreadWorker()) as queue:
        with trio.fail_after(WAIT):
            assert await queue.call(add, 1) == 1
            await queue.shutdown()
            assert not queue.is_running() and not queue
            with pytest.raises(trio.ClosedResourceError):
                await queue.call(add, 1)
            with pytest.raises(trio.ClosedResourceError):
                await queue.update(add, 1)
            with pytest.raises(trio.ClosedResourceError):
                await queue.attach_worker(trioq.ThreadWorker())
            await queue.shutdown()  # idempotent; and leaving the block shuts it down again
    assert SHARED.ran == []


# -- dispatch order ---------------------------------------------------------------------------


async def test_a_busy_worker_runs_queued_calls_lower_niceness_first_then_in_submission_order() -> (
    None
):
    calls = [("n0-a", 0), ("n5-a", 5), ("nm3", -3), ("n5-b", 5), ("nm20", -20), ("n0-b", 0)]
    calls += [("n20", 20)]
    async with trioq.TaskQueue(trioq.ThreadWorker()) as queue, trio.open_nursery() as nursery:
        callers = Callers(queue, nursery)
        with trio.fail_after(WAIT):
            await start_blocker(callers)
            for name, niceness in calls:
                await callers.submit(name, log, name, niceness=niceness)
            SHARED.event("blocker:go").set()
            for name, _ in calls:
                assert await callers.result(name) == name
    assert SHARED.ran == ["blocker", "nm20", "nm3", "n0-a", "n0-b", "n5-a", "n5-b", "n20"]


nicenesses = st.lists(
    st.sampled_from([-20, -1, 0, 0, 1, 20]) | st.integers(-20, 20), min_size=1, max_size=8
)


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(nicenesses=nicenesses)
async def test_queued_calls_run_by_niceness_then_submission_order_whatever_the_mix(
    nicenesses: list[int],
) -> None:
    SHARED.reset()
    async with trioq.TaskQueue(trioq.ThreadWorker()) as queue, trio.open_nursery() as nursery:
        callers = Callers(queue, nursery)
        with trio.fail_after(WAIT):
            await start_blocker(callers)
            for i, niceness in enumerate(nicenesses):
                await callers.submit(str(i), async_log, str(i), niceness=niceness)
            SHARED.event("blocker:go").set()
            for i in range(len(nicenesses)):
                await callers.result(str(i))
    expected = sorted(range(len(nicenesses)), key=lambda i: (nicenesses[i], i))
    assert SHARED.ran == ["blocker", *map(str, expected)]


@pytest.mark.parametrize("later", ["b", None], ids=["another-series", "no-series"])
async def test_a_series_submitted_later_interleaves_with_a_long_queued_series(
    later: str | None,
) -> None:
    late = "b" if later else "plain"
    worker = trioq.ThreadWorker(series=["a", "b", "z"])
    async with trioq.TaskQueue(worker) as queue, trio.open_nursery() as nursery:
        callers = Callers(queue, nursery)
        with trio.fail_after(WAIT):
            await start_blocker(callers, series="z")  # a class of its own
            for i in range(10):
                await callers.submit(f"a{i}", log, f"a{i}", series="a")
            for j in range(3):
                await callers.submit(f"{late}{j}", log, f"{late}{j}", series=later)
            SHARED.event("blocker:go").set()
            for name in [*(f"a{i}" for i in range(10)), *(f"{late}{j}" for j in range(3))]:
                assert await callers.result(name) == name
    interleaved = [name for j in range(3) for name in (f"a{j}", f"{late}{j}")]
    assert SHARED.ran == ["blocker", *interleaved, *(f"a{i}" for i in range(3, 10))]


async def test_a_series_that_turns_busy_late_gets_no_credit_for_its_idle_time() -> None:
    # Start-time fair queueing: a newcomer's first tag is the virtual time (the
    # tag of the call dispatched last), not 0, so it interleaves from there
    # instead of running its whole backlog ahead of the series already busy.
    worker = trioq.ThreadWorker(series=["a", "b", "z"])
    async with trioq.TaskQueue(worker) as queue, trio.open_nursery() as nursery:
        callers = Callers(queue, nursery)
        with trio.fail_after(WAIT):
            await start_blocker(callers, series="z")
            for i in range(10):
                if i == 4:
                    await callers.submit("a4", gated, "a4", "a4", series="a")
                else:
                    await callers.submit(f"a{i}", log, f"a{i}", series="a")
            SHARED.event("blocker:go").set()
            await SHARED.event("a4:started").wait()
            assert SHARED.ran == ["blocker", "a0", "a1", "a2", "a3", "a4"]
            for j in range(4):
                await callers.submit(f"b{j}", log, f"b{j}", series="b")
            SHARED.event("a4:go").set()
            for name in [*(f"a{i}" for i in range(10)), *(f"b{j}" for j in range(4))]:
                assert await callers.result(name) == name
    assert SHARED.ran[6:] == ["b0", "a5", "b1", "a6", "b2", "a7", "b3", "a8", "a9"]


async def test_niceness_outranks_series_fairness() -> None:
    worker = trioq.ThreadWorker(series=["a", "b", "c", "z"])
    async with trioq.TaskQueue(worker) as queue, trio.open_nursery() as nursery:
        callers = Callers(queue, nursery)
        with trio.fail_after(WAIT):
            await start_blocker(callers, series="z")
            for i in range(4):
                await callers.submit(f"a{i}", log, f"a{i}", series="a")
            for j in range(2):
                await callers.submit(f"b{j}", log, f"b{j}", series="b", niceness=1)
            await callers.submit("c0", log, "c0", series="c", niceness=-1)
            SHARED.event("blocker:go").set()
            for name in ["a0", "a1", "a2", "a3", "b0", "b1", "c0"]:
                assert await callers.result(name) == name
    assert SHARED.ran == ["blocker", "c0", "a0", "a1", "a2", "a3", "b0", "b1"]


# -- series -----------------------------------------------------------------------------------


async def test_a_series_call_waits_while_its_worker_is_unqualified_and_runs_once_qualified(
    kind: Kind,
) -> None:
    worker = kind.new()
    async with trioq.TaskQueue(worker) as queue, trio.open_nursery() as nursery:
        callers = Callers(queue, nursery)
        with trio.fail_after(WAIT):
            await callers.submit("db", log, "db", series="db")
            assert await queue.call(log, "plain") == "plain"  # the worker is idle ...
            await trio.testing.wait_all_tasks_blocked()
            assert SHARED.ran == ["plain"] and queue.pending() == 1  # ... and does not take it
            queue.qualify_worker(worker, "db")  # by the worker object
            assert await callers.result("db") == "db"
    assert SHARED.ran == ["plain", "db"]


async def test_series_calls_run_only_on_workers_qualified_by_constructor_or_qualify_worker() -> (
    None
):
    plain_worker, db_worker = trioq.ThreadWorker(), trioq.ThreadWorker(series=["db"])
    async with (
        trioq.TaskQueue(plain_worker, db_worker) as queue,
        trio.open_nursery() as nursery,
    ):
        callers = Callers(queue, nursery)
        plain_id, db_id = 1, 2  # the constructor's workers, in attach order
        assert queue.workers(plain_id) is plain_worker and queue.workers(db_id) is db_worker
        with trio.fail_after(WAIT):
            await start_blocker(callers, "db1", series="db")  # only db_worker may take it
            await callers.submit("db2", log, "db2", series="db")
            assert await queue.call(log, "plain") == "plain"  # plain_worker is idle ...
            await trio.testing.wait_all_tasks_blocked()
            assert "db2" not in SHARED.ran and queue.pending() == 2  # ... and does not take db2
            queue.qualify_worker(plain_id, "db")  # by id
            assert await callers.result("db2") == "db2"  # on plain_worker: db_worker is busy
            assert not callers.done["db1"].is_set()
            SHARED.event("db1:go").set()
            assert await callers.result("db1") == "db1"
    assert SHARED.ran == ["db1", "plain", "db2"]


# -- streaming --------------------------------------------------------------------------------

sync_and_async = pytest.mark.parametrize("flavour", ["sync", "async"])


def generator(flavour: str, sync: Callable[..., Any], async_: Callable[..., Any]) -> Any:
    return sync if flavour == "sync" else async_


@sync_and_async
async def test_a_streamed_generator_yields_its_items_in_order(kind: Kind, flavour: str) -> None:
    async with trioq.TaskQueue(kind.new()) as queue:
        with trio.fail_after(WAIT):
            receiver = await queue.call(generator(flavour, count_up, async_count_up), 100)
            assert isinstance(receiver, trio.abc.ReceiveChannel)
            async with receiver:
                items = [item async for item in receiver]
            assert items == list(range(100))
            assert await queue.call(add, 1) == 1  # the worker is free again


def waiting_for_room(receiver: Any) -> bool:
    """A ``ThreadWorker`` stream's producer is blocked: its channel is full and it waits.

    Reads the ``CallStream``'s private memory channel: the one place that
    knows, whether the producer is a thread or a trio task.
    """
    stats = receiver._receive.statistics()
    return bool(stats.tasks_waiting_send) and stats.current_buffer_used == stats.max_buffer_size


@sync_and_async
async def test_a_thread_workers_streaming_producer_blocks_a_bounded_number_of_items_ahead(
    flavour: str,
) -> None:
    fn = generator(flavour, count_up_watched, async_count_up_watched)
    stalls = []
    async with trioq.TaskQueue(trioq.ThreadWorker()) as queue:
        with trio.fail_after(WAIT):
            receiver = await queue.call(fn, STREAM_ITEMS)
            items: list[int] = []
            async with receiver:
                while len(items) < STREAM_ITEMS:
                    # The reader stalls until the producer is blocked (or done): from then
                    # on it cannot make another item until the reader takes one.
                    await procs.poll_until(
                        lambda: waiting_for_room(receiver) or SHARED.produced == STREAM_ITEMS
                    )
                    if SHARED.produced < STREAM_ITEMS:
                        stalls.append(SHARED.produced - len(items))
                    for _ in range(min(60, STREAM_ITEMS - len(items))):
                        items.append(await receiver.receive())
                        SHARED.consumed += 1
                with pytest.raises(trio.EndOfChannel):
                    await receiver.receive()
    assert items == list(range(STREAM_ITEMS))
    assert len(stalls) == 4, f"the producer was caught blocked only {len(stalls)} times"
    assert max(stalls) <= STREAM_AHEAD, f"the producer was blocked only {stalls} items ahead"
    assert SHARED.lead <= STREAM_AHEAD, f"the producer once ran {SHARED.lead} items ahead"


@sync_and_async
async def test_a_remote_streaming_producer_stays_a_bounded_number_of_items_ahead(
    flavour: str,
) -> None:
    # The producer runs on the cluster's worker, in this trio run; the sync
    # flavour's next() runs in a thread there, which wait_all_tasks_blocked
    # cannot see: the generator's own record of its lead backs the check up.
    fn = generator(flavour, count_up_watched, async_count_up_watched)
    leads = []
    async with (
        trioq.open_cluster(workers=1) as cluster,
        trioq.TaskQueue(trioq.RemoteWorker(cluster.address)) as queue,
    ):
        with trio.fail_after(WAIT):
            receiver = await queue.call(fn, STREAM_ITEMS)
            items: list[int] = []
            async with receiver:
                while len(items) < STREAM_ITEMS:
                    # Every task blocked for a while: the producer went as far as it may.
                    await trio.testing.wait_all_tasks_blocked(QUIET)
                    leads.append(SHARED.produced - len(items))
                    for _ in range(min(60, STREAM_ITEMS - len(items))):
                        items.append(await receiver.receive())
                        SHARED.consumed += 1
                with pytest.raises(trio.EndOfChannel):
                    await receiver.receive()
    assert items == list(range(STREAM_ITEMS))
    assert SHARED.produced == STREAM_ITEMS
    assert max(leads) <= STREAM_AHEAD, f"the producer ran ahead by {leads}"
    assert SHARED.lead <= STREAM_AHEAD, f"the producer once ran {SHARED.lead} items ahead"


@sync_and_async
async def test_closing_the_receiver_early_stops_the_generator_and_frees_the_worker(
    kind: Kind, flavour: str
) -> None:
    fn = generator(flavour, count_forever, async_count_forever)
    closed = SHARED.gates["endless:closed"]
    async with trioq.TaskQueue(kind.new()) as queue:
        with trio.fail_after(WAIT):
            receiver = await queue.call(fn, "endless")
            async with receiver:
                assert [await receiver.receive() for _ in range(3)] == [0, 1, 2]
            await procs.poll_until(closed.is_set)  # the generator's ``finally`` ran
            produced = SHARED.produced
            assert produced <= 3 + STREAM_AHEAD
            assert await queue.call(add, 1, 2) == 3  # the worker is free again
            assert queue.pending() == 0
    assert SHARED.produced == produced


@sync_and_async
async def test_an_exception_inside_a_streamed_generator_is_raised_from_receive(
    kind: Kind, flavour: str
) -> None:
    fn = generator(flavour, fail_mid_stream, async_fail_mid_stream)
    async with trioq.TaskQueue(kind.new()) as queue:
        with trio.fail_after(WAIT):
            receiver = await queue.call(fn, 3)
            async with receiver:
                assert [await receiver.receive() for _ in range(3)] == [0, 1, 2]
                with pytest.raises(TaskFailure, match="mid-stream"):
                    await receiver.receive()
            assert await queue.call(add, 1) == 1  # the worker is free again


# -- timeouts and cancellation ----------------------------------------------------------------


async def test_a_call_timeout_raises_too_slow_and_cancels_the_async_fn_on_its_worker(
    kind: Kind,
) -> None:
    async with trioq.TaskQueue(kind.new()) as queue:
        with trio.fail_after(WAIT):
            started = trio.current_time()
            with pytest.raises(trio.TooSlowError):
                await queue.call(watch_cancellation, "slow", timeout=0.2)
            assert trio.current_time() - started >= 0.2
            await SHARED.event("slow:cancelled").wait()  # it saw Cancelled on its worker
            assert await queue.call(add, 1, 2) == 3  # and the worker takes the next call
            assert queue.pending() == 0
    assert SHARED.calls["slow"] == 1


async def test_a_call_timeout_counts_time_queued_and_withdraws_a_call_still_queued() -> None:
    async with trioq.TaskQueue(trioq.ThreadWorker()) as queue, trio.open_nursery() as nursery:
        callers = Callers(queue, nursery)
        with trio.fail_after(WAIT):
            await start_blocker(callers)
            with pytest.raises(trio.TooSlowError):
                await queue.call(log, "late", timeout=0.2)
            assert queue.pending() == 1  # only the blocker is left
            SHARED.event("blocker:go").set()
            assert await callers.result("blocker") == "blocker"
            assert await queue.call(log, "after") == "after"
    assert SHARED.ran == ["blocker", "after"]  # the timed-out call never ran


@pytest.mark.parametrize("how", ["timeout", "cancel"])
async def test_a_thread_call_given_up_keeps_its_worker_until_the_thread_returns(how: str) -> None:
    async with trioq.TaskQueue(trioq.ThreadWorker()) as queue, trio.open_nursery() as nursery:
        callers = Callers(queue, nursery)
        with trio.fail_after(WAIT):
            if how == "timeout":
                with pytest.raises(trio.TooSlowError):
                    await queue.call(gated_thread, "stuck", timeout=0.2)
            else:
                callers.start("stuck", gated_thread, "stuck")
                await SHARED.event("stuck:started").wait()
                await callers.cancel("stuck")
            callers.start("next", async_log, "next")
            await trio.testing.wait_all_tasks_blocked()
            assert SHARED.ran == ["stuck:started"], "the worker took new work while busy"
            SHARED.gates["stuck"].set()
            assert await callers.result("next") == "next"
            assert queue.pending() == 0
    assert SHARED.ran == ["stuck:started", "stuck:finished", "next"]
    assert SHARED.calls == {"stuck": 1, "next": 1}


async def test_cancelling_the_caller_of_a_queued_call_withdraws_it_so_it_never_runs() -> None:
    async with trioq.TaskQueue(trioq.ThreadWorker()) as queue, trio.open_nursery() as nursery:
        callers = Callers(queue, nursery)
        with trio.fail_after(WAIT):
            await start_blocker(callers)
            await callers.submit("queued", log, "queued")
            await callers.cancel("queued")
            assert queue.pending() == 1
            SHARED.event("blocker:go").set()
            assert await callers.result("blocker") == "blocker"
            assert await queue.call(log, "after") == "after"
            assert queue.pending() == 0
    assert SHARED.ran == ["blocker", "after"]


async def test_cancelling_the_caller_of_a_running_call_cancels_it_on_its_worker_and_frees_the_slot(
    kind: Kind,
) -> None:
    async with trioq.TaskQueue(kind.new()) as queue, trio.open_nursery() as nursery:
        callers = Callers(queue, nursery)
        with trio.fail_after(WAIT):
            callers.start("victim", watch_cancellation, "victim")
            await SHARED.event("victim:started").wait()
            await callers.submit("next", log, "next")
            await callers.cancel("victim")
            await SHARED.event("victim:cancelled").wait()
            assert await callers.result("next") == "next"  # the slot went to the next call
            assert await queue.call(add, 1, 2) == 3
            assert queue.pending() == 0
    assert SHARED.calls == {"victim": 1, "next": 1}


# -- attaching and detaching ------------------------------------------------------------------


async def test_workers_are_numbered_from_1_in_attach_order_and_ids_are_not_reused() -> None:
    first, second, third = trioq.ThreadWorker(), trioq.ThreadWorker(), trioq.ThreadWorker()
    async with trioq.TaskQueue(first, second) as queue:
        with trio.fail_after(WAIT):
            assert queue.workers(1) is first and queue.workers(2) is second
            assert await queue.attach_worker(third) == 3
            assert [queue.workers(i) for i in (1, 2, 3)] == [first, second, third]
            assert queue.workers(99) is None
            assert await queue.detach_worker(2) == []
            assert queue.workers(2) is None and queue.workers(3) is third
            assert await queue.attach_worker(trioq.ThreadWorker()) == 4
            with pytest.raises(KeyError):
                await queue.detach_worker(2)
            with pytest.raises(KeyError):
                await queue.detach_worker(99)
            assert await queue.call(add, 1) == 1


async def test_workers_without_an_id_lists_the_attached_worker_objects_in_attach_order() -> None:
    first, second, third = trioq.ThreadWorker(), trioq.ThreadWorker(), trioq.ThreadWorker()
    queue = trioq.TaskQueue(first, second)
    assert queue.workers() == []  # none attached before entering
    async with queue:
        with trio.fail_after(WAIT):
            assert queue.workers() == [first, second]
            third_id = await queue.attach_worker(third)
            assert queue.workers() == [first, second, third]
            assert await queue.detach_worker(2) == []
            assert queue.workers() == [first, third]
            assert queue.workers(third_id) is third
    assert queue.workers() == []


async def test_detaching_without_crash_waits_for_the_running_call_and_takes_no_new_one(
    kind: Kind,
) -> None:
    async with trioq.TaskQueue(kind.new()) as queue, trio.open_nursery() as nursery:
        callers = Callers(queue, nursery)
        with trio.fail_after(WAIT):
            await start_blocker(callers, "running")
            await callers.submit("waiting", log, "waiting")
            returned: list[Any] = []
            detached = trio.Event()

            async def detach() -> None:
                returned.append(await queue.detach_worker(1))
                detached.set()

            nursery.start_soon(detach)
            await trio.testing.wait_all_tasks_blocked()
            assert not detached.is_set(), "detach did not wait for the running call"
            SHARED.event("running:go").set()
            assert await callers.result("running") == "running"
            await detached.wait()
            assert returned == [[]]
            assert queue.workers() == []
            await trio.testing.wait_all_tasks_blocked()
            assert "waiting" not in SHARED.ran and queue.pending() == 1
            assert await queue.attach_worker(kind.new()) == 2
            assert await callers.result("waiting") == "waiting"
    assert SHARED.ran == ["running", "waiting"]


async def test_detaching_with_crash_returns_the_unfinished_calls_and_their_callers_lose_them(
    kind: Kind,
) -> None:
    # A thread cannot be interrupted (it is abandoned); a remote call is cancelled.
    fn = gated_thread if kind.name == "thread" else watch_cancellation
    async with trioq.TaskQueue(kind.new(series=["s"])) as queue, trio.open_nursery() as nursery:
        callers = Callers(queue, nursery)
        try:
            with trio.fail_after(WAIT):
                callers.start("victim", fn, "victim", value=7, niceness=3, series="s")
                await SHARED.event("victim:started").wait()
                infos = await queue.detach_worker(1, crash=True)
                assert infos == [
                    trioq.TaskInfo(
                        fn=fn, args=("victim",), kwargs={"value": 7}, niceness=3, series="s"
                    )
                ]
                with pytest.raises(trioq.WorkerLostError):
                    await callers.result("victim")
                assert queue.workers() == [] and queue.pending() == 0
                if kind.name == "remote":
                    await SHARED.event("victim:cancelled").wait()
                await queue.attach_worker(trioq.ThreadWorker())
                assert await queue.call(add, 1) == 1  # the queue goes on
        finally:
            SHARED.open_gates()
    assert SHARED.calls["victim"] == 1


async def test_detaching_with_crash_and_reassign_reruns_the_calls_elsewhere_in_their_place(
    kind: Kind,
) -> None:
    fn = stuck_first if kind.name == "thread" else async_stuck_first
    async with trioq.TaskQueue(kind.new()) as queue, trio.open_nursery() as nursery:
        callers = Callers(queue, nursery)
        with trio.fail_after(WAIT):
            callers.start("X", fn, "X")
            await SHARED.event("X:started").wait()
            await callers.submit("Y", log, "Y")  # queued after X
            assert await queue.detach_worker(1, reassign=True, crash=True) == []
            assert queue.pending() == 2 and not callers.done["X"].is_set()
            assert await queue.attach_worker(trioq.ThreadWorker()) == 2
            assert await callers.result("X") == "X run 2"
            assert await callers.result("Y") == "Y"
            SHARED.open_gates()  # the abandoned first run of X returns: nothing comes of it
            assert await queue.call(add, 1) == 1
    assert SHARED.ran == ["X", "X", "Y"]  # X back in its original place, ahead of Y


# -- updates ----------------------------------------------------------------------------------


async def test_an_update_runs_on_every_attached_worker_and_first_on_workers_attached_later() -> (
    None
):
    async with trioq.TaskQueue(trioq.ThreadWorker()) as queue, trio.open_nursery() as nursery:
        callers = Callers(queue, nursery)
        with trio.fail_after(WAIT):
            await queue.update(log, "u1")
            await queue.update(log, name="u2")
            assert SHARED.ran == ["u1", "u2"]
            await start_blocker(callers)  # worker 1 is busy
            await callers.submit("call", log, "call")
            await queue.attach_worker(trioq.ThreadWorker())
            assert await callers.result("call") == "call"
            SHARED.event("blocker:go").set()
            assert await callers.result("blocker") == "blocker"
    assert SHARED.ran == ["u1", "u2", "blocker", "u1", "u2", "call"]


async def start_update(
    queue: trioq.TaskQueue, nursery: trio.Nursery, fn: Callable[..., Any], *args: Any
) -> tuple[list[Any], trio.Event]:
    """Start ``queue.update(fn, *args)`` in the background: its return value, and its end."""
    returned: list[Any] = []
    updated = trio.Event()

    async def update() -> None:
        returned.append(await queue.update(fn, *args))
        updated.set()

    nursery.start_soon(update)
    await trio.testing.wait_all_tasks_blocked()
    return returned, updated


async def test_an_update_returns_each_workers_result_in_attach_order_not_finishing_order() -> None:
    async with trioq.TaskQueue(trioq.ThreadWorker()) as queue, trio.open_nursery() as nursery:
        callers = Callers(queue, nursery)
        with trio.fail_after(WAIT):
            await start_blocker(callers)  # worker 1 is busy: its run of the update waits
            await queue.attach_worker(trioq.ThreadWorker())
            returned, updated = await start_update(queue, nursery, tally, "u")
            assert SHARED.calls["u"] == 1 and not updated.is_set()  # worker 2 ran it first
            SHARED.event("blocker:go").set()
            await updated.wait()
    assert returned == [[2, 1]]  # worker 1's run came second


async def test_an_update_leaves_out_a_worker_that_left_before_its_run_ended(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with trioq.TaskQueue(trioq.ThreadWorker()) as queue, trio.open_nursery() as nursery:
        callers = Callers(queue, nursery)
        with trio.fail_after(WAIT):
            await start_blocker(callers)  # worker 1 is busy: its run of the update waits
            await queue.attach_worker(trioq.ThreadWorker())
            returned, updated = await start_update(queue, nursery, tally, "u")
            assert SHARED.calls["u"] == 1 and not updated.is_set()
            await queue.detach_worker(1, crash=True)  # its run never starts
            await updated.wait()
            with pytest.raises(trioq.WorkerLostError):
                await callers.result("blocker")
    assert returned == [[1]]  # worker 2's run only
    assert any("update" in r.getMessage() for r in records(caplog, logging.WARNING))


async def test_without_return_failure_an_update_gives_none_for_each_worker_it_failed_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with (
        trioq.TaskQueue(trioq.ThreadWorker(), return_failure=False) as queue,
        trio.open_nursery() as nursery,
    ):
        callers = Callers(queue, nursery)
        with trio.fail_after(WAIT):
            await start_blocker(callers)  # worker 1 is busy: its run of the update waits
            await queue.attach_worker(trioq.ThreadWorker())
            returned, updated = await start_update(queue, nursery, fail_first, "u")
            SHARED.event("blocker:go").set()  # worker 2's run (the first) has failed
            await updated.wait()
    assert returned == [[2, None]]
    (record,) = records(caplog, logging.ERROR)
    assert "TaskFailure: u run 1" in formatted(record)


@sync_and_async
async def test_an_update_that_returns_a_generator_gives_none_and_its_generator_is_stopped(
    flavour: str,
) -> None:
    fn = generator(flavour, count_forever, async_count_forever)
    async with trioq.TaskQueue(trioq.ThreadWorker()) as queue:
        with trio.fail_after(WAIT):
            assert await queue.update(fn, "u") == [None]
            assert await queue.call(add, 1) == 1  # the worker is free: the generator ended
            assert SHARED.gates["u:closed"].is_set()
            assert queue.pending() == 0


async def test_an_update_waits_for_a_busy_workers_slot_then_runs_ahead_of_queued_calls() -> None:
    async with trioq.TaskQueue(trioq.ThreadWorker()) as queue, trio.open_nursery() as nursery:
        callers = Callers(queue, nursery)
        with trio.fail_after(WAIT):
            await start_blocker(callers)  # an async call: the slot is taken, the thread is not
            await callers.submit("queued", async_log, "queued")
            updated = trio.Event()

            async def update() -> None:
                await queue.update(async_log, "update")
                updated.set()

            nursery.start_soon(update)
            await trio.testing.wait_all_tasks_blocked()
            assert SHARED.ran == ["blocker"], "the update ran beside the worker's call"
            SHARED.event("blocker:go").set()
            await updated.wait()
            assert await callers.result("queued") == "queued"
    assert SHARED.ran == ["blocker", "update", "queued"]


@pytest.mark.parametrize("crash", [False, True], ids=["detach", "crash"])
async def test_an_update_still_queued_for_a_worker_that_is_detached_ends_without_running(
    crash: bool, caplog: pytest.LogCaptureFixture
) -> None:
    async with trioq.TaskQueue(trioq.ThreadWorker()) as queue, trio.open_nursery() as nursery:
        callers = Callers(queue, nursery)
        with trio.fail_after(WAIT):
            await start_blocker(callers)
            updated = trio.Event()

            async def update() -> None:
                await queue.update(async_log, "update")
                updated.set()

            nursery.start_soon(update)
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(functools.partial(queue.detach_worker, 1, crash=crash))
            await updated.wait()  # while the blocker still runs (detach=False waits for it)
            SHARED.event("blocker:go").set()
            if crash:
                with pytest.raises(trioq.WorkerLostError):
                    await callers.result("blocker")
            else:
                assert await callers.result("blocker") == "blocker"
            assert queue.pending() == 0
    assert SHARED.ran == ["blocker"]
    assert any("update" in r.getMessage() for r in records(caplog, logging.WARNING))


async def test_an_update_with_no_worker_attached_is_kept_for_the_next_one() -> None:
    async with trioq.TaskQueue() as queue:
        with trio.fail_after(WAIT):
            await queue.update(async_log, "u")
            assert SHARED.ran == []
            await queue.attach_worker(trioq.ThreadWorker())
            assert await queue.call(log, "call") == "call"
            await queue.attach_worker(trioq.ThreadWorker())
            await queue.update(log, "v")
            await trio.testing.wait_all_tasks_blocked()
    assert SHARED.ran[:2] == ["u", "call"]
    # Worker 2 ran "u" before its "v"; worker 1's "v" may come before or after that.
    assert SHARED.ran[2:] in (["u", "v", "v"], ["v", "u", "v"])


async def test_an_update_runs_once_on_a_remote_worker_whatever_its_slots() -> None:
    async with (
        trioq.open_cluster(workers=1) as cluster,
        trioq.TaskQueue(trioq.RemoteWorker(cluster.address, slots=2)) as queue,
    ):
        with trio.fail_after(WAIT):
            await queue.update(log, "u")
            assert SHARED.ran == ["u"]
            assert await queue.call(add, 1) == 1


# -- shutdown ---------------------------------------------------------------------------------


async def test_shutdown_refuses_new_calls_and_lets_queued_and_running_ones_finish() -> None:
    async with trioq.TaskQueue(trioq.ThreadWorker()) as queue, trio.open_nursery() as nursery:
        callers = Callers(queue, nursery)
        with trio.fail_after(WAIT):
            await start_blocker(callers)
            await callers.submit("queued", log, "queued")
            finished = trio.Event()

            async def shut_down() -> None:
                await queue.shutdown(timeout=WAIT)
                finished.set()

            nursery.start_soon(shut_down)
            await trio.testing.wait_all_tasks_blocked()
            assert not queue.is_running() and not queue
            with pytest.raises(trio.ClosedResourceError):
                await queue.call(add, 1)
            assert not finished.is_set()
            SHARED.event("blocker:go").set()
            assert await callers.result("blocker") == "blocker"
            assert await callers.result("queued") == "queued"
            await finished.wait()
    assert SHARED.ran == ["blocker", "queued"]


def never_answer_cleanup(monkeypatch: pytest.MonkeyPatch) -> None:
    """The in-process cluster carries out task cancels and queue deletes, never answering."""
    from trioq._scheduler.instructions import Fail, Reply
    from trioq._scheduler.state import SchedulerState
    from trioq._wire.messages import QueueDelete
    from trioq._wire.task_messages import TaskCancel

    handle = SchedulerState.handle

    def silent(self: SchedulerState, conn: int, request_id: int, message: Any) -> Any:
        out = handle(self, conn, request_id, message)
        if isinstance(message, (TaskCancel, QueueDelete)):
            out = [o for o in out if not (isinstance(o, (Reply, Fail)) and o.conn == conn)]
        return out

    monkeypatch.setattr(SchedulerState, "handle", silent)


@pytest.mark.parametrize("how", ["shutdown", "detach-crash"])
async def test_stopping_a_remote_worker_cancels_its_calls_without_waiting_for_the_cluster(
    how: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    never_answer_cleanup(monkeypatch)
    names = ["a", "b", "c"]
    async with (
        trioq.open_cluster(workers=1, nthreads=len(names)) as cluster,
        trio.open_nursery() as nursery,
    ):
        worker = trioq.RemoteWorker(cluster.address, slots=len(names))
        async with trioq.TaskQueue(worker, timeout=0) as queue:
            callers = Callers(queue, nursery)
            with trio.fail_after(WAIT):
                for name in names:
                    callers.start(name, watch_cancellation, name)
                for name in names:
                    await SHARED.event(f"{name}:started").wait()
                started = trio.current_time()
                if how == "shutdown":
                    await queue.shutdown()
                else:
                    assert len(await queue.detach_worker(1, crash=True)) == len(names)
                elapsed = trio.current_time() - started
                assert elapsed < PROMPT, f"{how} took {elapsed:.1f}s"
                lost = trioq.TaskCancelledError if how == "shutdown" else trioq.WorkerLostError
                for name in names:
                    with pytest.raises(lost):
                        await callers.result(name)
                    await SHARED.event(f"{name}:cancelled").wait()  # cancelled on the cluster


async def test_shutdown_with_a_stuck_call_returns_after_the_queues_timeout_and_cancels_it() -> None:
    grace = 0.3
    async with (
        trioq.TaskQueue(trioq.ThreadWorker(), timeout=grace) as queue,
        trio.open_nursery() as nursery,
    ):
        callers = Callers(queue, nursery)
        try:
            with trio.fail_after(WAIT):
                callers.start("stuck", gated_thread, "stuck")
                await SHARED.event("stuck:started").wait()
                await callers.submit("queued", log, "queued")
                started = trio.current_time()
                await queue.shutdown()  # the queue's own timeout
                elapsed = trio.current_time() - started
                assert grace <= elapsed < grace + 2.0
                with pytest.raises(trioq.TaskCancelledError):
                    await callers.result("stuck")
                with pytest.raises(trioq.TaskCancelledError):
                    await callers.result("queued")
        finally:
            SHARED.open_gates()
    assert "queued" not in SHARED.ran


# -- failures and logging ---------------------------------------------------------------------


@pytest.mark.parametrize("fn", [raise_failure, async_raise_failure], ids=["plain", "async"])
async def test_a_failing_call_raises_its_original_exception_and_the_worker_goes_on(
    kind: Kind, fn: Callable[[str], Any], caplog: pytest.LogCaptureFixture
) -> None:
    async with trioq.TaskQueue(kind.new()) as queue:
        with trio.fail_after(WAIT):
            with pytest.raises(TaskFailure, match="it broke") as caught:
                await queue.call(fn, "it broke")
            assert await queue.call(add, 1) == 1
    if kind.name == "remote":
        notes = getattr(caught.value, "__notes__", [])
        assert any(fn.__name__ in note and "TaskFailure: it broke" in note for note in notes)
    assert not [r for r in records(caplog) if r.levelno >= logging.WARNING]  # not logged


@pytest.mark.parametrize("fn", [raise_failure, async_raise_failure], ids=["plain", "async"])
async def test_without_return_failure_a_failure_is_logged_with_its_traceback_and_gives_none(
    kind: Kind, fn: Callable[[str], Any], caplog: pytest.LogCaptureFixture
) -> None:
    async with trioq.TaskQueue(kind.new(), return_failure=False) as queue:
        with trio.fail_after(WAIT):
            assert await queue.call(fn, "quietly") is None
            assert await queue.call(add, 1) == 1
    (record,) = records(caplog, logging.ERROR)
    text = formatted(record)
    assert "Traceback" in text and fn.__name__ in text and "TaskFailure: quietly" in text


async def test_warn_logs_a_failure_at_warning_even_when_it_is_raised(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with trioq.TaskQueue(trioq.ThreadWorker(), warn=True) as queue:
        with trio.fail_after(WAIT):
            with pytest.raises(TaskFailure):
                await queue.call(raise_failure, "loudly")
    warnings = records(caplog, logging.WARNING)
    assert warnings and any("loudly" in formatted(r) for r in warnings)


async def test_verbose_logs_info_lines_for_attach_update_detach_and_shutdown(
    caplog: pytest.LogCaptureFixture, taskqueue_logger: logging.Logger
) -> None:
    def infos() -> int:
        return len(records(caplog, logging.INFO))

    async with trioq.TaskQueue(trioq.ThreadWorker(), verbose=True) as queue:
        assert taskqueue_logger.level == logging.NOTSET  # the flag does not change the logger
        with trio.fail_after(WAIT):
            seen = infos()
            assert seen >= 1, "no INFO line for attaching the first worker"
            for step, action in [
                ("update", lambda: queue.update(add, 1)),
                ("attach", lambda: queue.attach_worker(trioq.ThreadWorker())),
                ("detach", lambda: queue.detach_worker(2)),
            ]:
                await action()
                assert infos() > seen, f"no INFO line for {step}"
                seen = infos()
            assert await queue.call(add, 1) == 1
            seen = infos()
    assert infos() > seen, "no INFO line for shutdown"
    assert not records(caplog, logging.DEBUG)  # verbose is not spew


async def test_spew_logs_debug_lines_for_every_call_dispatched_and_finished(
    caplog: pytest.LogCaptureFixture, taskqueue_logger: logging.Logger
) -> None:
    async with trioq.TaskQueue(trioq.ThreadWorker(), spew=True) as queue:
        assert taskqueue_logger.level == logging.NOTSET  # the flag does not change the logger
        with trio.fail_after(WAIT):
            for i in range(3):
                seen = len(records(caplog, logging.DEBUG))
                assert await queue.call(add, i) == i
                await trio.testing.wait_all_tasks_blocked()
                assert len(records(caplog, logging.DEBUG)) >= seen + 2


async def test_each_queue_logs_by_its_own_flags_whatever_queues_were_made_before(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with (
        trioq.TaskQueue(trioq.ThreadWorker(), warn=True) as warned,
        trioq.TaskQueue(trioq.ThreadWorker(), spew=True) as spewed,
    ):
        with trio.fail_after(WAIT):
            assert await spewed.call(add, 1) == 1
            assert await warned.call(sorted, [2, 1]) == [1, 2]
            await trio.testing.wait_all_tasks_blocked()  # the runners have logged their ends
    debug = [r.getMessage() for r in records(caplog, logging.DEBUG)]
    assert any("(add) -> worker" in line for line in debug), debug  # spew: dispatched ...
    assert any("(add) ended" in line for line in debug), debug  # ... and finished
    assert not any("sorted" in line for line in debug), debug  # warn is not spew


async def test_a_quiet_queue_logs_nothing_below_warning(caplog: pytest.LogCaptureFixture) -> None:
    async with trioq.TaskQueue(trioq.ThreadWorker()) as queue:
        with trio.fail_after(WAIT):
            await queue.update(add, 1)
            assert await queue.call(add, 1) == 1
            await queue.detach_worker(await queue.attach_worker(trioq.ThreadWorker()))
    assert not [r for r in records(caplog) if r.levelno < logging.WARNING]


async def test_logging_flags_leave_a_logger_level_already_set_alone(
    caplog: pytest.LogCaptureFixture, taskqueue_logger: logging.Logger
) -> None:
    taskqueue_logger.setLevel(logging.WARNING)
    async with trioq.TaskQueue(trioq.ThreadWorker(), verbose=True, spew=True) as queue:
        with trio.fail_after(WAIT):
            await queue.update(add, 1)
            assert await queue.call(add, 1) == 1
        assert taskqueue_logger.level == logging.WARNING
    assert not [r for r in records(caplog) if r.levelno < logging.WARNING]
