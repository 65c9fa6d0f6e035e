"""Streaming pipelines end to end, in one process: scatter, map, gather, multiplex, merge.

``client.scatter``, ``client.map`` and ``client.gather`` over a
``trio.abc.ReceiveChannel`` each start a pump task in the client's nursery
and return a channel with a bounded buffer; ``trioq.streams.multiplex`` and
``merge`` split and join channels the same way.  These tests check what a
user relies on:

* results come out exactly, in input order, for long streams and for
  random buffer sizes (hypothesis);
* back pressure is real: with a stalled consumer, the items taken from the
  source and not yet consumed, the tasks alive on the scheduler and the
  futures alive in the client stay under a bound computed from the
  buffers, and the producer is blocked in its ``send``;
* the end of the input ends the pipeline; a task's error comes out at its
  place and later items follow;
* teardown (a cancelled scope, a channel closed early, a branch dropped)
  leaves no task or future on the scheduler and no pump task in the
  client's nursery, and closes the source.

Task functions are module level (pickled by reference) and async, so the
in-process workers run them in this trio thread, where they meet the test
through ``SHARED``.  Every wait is bounded by ``trio.fail_after``; nothing
synchronises by sleeping.  "The pipeline has stopped moving" is
``trio.testing.wait_all_tasks_blocked`` (scheduler, workers and client all
run in this trio run, so when every task is blocked and no socket is
readable, nothing is in flight); the scheduler's state, which nothing
notifies the test of, is polled (bounded too).
"""

from __future__ import annotations

import gc
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from typing import Any

import procs
import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

import trioq
from trioq import streams

WAIT = 10.0  # seconds any one step may take (generous: CI boxes are slow)
SEED_WAIT = 60.0  # the 10,000-item pipeline as a whole (about 5 s on a dev box)
SETTLE = 5.0  # seconds a teardown may take to show on the scheduler (milliseconds here)
HELD = (5, 6)  # ``hold`` runs these items until they are cancelled


class Shared:
    """What tasks and the test share: named trio events, a log, call counts."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.events: defaultdict[str, trio.Event] = defaultdict(trio.Event)
        self.ran: list[str] = []
        self.calls: defaultdict[Any, int] = defaultdict(int)

    def event(self, name: str) -> trio.Event:
        return self.events[name]


SHARED = Shared()


@pytest.fixture(autouse=True)
def shared() -> None:
    """A fresh ``SHARED`` for every test (trio events belong to one run)."""
    SHARED.reset()


# -- task functions (module level: pickled by reference, they see SHARED) ----------------


async def inc(x: int) -> int:
    return x + 1


async def double(x: int) -> int:
    return 2 * x


class TaskFailure(Exception):
    """A picklable exception raised by a task."""


async def inc_but_fail_on_3_and_7(x: int) -> int:
    if x in (3, 7):
        raise TaskFailure(f"no {x}")
    return x + 1


async def hold(x: int) -> int:
    """Items in HELD run until cancelled (and log it); the others pass."""
    if x not in HELD:
        return x
    SHARED.event(f"hold-{x}:started").set()
    try:
        await trio.sleep_forever()
    except trio.Cancelled:
        SHARED.ran.append(f"hold-{x}:cancelled")
        SHARED.event(f"hold-{x}:cancelled").set()
        raise
    raise AssertionError("unreachable")


async def flaky(x: int) -> int:
    """Fails the first time it is called for ``x``."""
    SHARED.calls[x] += 1
    if SHARED.calls[x] == 1:
        raise TaskFailure(f"{x} failed once")
    return x


async def log(name: str) -> str:
    SHARED.ran.append(name)
    return name


async def gated(name: str) -> str:
    """Log ``name``, say it started, wait for its "go"."""
    SHARED.ran.append(name)
    SHARED.event(f"{name}:started").set()
    await SHARED.event(f"{name}:go").wait()
    return name


# -- helpers -----------------------------------------------------------------------------


@asynccontextmanager
async def cluster_and_client(
    workers: int = 2, nthreads: int = 1
) -> AsyncIterator[tuple[trioq.Cluster, trioq.Client]]:
    async with (
        trioq.open_cluster(workers=workers, nthreads=nthreads) as cluster,
        trioq.connect(cluster.address, name="test") as client,
    ):
        yield cluster, client


def scheduler_tasks(cluster: trioq.Cluster) -> dict[str, Any]:
    """The scheduler's tasks and data futures, by key (white box)."""
    tasks: dict[str, Any] = cluster.scheduler.state.tasks._tasks
    return tasks


def pumps(client: trioq.Client) -> set[trio.lowlevel.Task]:
    """The tasks in the client's nursery: its reader, plus every stream stage's pump."""
    assert client._session.nursery is not None
    return set(client._session.nursery.child_tasks)


async def assert_clean(
    cluster: trioq.Cluster, client: trioq.Client, baseline: set[trio.lowlevel.Task]
) -> None:
    """Wait (bounded) until the scheduler holds no task and no pump is left, then say
    what is left if that never happens."""

    def clean() -> bool:
        return not scheduler_tasks(cluster) and pumps(client) == baseline

    with trio.move_on_after(SETTLE):
        await procs.poll_until(clean)
    left = {key: task.status for key, task in scheduler_tasks(cluster).items()}
    assert not left, f"{len(left)} tasks left on the scheduler: {left}"
    extra = sorted(task.name for task in pumps(client) - baseline)
    assert not extra, f"pump tasks left in the client's nursery: {extra}"


class Source:
    """A producer feeding ``items`` one at a time through an unbuffered memory
    channel: ``taken`` counts the items the pipeline has received from it."""

    def __init__(self, items: Iterable[Any]) -> None:
        self.items = list(items)
        self.taken = 0
        self.broken = False  # the pipeline closed its input before the end
        self._send, self.channel = trio.open_memory_channel[Any](0)

    async def run(self) -> None:
        try:
            async with self._send:
                for item in self.items:
                    await self._send.send(item)
                    self.taken += 1
        except trio.BrokenResourceError:
            self.broken = True

    def blocked(self) -> bool:
        """Is the producer waiting in ``send`` for the pipeline to take an item?"""
        return self._send.statistics().tasks_waiting_send == 1


class ListChannel(trio.abc.ReceiveChannel[Any]):
    """A receive channel that is not a memory channel: ``items``, then the end."""

    def __init__(self, items: Iterable[Any]) -> None:
        self._items = list(items)
        self._next = 0
        self.closed = False

    async def receive(self) -> Any:
        await trio.lowlevel.checkpoint()
        if self.closed:
            raise trio.ClosedResourceError
        if self._next == len(self._items):
            raise trio.EndOfChannel
        self._next += 1
        return self._items[self._next - 1]

    async def aclose(self) -> None:
        self.closed = True
        await trio.lowlevel.checkpoint()


def channel_of(items: Iterable[Any]) -> trio.MemoryReceiveChannel[Any]:
    """A closed memory channel already holding ``items``."""
    items = list(items)
    send, receive = trio.open_memory_channel[Any](max(len(items), 1))
    with send:
        for item in items:
            send.send_nowait(item)
    return receive


async def seed_pipeline(
    client: trioq.Client,
    source: trio.abc.ReceiveChannel[Any],
    buffers: tuple[int, int, int, int] = (16, 16, 16, 16),
) -> trio.abc.ReceiveChannel[Any]:
    """scatter -> map(inc) -> map(double) -> gather, one buffer size per stage."""
    data = await client.scatter(source, buffer=buffers[0])
    incremented = await client.map(inc, data, buffer=buffers[1])
    doubled = await client.map(double, incremented, buffer=buffers[2])
    return await client.gather(doubled, buffer=buffers[3])


def expected(items: Iterable[int]) -> list[int]:
    return [2 * (x + 1) for x in items]


async def collect(channel: trio.abc.ReceiveChannel[Any]) -> list[Any]:
    async with channel:
        return [item async for item in channel]


# -- results, in order ------------------------------------------------------------------------


async def test_the_seed_pipeline_gives_every_result_in_order_for_ten_thousand_items() -> None:
    count = 10_000
    async with cluster_and_client() as (cluster, client):
        baseline = pumps(client)
        with trio.fail_after(SEED_WAIT):
            async with trio.open_nursery() as nursery:
                source = Source(range(count))
                nursery.start_soon(source.run)
                results = await seed_pipeline(client, source.channel)
                got = await collect(results)
            assert got == expected(range(count))
        await assert_clean(cluster, client, baseline)


@given(
    buffers=st.tuples(*[st.integers(1, 8)] * 4),
    count=st.integers(0, 200),
)
async def test_any_buffer_sizes_give_exactly_the_results_in_order(
    buffers: tuple[int, int, int, int], count: int
) -> None:
    async with cluster_and_client() as (cluster, client):
        baseline = pumps(client)
        with trio.fail_after(WAIT):
            async with trio.open_nursery() as nursery:
                source = Source(range(count))
                nursery.start_soon(source.run)
                got = await collect(await seed_pipeline(client, source.channel, buffers))
            assert got == expected(range(count))
        await assert_clean(cluster, client, baseline)


@pytest.mark.parametrize("kind", ["memory", "foreign"])
async def test_the_end_of_the_input_ends_the_pipeline_with_every_result_delivered(
    kind: str,
) -> None:
    items = range(50)
    source = channel_of(items) if kind == "memory" else ListChannel(items)
    async with cluster_and_client() as (cluster, client):
        baseline = pumps(client)
        with trio.fail_after(WAIT):
            results = await seed_pipeline(client, source, (4, 4, 4, 4))
            got = [value async for value in results]  # the loop ends by itself
            assert got == expected(items)
            with pytest.raises(trio.EndOfChannel):
                await results.receive()  # and stays ended
            await results.aclose()
        await assert_clean(cluster, client, baseline)
    if isinstance(source, ListChannel):
        assert source.closed  # the scatter stage closed the input it read to its end


async def test_map_over_plain_values_needs_no_scatter() -> None:
    async with cluster_and_client() as (cluster, client):
        baseline = pumps(client)
        with trio.fail_after(WAIT):
            futures = await client.map(inc, channel_of(range(20)), buffer=3)
            assert await collect(await client.gather(futures, buffer=3)) == list(range(1, 21))
        await assert_clean(cluster, client, baseline)


async def test_a_task_error_comes_out_of_gather_at_its_place_and_later_items_follow() -> None:
    async with cluster_and_client() as (cluster, client):
        baseline = pumps(client)
        with trio.fail_after(WAIT):
            data = await client.scatter(channel_of(range(10)), buffer=2)
            # The error travels on: a task given a failed future fails the same way.
            incremented = await client.map(inc_but_fail_on_3_and_7, data, buffer=2)
            results = await client.gather(await client.map(double, incremented), buffer=2)
            seen: list[Any] = []
            async with results:
                while True:
                    try:
                        seen.append(await results.receive())
                    except TaskFailure as exc:
                        seen.append(f"error: {exc}")
                    except trio.EndOfChannel:
                        break
            assert seen == [2, 4, 6, "error: no 3", 10, 12, 14, "error: no 7", 18, 20]
        await assert_clean(cluster, client, baseline)


async def test_map_passes_retries_to_every_task() -> None:
    async with cluster_and_client() as (cluster, client):
        baseline = pumps(client)
        with trio.fail_after(WAIT):
            futures = await client.map(flaky, channel_of(range(6)), retries=1, buffer=2)
            assert await collect(await client.gather(futures)) == list(range(6))
            assert dict(SHARED.calls) == {x: 2 for x in range(6)}  # each failed once, ran again
        await assert_clean(cluster, client, baseline)


async def test_map_passes_priority_to_every_task() -> None:
    async with cluster_and_client(workers=2) as (_, client):
        with trio.fail_after(WAIT):
            blockers = []
            for name in ("b0", "b1"):  # one on each single-slot worker
                blockers.append(await client.submit(gated, name))
                await SHARED.event(f"{name}:started").wait()
            low = await client.submit(log, "low")  # priority 0, queued first
            futures = await client.map(log, channel_of(["m0", "m1", "m2"]), priority=5)
            mapped = [future async for future in futures]  # every task is submitted
            await client.status()  # a round trip: all of them are queued
            SHARED.event("b0:go").set()  # one worker takes the queue, in priority order
            assert await low == "low"
            SHARED.event("b1:go").set()
            assert await client.gather(mapped + blockers) == ["m0", "m1", "m2", "b0", "b1"]
    assert SHARED.ran == ["b0", "b1", "m0", "m1", "m2", "low"]


# -- back pressure ----------------------------------------------------------------------------


async def test_a_stalled_consumer_holds_every_stage_to_its_buffer_and_blocks_the_producer() -> None:
    count, consumed_first = 500, 5
    buffers = (3, 1, 2, 4)  # scatter, map(inc), map(double), gather
    scatter_b, inc_b, double_b, gather_b = buffers
    # scatter and each map: its buffer, plus the item it holds while blocked in send.
    # gather: its buffer of results plus the one it holds, and its read-ahead window
    # of futures plus the one its reader holds.
    bound = (scatter_b + 1) + (inc_b + 1) + (double_b + 1) + 2 * (gather_b + 1)
    async with cluster_and_client() as (cluster, client):
        with trio.fail_after(WAIT):
            async with trio.open_nursery() as nursery:
                source = Source(range(count))
                nursery.start_soon(source.run)
                results = await seed_pipeline(client, source.channel, buffers)
                async with results:
                    got = [await results.receive() for _ in range(consumed_first)]
                    # The consumer stalls here: let everything else run until it stops.
                    await trio.testing.wait_all_tasks_blocked()
                    in_flight = source.taken - len(got)
                    assert sum(buffers) <= in_flight <= bound
                    assert source.blocked() and source.taken < count  # the producer waits
                    alive = len(scheduler_tasks(cluster))
                    assert 0 < alive <= 3 * bound  # a data future and two tasks per item
                    gc.collect()
                    assert len(client._session.futures) <= bound
                    await trio.testing.wait_all_tasks_blocked()
                    assert source.taken - len(got) == in_flight  # still nothing moves
                    got += [value async for value in results]
    assert got == expected(range(count))


# -- teardown ---------------------------------------------------------------------------------


async def hold_pipeline(
    client: trioq.Client, source: trio.abc.ReceiveChannel[Any]
) -> trio.abc.ReceiveChannel[Any]:
    """scatter -> map(hold) -> map(double) -> gather: the HELD items never end."""
    data = await client.scatter(source, buffer=4)
    held = await client.map(hold, data, buffer=4)
    return await client.gather(await client.map(double, held, buffer=4), buffer=4)


@asynccontextmanager
async def cluster_for_holding() -> AsyncIterator[tuple[trioq.Cluster, trioq.Client]]:
    """Two slots on each worker: the HELD tasks take two, the other items the rest."""
    async with cluster_and_client(workers=2, nthreads=2) as (cluster, client):
        yield cluster, client


async def wait_until_held_tasks_run() -> None:
    for x in HELD:
        await SHARED.event(f"hold-{x}:started").wait()


async def wait_until_held_tasks_are_cancelled() -> None:
    for x in HELD:
        await SHARED.event(f"hold-{x}:cancelled").wait()


async def stalled_seed_pipeline(
    client: trioq.Client, nursery: trio.Nursery, count: int = 1000
) -> tuple[Source, trio.abc.ReceiveChannel[Any], list[int]]:
    """The seed pipeline with a few results taken and every stage blocked in ``send``."""
    source = Source(range(count))
    nursery.start_soon(source.run)
    results = await seed_pipeline(client, source.channel, (4, 4, 4, 4))
    got = [await results.receive() for _ in range(5)]
    await trio.testing.wait_all_tasks_blocked()
    assert source.blocked()
    return source, results, got


async def test_cancelling_the_surrounding_scope_mid_stream_leaves_nothing_behind() -> None:
    async with cluster_and_client() as (cluster, client):
        baseline = pumps(client)
        with trio.fail_after(WAIT):
            with trio.CancelScope() as scope:
                async with trio.open_nursery() as nursery:
                    _, results, got = await stalled_seed_pipeline(client, nursery)
                    async with results:
                        assert scheduler_tasks(cluster)  # tasks and data futures in flight
                        scope.cancel()
                        await results.receive()  # raises Cancelled
            assert scope.cancelled_caught
            assert got == expected(range(5))
        await assert_clean(cluster, client, baseline)


async def test_closing_the_results_early_tears_the_pipeline_down_up_to_the_source() -> None:
    async with cluster_and_client() as (cluster, client):
        baseline = pumps(client)
        with trio.fail_after(WAIT):
            async with trio.open_nursery() as nursery:
                source, results, got = await stalled_seed_pipeline(client, nursery)
                await results.aclose()
            assert got == expected(range(5))
            assert source.broken  # the producer's channel was closed: it stopped early
            assert source.taken < len(source.items)
        await assert_clean(cluster, client, baseline)


@pytest.mark.parametrize("how", ["cancel-scope", "close-results"])
async def test_teardown_cancels_the_tasks_still_running_on_the_workers(how: str) -> None:
    async with cluster_for_holding() as (cluster, client):
        baseline = pumps(client)
        with trio.fail_after(WAIT):
            with trio.CancelScope() as scope:
                async with trio.open_nursery() as nursery:
                    source = Source(range(1000))
                    nursery.start_soon(source.run)
                    results = await hold_pipeline(client, source.channel)
                    async with results:
                        got = [await results.receive() for _ in range(HELD[0])]
                        await wait_until_held_tasks_run()  # gather waits for the first
                        if how == "cancel-scope":
                            scope.cancel()
                            await results.receive()  # raises Cancelled
                    scope.cancel()  # results closed: now stop the producer too
            assert scope.cancelled_caught
            assert got == [2 * x for x in range(HELD[0])]
        with trio.move_on_after(SETTLE):
            await wait_until_held_tasks_are_cancelled()
        assert sorted(SHARED.ran) == [f"hold-{x}:cancelled" for x in HELD], (
            "the tasks the pipeline was waiting for were never cancelled"
        )
        await assert_clean(cluster, client, baseline)


async def test_closing_a_channel_of_futures_early_releases_the_futures_buffered_in_it() -> None:
    async with cluster_and_client() as (cluster, client):
        baseline = pumps(client)
        with trio.fail_after(WAIT):
            async with trio.open_nursery() as nursery:
                source = Source(range(100))
                nursery.start_soon(source.run)
                futures = await client.map(inc, await client.scatter(source.channel), buffer=4)
                first = await futures.receive()  # the consumer owns this one
                assert await first == 1
                await first.release()
                await trio.testing.wait_all_tasks_blocked()  # the buffer fills up
                await futures.aclose()
            assert source.broken
        await assert_clean(cluster, client, baseline)


async def test_gather_of_a_non_future_raises_type_error_at_its_place() -> None:
    async with cluster_and_client() as (cluster, client):
        baseline = pumps(client)
        with trio.fail_after(WAIT):
            before = await client.submit(inc, 1)
            results = await client.gather(channel_of([before, 42]))
            async with results:
                assert await results.receive() == 2
                with pytest.raises(TypeError, match="gather expects futures, got int"):
                    await results.receive()
            after = await client.submit(inc, 2)
            assert await after == 3  # the client is still usable
            await after.release()
        await assert_clean(cluster, client, baseline)


# -- multiplex -------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 3])
async def test_multiplex_gives_every_branch_every_item(n: int) -> None:
    items = list(range(40))
    with trio.fail_after(WAIT):
        async with streams.multiplex(n, channel_of(items), buffer=2) as branches:
            got: list[list[int]] = [[] for _ in branches]
            async with trio.open_nursery() as nursery:
                for branch, into in zip(branches, got, strict=True):

                    async def drain(branch: Any = branch, into: list[int] = into) -> None:
                        into.extend(await collect(branch))

                    nursery.start_soon(drain)
    assert got == [items] * n


async def test_the_slowest_branch_of_a_multiplex_sets_the_pace() -> None:
    buffer = 3
    source = Source(range(100))
    fast: list[int] = []
    with trio.fail_after(WAIT):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(source.run)
            async with streams.multiplex(2, source.channel, buffer=buffer) as (quick, slow):

                async def read_quickly() -> None:
                    async with quick:
                        async for item in quick:
                            fast.append(item)

                nursery.start_soon(read_quickly)
                await trio.testing.wait_all_tasks_blocked()
                # The slow branch's buffer is full and the tee waits to give it one
                # more item, which the quick branch has already had.
                assert len(fast) == source.taken == buffer + 1
                assert source.blocked()
                slow_got = await collect(slow)
    assert fast == slow_got == list(range(100))


async def test_a_closed_branch_of_a_multiplex_is_dropped_and_the_others_go_on() -> None:
    source = Source(range(100))
    with trio.fail_after(WAIT):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(source.run)
            async with streams.multiplex(3, source.channel, buffer=2) as (first, second, third):
                # Nobody reads the others yet: their buffers (2) hold the tee back.
                got = [await second.receive() for _ in range(2)]
                await second.aclose()
                async with trio.open_nursery() as readers:

                    async def drain(branch: Any, into: list[int]) -> None:
                        into.extend(await collect(branch))

                    firsts: list[int] = []
                    thirds: list[int] = []
                    readers.start_soon(drain, first, firsts)
                    readers.start_soon(drain, third, thirds)
    assert got == [0, 1]
    assert firsts == thirds == list(range(100))
    assert not source.broken


async def test_closing_every_branch_of_a_multiplex_closes_its_source() -> None:
    source = Source(range(100))
    with trio.fail_after(WAIT):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(source.run)
            async with streams.multiplex(2, source.channel, buffer=2) as (first, second):
                await first.receive()
                await first.aclose()
                await second.receive()
                await second.aclose()
                await trio.testing.wait_all_tasks_blocked()
                assert source.broken  # before the multiplex block is even left


async def test_futures_shared_through_multiplex_are_released_once_both_branches_are_done() -> None:
    items = range(5)
    async with cluster_and_client() as (cluster, client):
        baseline = pumps(client)
        with trio.fail_after(WAIT):
            data = await client.scatter(channel_of(items), buffer=8)
            async with streams.multiplex(2, data, buffer=8) as (first, second):
                incremented = await client.gather(await client.map(inc, first))
                assert await collect(incremented) == [x + 1 for x in items]
                await client.status()  # a round trip: the first branch's releases are applied
                # Its tasks are gone; the data futures stay: the second branch holds them.
                assert {task.status for task in scheduler_tasks(cluster).values()} == {"finished"}
                assert len(scheduler_tasks(cluster)) == len(items)
                assert all(key.startswith("data-") for key in scheduler_tasks(cluster))
                doubled = await client.gather(await client.map(double, second))
                assert await collect(doubled) == [2 * x for x in items]
        await assert_clean(cluster, client, baseline)


async def test_a_branch_closed_with_shared_futures_in_its_buffer_gives_up_its_shares() -> None:
    items = range(6)
    async with cluster_and_client() as (cluster, client):
        baseline = pumps(client)
        with trio.fail_after(WAIT):
            data = await client.scatter(channel_of(items), buffer=8)
            async with streams.multiplex(2, data, buffer=8) as (first, second):
                await trio.testing.wait_all_tasks_blocked()  # both buffers hold every future
                await second.aclose()
                incremented = await client.gather(await client.map(inc, first))
                assert await collect(incremented) == [x + 1 for x in items]
        await assert_clean(cluster, client, baseline)


# -- merge ------------------------------------------------------------------------------------


async def test_merge_yields_every_item_of_every_source_once_and_ends_when_all_end() -> None:
    sources = [Source(range(0, 30)), Source(range(100, 110)), Source([]), Source([-1])]
    with trio.fail_after(WAIT):
        async with trio.open_nursery() as nursery:
            for source in sources:
                nursery.start_soon(source.run)
            async with streams.merge(*(s.channel for s in sources), buffer=2) as merged:
                got = [item async for item in merged]  # ends: every source ended
    assert sorted(got) == sorted(item for s in sources for item in s.items)
    for source in sources:  # each source's own order is kept
        assert [item for item in got if item in source.items] == source.items


async def test_a_stalled_merge_consumer_holds_the_sources_to_the_buffer() -> None:
    buffer = 3
    sources = [Source(range(100)), Source(range(100, 200))]
    with trio.fail_after(WAIT):
        async with trio.open_nursery() as nursery:
            for source in sources:
                nursery.start_soon(source.run)
            async with streams.merge(*(s.channel for s in sources), buffer=buffer) as merged:
                first = await merged.receive()
                await trio.testing.wait_all_tasks_blocked()
                taken = sum(source.taken for source in sources)
                # The buffer, plus one item in hand for each source's forwarder.
                assert buffer <= taken - 1 <= buffer + len(sources)
                assert all(source.blocked() for source in sources)
                got = [first] + [item async for item in merged]
    assert sorted(got) == list(range(200))


async def test_leaving_a_merge_early_closes_every_source() -> None:
    sources = [Source(range(100)), Source(range(100))]
    with trio.fail_after(WAIT):
        async with trio.open_nursery() as nursery:
            for source in sources:
                nursery.start_soon(source.run)
            async with streams.merge(*(s.channel for s in sources), buffer=2) as merged:
                await merged.receive()
    assert all(source.broken for source in sources)


# -- refused arguments ------------------------------------------------------------------------


async def open_scatter(client: trioq.Client, buffer: int) -> Any:
    return await client.scatter(channel_of([]), buffer=buffer)


async def open_map(client: trioq.Client, buffer: int) -> Any:
    return await client.map(inc, channel_of([]), buffer=buffer)


async def open_gather(client: trioq.Client, buffer: int) -> Any:
    return await client.gather(channel_of([]), buffer=buffer)


async def open_multiplex(client: trioq.Client, buffer: int) -> Any:
    async with streams.multiplex(2, channel_of([]), buffer=buffer):
        pass


async def open_merge(client: trioq.Client, buffer: int) -> Any:
    async with streams.merge(channel_of([]), buffer=buffer):
        pass


STAGES: list[Callable[[trioq.Client, int], Any]] = [
    open_scatter,
    open_map,
    open_gather,
    open_multiplex,
    open_merge,
]


@pytest.mark.parametrize("buffer", [0, -1])
@pytest.mark.parametrize("stage", STAGES, ids=lambda stage: stage.__name__[5:])
async def test_a_buffer_below_one_is_a_value_error_and_starts_nothing(
    stage: Callable[[trioq.Client, int], Any], buffer: int
) -> None:
    async with cluster_and_client(workers=0) as (_, client):
        baseline = pumps(client)
        with pytest.raises(ValueError, match=rf"buffer must be a positive int, got {buffer}$"):
            await stage(client, buffer)
        assert pumps(client) == baseline


async def test_a_source_that_is_not_a_receive_channel_is_a_type_error() -> None:
    async with cluster_and_client(workers=0) as (_, client):
        baseline = pumps(client)
        message = "expected a trio.abc.ReceiveChannel, got list"
        with pytest.raises(TypeError, match=message):
            await streams.scatter(client, [1, 2])  # type: ignore[arg-type]
        with pytest.raises(TypeError, match=message):
            await streams.map(client, inc, [1, 2])  # type: ignore[arg-type]
        with pytest.raises(TypeError, match=message):
            await streams.gather(client, [1, 2])  # type: ignore[arg-type]
        with pytest.raises(TypeError, match=message):
            async with streams.multiplex(2, [1, 2]):  # type: ignore[arg-type]
                pass
        with pytest.raises(TypeError, match=message):
            async with streams.merge(channel_of([]), [1, 2]):  # type: ignore[arg-type]
                pass
        assert pumps(client) == baseline


async def test_map_refuses_a_non_callable_and_multiplex_a_count_below_one() -> None:
    async with cluster_and_client(workers=0) as (_, client):
        with pytest.raises(TypeError, match="fn must be callable, got int"):
            await client.map(42, channel_of([]))  # type: ignore[call-overload]
    with pytest.raises(ValueError, match="n must be a positive int, got 0"):
        async with streams.multiplex(0, channel_of([])):
            pass


async def test_closing_a_merge_inside_its_block_ends_the_merge_not_the_block() -> None:
    ran_on = False
    send, source = trio.open_memory_channel[int](1)
    with trio.fail_after(WAIT):
        async with streams.merge(source, channel_of([1])) as merged:
            await merged.aclose()
            ran_on = True  # the caller's own code is not cancelled by it
            with pytest.raises(trio.BrokenResourceError):
                for _ in range(10):  # the forwarder closes its source as it goes
                    await send.send(0)
    assert ran_on


@pytest.mark.parametrize("stage", ["scatter", "map", "gather"])
async def test_a_stage_whose_start_is_cancelled_leaves_no_pump_behind(stage: str) -> None:
    async with cluster_and_client() as (_, client):
        baseline = pumps(client)
        send, source = trio.open_memory_channel[Any](1)
        with trio.CancelScope() as scope:
            scope.cancel()
            if stage == "scatter":
                await client.scatter(source)
            elif stage == "map":
                await client.map(inc, source)
            else:
                await client.gather(source)
        assert scope.cancelled_caught
        assert pumps(client) == baseline
        send.send_nowait(1)  # nobody took the source: it is still open
