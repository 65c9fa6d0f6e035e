"""The queue's fast paths: schedule points amortized over local calls, read-ahead top-ups.

A put with credit and a get of a prefetched item are served from local
state.  Each is still a cancel point, but it yields to other tasks only
every ``SCHEDULE_EVERY`` such calls (batches count their items).  Whether a
call yielded is observed with an instrument that counts the steps of the
calling task: a step ends exactly when the task yields to trio's scheduler.

A get that leaves ``prefetch // 2`` items or fewer buffered asks the
scheduler, without waiting there, to top the buffer up.  These tests watch
the scheduler's own count of queued items (everything runs in this trio
run, so ``wait_all_tasks_blocked`` means every frame has been handled) and
make the in-flight cases deterministic by acting in the same task right
after the get that sent the top-up, with no checkpoint between.

Run the file with ``TRIOQ_PURE_PYTHON=1`` too: the cluster uses the core
selected at import.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import trio
import trio.testing
from clusters import connect, queue_status

import trioq
from trioq import SCHEDULE_EVERY

TIMEOUT = 10  # whole-test bound
INSTANT = 2  # bound for something that must not wait at all


class Switches(trio.abc.Instrument):
    """Counts the times one task yields to trio's scheduler (so others can run)."""

    def __init__(self, task: trio.lowlevel.Task) -> None:
        self.task = task
        self.count = 0

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        if task is self.task:
            self.count += 1


@contextmanager
def counting_switches() -> Iterator[Switches]:
    """Count the switches of the current task inside the block."""
    switches = Switches(trio.lowlevel.current_task())
    trio.lowlevel.add_instrument(switches)
    try:
        yield switches
    finally:
        trio.lowlevel.remove_instrument(switches)


class Ticker:
    """A sibling task that counts its turns: it runs whenever the others let it."""

    def __init__(self) -> None:
        self.ticks = 0

    async def run(self) -> None:
        while True:
            self.ticks += 1
            await trio.lowlevel.checkpoint()


def longest_run_without_a_switch(calls_at_switch: list[int], calls: int) -> int:
    """The most calls in a row that did not yield, given the calls after which one did."""
    bounds = [0, *calls_at_switch, calls]
    return max(b - a for a, b in itertools.pairwise(bounds))


# -- cancel points ------------------------------------------------------------------------


async def test_a_put_with_credit_in_a_cancelled_scope_raises_cancelled_and_puts_nothing(
    cluster: Any,
) -> None:
    n = 2 * SCHEDULE_EVERY  # every phase of the amortization counter
    with trio.fail_after(TIMEOUT):
        async with connect(cluster) as client:
            q = client.queue("cancelled-puts")
            await q.qsize()  # its answer follows the open's: the queue is known unbounded
            for i in range(n):
                await q.put(i)
                with trio.CancelScope() as scope:
                    scope.cancel()
                    await q.put("cancelled")
                assert scope.cancelled_caught, f"put after {i + 1} puts was not a cancel point"
            assert await q.qsize() == n
            got = [await q.get_nowait() for _ in range(n)]
            with pytest.raises(trio.WouldBlock):
                await q.get_nowait()
    assert got == list(range(n))


async def test_a_get_of_a_prefetched_item_in_a_cancelled_scope_raises_cancelled_and_takes_nothing(
    cluster: Any,
) -> None:
    n = 2 * SCHEDULE_EVERY
    with trio.fail_after(TIMEOUT):
        async with connect(cluster) as producer, connect(cluster) as consumer:
            await producer.queue("cancelled-gets").put_batch(range(n))
            await producer.queue("cancelled-gets").qsize()
            q = consumer.queue("cancelled-gets", prefetch=n)
            got = [await q.get()]  # brings all n: the others are prefetched here
            assert queue_status(cluster, "cancelled-gets")["size"] == 0
            while len(got) < n:
                with trio.CancelScope() as scope:
                    scope.cancel()
                    await q.get()
                assert scope.cancelled_caught, f"get after {len(got)} gets was not a cancel point"
                got.append(await q.get())
            assert await q.qsize() == 0
    assert got == list(range(n))


# -- switches amortized over local calls --------------------------------------------------


async def switches_during(call: Callable[[int], Awaitable[None]], n: int) -> tuple[list[int], int]:
    """Await ``call(0)`` .. ``call(n - 1)`` beside a sibling task that ticks at
    each of its turns: the call counts (1-based) at which the caller switched
    tasks, and the sibling's ticks meanwhile."""
    ticker = Ticker()
    calls_at_switch: list[int] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(ticker.run)
        await trio.lowlevel.checkpoint()
        ticks_before = ticker.ticks
        with counting_switches() as switches:
            for i in range(n):
                before = switches.count
                await call(i)
                if switches.count != before:
                    calls_at_switch.append(i + 1)
        ticks = ticker.ticks - ticks_before
        nursery.cancel_scope.cancel()
    return calls_at_switch, ticks


async def test_puts_with_credit_let_other_tasks_run_at_least_every_schedule_every_calls(
    cluster: Any,
) -> None:
    n = 8 * SCHEDULE_EVERY
    with trio.fail_after(TIMEOUT):
        async with connect(cluster) as client:
            q = client.queue("put-switches")
            await q.qsize()  # known unbounded: every put below has credit
            calls_at_switch, ticks = await switches_during(q.put, n)
            assert await q.qsize() == n
    assert longest_run_without_a_switch(calls_at_switch, n) <= SCHEDULE_EVERY
    assert len(calls_at_switch) <= n // SCHEDULE_EVERY + 1, "puts with credit switched each time"
    assert ticks >= n // SCHEDULE_EVERY - 1, "the sibling task did not get its turns"


async def test_gets_of_prefetched_items_let_other_tasks_run_at_least_every_schedule_every_calls(
    cluster: Any,
) -> None:
    n = 8 * SCHEDULE_EVERY
    with trio.fail_after(TIMEOUT):
        async with connect(cluster) as producer, connect(cluster) as consumer:
            await producer.queue("get-switches").put_batch(range(n + 1))
            await producer.queue("get-switches").qsize()
            q = consumer.queue("get-switches", prefetch=n + 1)
            got = [await q.get()]  # brings all of them: the next n gets are local
            assert queue_status(cluster, "get-switches")["size"] == 0

            async def get(_: int) -> None:
                got.append(await q.get())

            calls_at_switch, ticks = await switches_during(get, n)
    assert got == list(range(n + 1))
    assert longest_run_without_a_switch(calls_at_switch, n) <= SCHEDULE_EVERY
    assert len(calls_at_switch) <= n // SCHEDULE_EVERY + 1, "local gets switched each time"
    assert ticks >= n // SCHEDULE_EVERY - 1, "the sibling task did not get its turns"


async def test_a_put_batch_or_get_batch_of_schedule_every_items_switches_on_that_call(
    cluster: Any,
) -> None:
    rounds = 3
    with trio.fail_after(TIMEOUT):
        async with connect(cluster) as producer, connect(cluster) as consumer:
            qp = producer.queue("batch-switches")
            await qp.qsize()  # known unbounded: every batch below has credit
            qc = consumer.queue("batch-switches", prefetch=rounds * SCHEDULE_EVERY + 1)
            with counting_switches() as switches:
                for _ in range(rounds):
                    before = switches.count
                    await qp.put_batch(range(SCHEDULE_EVERY))
                    assert switches.count > before, "a put_batch of SCHEDULE_EVERY did not switch"
            await qp.put(-1)
            assert await qp.qsize() == rounds * SCHEDULE_EVERY + 1
            got = [await qc.get()]  # brings all of them: the batches below are local
            assert queue_status(cluster, "batch-switches")["size"] == 0
            with counting_switches() as switches:
                for _ in range(rounds):
                    before = switches.count
                    got += await qc.get_batch(SCHEDULE_EVERY)
                    assert switches.count > before, "a get_batch of SCHEDULE_EVERY did not switch"
    assert got == [*range(SCHEDULE_EVERY)] * rounds + [-1]


# -- read-ahead top-ups -------------------------------------------------------------------


async def test_a_get_that_leaves_half_the_prefetch_or_less_tops_the_buffer_up(
    cluster: Any,
) -> None:
    with trio.fail_after(TIMEOUT):
        async with connect(cluster) as producer, connect(cluster) as consumer:
            await producer.queue("top-up").put_batch(range(20))
            await producer.queue("top-up").qsize()
            q = consumer.queue("top-up", prefetch=8)
            got = [await q.get()]  # asks for 8, keeps 7
            got += [await q.get(), await q.get()]  # 5 left: more than half
            await trio.testing.wait_all_tasks_blocked()
            assert queue_status(cluster, "top-up")["size"] == 12, "topped up too early"
            got.append(await q.get())  # 4 left: half of prefetch
            await trio.testing.wait_all_tasks_blocked()  # no get is running now
            assert queue_status(cluster, "top-up")["size"] == 8, "no top-up of 4 items"
            assert len(q._link.buffer) == 8
            got += [await q.get() for _ in range(16)]
    assert got == list(range(20))


async def test_a_top_up_never_waits_and_items_prefetched_elsewhere_are_recalled_for_a_getter(
    cluster: Any,
) -> None:
    with trio.fail_after(TIMEOUT):
        async with (
            connect(cluster) as producer,
            connect(cluster) as reader,
            connect(cluster) as waiter,
        ):
            qp = producer.queue("no-wait")
            await qp.put_batch(range(4))
            await qp.qsize()
            qr = reader.queue("no-wait", prefetch=4)
            assert [await qr.get(), await qr.get()] == [0, 1]  # 2 left: a top-up, queue empty
            qw = waiter.queue("no-wait", prefetch=4)
            got: list[Any] = []

            async with trio.open_nursery() as nursery:

                async def wait_for_one() -> None:
                    got.append(await qw.get())

                nursery.start_soon(wait_for_one)
                await trio.testing.wait_all_tasks_blocked()
            # The waiting get had the reader's idle items recalled; no top-up waited.
            assert got == [2]
            status = queue_status(cluster, "no-wait")
            assert (status["size"], status["getters"]) == (0, 0), "the top-up is waiting"
            assert len(qr._link.buffer) == 0
            await qp.put("late")
            await qp.qsize()
            assert queue_status(cluster, "no-wait")["size"] == 1, "a top-up took it"
            assert await qw.get() == 3


async def test_prefetch_one_never_tops_up(cluster: Any) -> None:
    with trio.fail_after(TIMEOUT):
        async with connect(cluster) as producer, connect(cluster) as consumer:
            await producer.queue("strict").put_batch(range(5))
            await producer.queue("strict").qsize()
            q = consumer.queue("strict", prefetch=1)
            for expected in range(5):
                assert await q.get() == expected
                await trio.testing.wait_all_tasks_blocked()
                assert queue_status(cluster, "strict")["size"] == 4 - expected
                assert not q._link.buffer


async def test_get_nowait_during_a_top_up_returns_an_item_the_top_up_brings(
    cluster: Any,
) -> None:
    with trio.fail_after(TIMEOUT):
        async with connect(cluster) as producer, connect(cluster) as consumer:
            await producer.queue("nowait-top-up").put_batch(range(6))
            await producer.queue("nowait-top-up").qsize()
            q = consumer.queue("nowait-top-up", prefetch=4)
            consumer._calls_since_switch = 0  # no get below reaches its task switch
            got = [await q.get()]  # asks for 4, keeps 3
            got.append(await q.get())  # 2 left: a top-up asks for the other 2
            got += [await q.get(), await q.get()]  # local: no checkpoint lets it arrive
            assert q._link.top_up is not None, "the top-up is no longer in flight"
            with trio.fail_after(INSTANT):
                got.append(await q.get_nowait())
            got.append(await q.get_nowait())
            with pytest.raises(trio.WouldBlock):
                await q.get_nowait()
            assert await q.qsize() == 0
    assert got == list(range(6))


async def test_closing_the_last_receive_endpoint_during_a_top_up_returns_every_item_in_order(
    cluster: Any,
) -> None:
    # docs/queues.rst: leased items go back to the head of the queue "in their
    # original order" when the client's last receive endpoint on it closes,
    # including the ones a top-up still on its way brings.
    with trio.fail_after(TIMEOUT):
        async with (
            connect(cluster) as producer,
            connect(cluster) as closer,
            connect(cluster) as other,
        ):
            await producer.queue("close-top-up").put_batch(range(6))
            await producer.queue("close-top-up").qsize()
            q = closer.queue("close-top-up", prefetch=4)
            closer._calls_since_switch = 0  # no get below reaches its task switch
            receiver = q.open_receive_channel()
            await q.qsize()  # the open is applied
            got = [await receiver.receive()]  # asks for 4, keeps 3
            got.append(await receiver.receive())  # 2 left: a top-up asks for the other 2
            assert got == [0, 1]
            assert q._link.top_up is not None
            receiver.close()  # at once: the top-up is still on its way
            await trio.testing.wait_all_tasks_blocked()
            status = queue_status(cluster, "close-top-up")
            assert (status["size"], status["leased"]) == (4, 0), "leased items were kept"
            assert not q._link.buffer
            qo = other.queue("close-top-up")
            rest = [await qo.get_nowait() for _ in range(4)]
            with pytest.raises(trio.WouldBlock):
                await qo.get_nowait()
    assert rest == [2, 3, 4, 5]


async def get_while_closing(q: trioq.Queue, handed_out: list[tuple[str, int]]) -> None:
    with contextlib.suppress(trio.ClosedResourceError):
        handed_out.append((q.name, await q.get()))


async def close_soon(client: trioq.Client) -> None:
    await trio.lowlevel.checkpoint()
    await client.aclose()


async def test_a_get_at_its_switch_while_the_client_closes_takes_nothing_it_cannot_acknowledge(
    cluster: Any,
) -> None:
    # The get's task switch lets another task close the client.  An item taken
    # after that could never be acknowledged, so the scheduler would hand it to
    # another consumer too: the get must raise instead.  trio runs each batch of
    # tasks in a random order, so the race is tried many times.
    handed_out: list[tuple[str, int]] = []
    redelivered: list[tuple[str, int]] = []
    with trio.fail_after(TIMEOUT):
        for trial in range(20):
            name = f"close-at-switch-{trial}"
            async with connect(cluster) as producer:
                await producer.queue(name).put_batch(range(8))
            async with connect(cluster) as consumer:
                q = consumer.queue(name, prefetch=8)
                assert await q.get() == 0  # the other seven are prefetched
                consumer._calls_since_switch = SCHEDULE_EVERY - 1  # the next get switches
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(get_while_closing, q, handed_out)
                    nursery.start_soon(close_soon, consumer)
            async with connect(cluster) as other:
                oq = other.queue(name)
                while await oq.qsize():
                    redelivered.extend((name, item) for item in await oq.get_batch(8))
    assert not set(handed_out) & set(redelivered), "an item was handed out twice"
