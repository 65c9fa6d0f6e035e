"""``trioq.SimpleQueue``: Fiber's queue with pull and push dispatch.

Two halves:

* Sans-IO, through ``SchedulerState`` (``validate()`` after every step):
  ``QueueSubscribe`` makes a connection a push subscriber; queued items are
  dealt round-robin to subscribers with room in their ``window`` as
  ``Pushed`` notices, leased to them; an ``Ack`` or ``QueueReturn`` frees a
  slot; ``QueueUnsubscribe`` and a disconnect stop the pushes, and a
  disconnect puts what was pushed and not acknowledged back at the head.
* End to end, with ``trioq.open_cluster()`` and several clients in this
  process: pull mode balances by demand, push mode alternates, a push
  consumer that closes gives back what it held, and no cancelled ``get``
  loses or duplicates an item.  Every wait is bounded by ``trio.fail_after``;
  pacing is by events and round trips, never by sleeping.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st
from state_answers import fail_of, reply_to

import trioq
from trioq._scheduler.state import Notice, SchedulerState
from trioq._wire.messages import (
    Ack,
    Items,
    Message,
    Ok,
    Pushed,
    PutDone,
    QueueDelete,
    QueueGet,
    QueueInfo,
    QueueOpen,
    QueuePut,
    QueueReturn,
    QueueSubscribe,
    QueueUnsubscribe,
)
from trioq._wire.serialize import Reference, Serializer
from trioq._wire.task_messages import Submit

TIMEOUT = 10  # whole-test bound (end to end)
INSTANT = 2  # bound for something that must not wait at all

Out = list[Any]  # Reply | Fail | Notice


# == sans-IO ====================================================================================


class Harness:
    """A ``SchedulerState`` with fresh request ids and ``validate()`` after every step."""

    def __init__(self, *conns: int) -> None:
        self.state = SchedulerState()
        self._rids = itertools.count(1)
        for conn in conns:
            self.state.connect(conn, f"client-{conn}", f"127.0.0.1:{1000 + conn}")
        self.state.validate()

    def send(self, conn: int, message: Message) -> tuple[int, Out]:
        rid = next(self._rids)
        out = self.state.handle(conn, rid, message)
        self.state.validate()
        return rid, out

    def ok(self, conn: int, message: Message) -> tuple[Message, Out]:
        """Apply a request that must be answered with a reply; (reply, instructions)."""
        rid, out = self.send(conn, message)
        return reply_to(out, conn, rid), out

    def oneway(self, conn: int, message: Message) -> Out:
        out = self.state.handle(conn, 0, message)
        self.state.validate()
        return out

    def disconnect(self, conn: int) -> Out:
        out = self.state.disconnect(conn)
        self.state.validate()
        return out

    def open(self, conn: int, name: str = "q") -> None:
        assert isinstance(self.ok(conn, QueueOpen(name, 0))[0], QueueInfo)

    def subscribe(self, conn: int, window: int, name: str = "q") -> Out:
        reply, out = self.ok(conn, QueueSubscribe(name, window))
        assert reply == Ok()
        return out

    def put(self, conn: int, *items: bytes, name: str = "q") -> Out:
        reply, out = self.ok(conn, QueuePut(name, list(items), False, True))
        assert isinstance(reply, PutDone)
        return out

    def queued(self, name: str = "q") -> list[bytes]:
        """The items waiting in ``name`` (white box: the status only counts them)."""
        return list(self.state._queues[name].items)

    def queue_status(self, name: str = "q") -> dict[str, Any]:
        entry: dict[str, Any]
        for entry in self.state.status()["queues"]:
            if entry["name"] == name:
                return entry
        raise AssertionError(f"queue {name!r} not in status")

    def leases(self, conn: int) -> int:
        (row,) = [c for c in self.state.status()["clients"] if c["id"] == conn]
        count: int = row["leases"]
        return count


def pushes(out: Out, conn: int) -> list[Pushed]:
    return [
        i.message
        for i in out
        if isinstance(i, Notice) and i.conn == conn and isinstance(i.message, Pushed)
    ]


def pushed(out: Out, conn: int) -> list[tuple[int, bytes]]:
    """(lease, item) of everything pushed to ``conn`` in ``out``, in order."""
    return [
        (notice.first_lease + offset, item)
        for notice in pushes(out, conn)
        for offset, item in enumerate(notice.items)
    ]


def pushed_items(out: Out, conn: int) -> list[bytes]:
    return [item for _, item in pushed(out, conn)]


def nothing_pushed(out: Out) -> bool:
    return not [i for i in out if isinstance(i, Notice) and isinstance(i.message, Pushed)]


ITEMS = [bytes([ord("a") + i]) for i in range(9)]  # b"a" .. b"i"


@pytest.mark.parametrize("batch", [True, False], ids=["one-batch", "one-by-one"])
def test_subscribers_are_dealt_items_round_robin_in_the_order_they_subscribed(
    batch: bool,
) -> None:
    h = Harness(1, 2, 3, 9)
    h.open(9)
    for conn in (1, 2, 3):
        assert nothing_pushed(h.subscribe(conn, 16))
    got: dict[int, list[tuple[int, bytes]]] = {1: [], 2: [], 3: []}
    puts = [ITEMS] if batch else [[item] for item in ITEMS]
    for items in puts:
        out = h.put(9, *items)
        for conn in got:
            got[conn] += pushed(out, conn)
    assert [item for _, item in got[1]] == [b"a", b"d", b"g"]
    assert [item for _, item in got[2]] == [b"b", b"e", b"h"]
    assert [item for _, item in got[3]] == [b"c", b"f", b"i"]
    for conn, entries in got.items():
        leases = [lease for lease, _ in entries]
        assert len(set(leases)) == 3, f"lease numbers reused for {conn}: {leases}"
        assert h.leases(conn) == 3
    assert h.queued() == []
    status = h.queue_status()
    assert (status["size"], status["leased"], status["subscribers"]) == (0, 9, 3)


def test_the_window_caps_what_one_subscriber_holds_and_the_rest_stays_queued() -> None:
    h = Harness(1, 9)
    h.open(9)
    h.subscribe(1, 2)
    out = h.put(9, b"a", b"b", b"c", b"d", b"e")
    assert pushed_items(out, 1) == [b"a", b"b"]
    assert h.queued() == [b"c", b"d", b"e"]
    assert h.leases(1) == 2
    assert nothing_pushed(h.put(9, b"f"))  # still full
    assert h.queued() == [b"c", b"d", b"e", b"f"]


def test_an_ack_frees_one_slot_and_the_next_item_goes_to_that_subscriber() -> None:
    h = Harness(1, 2, 9)
    h.open(9)
    h.subscribe(1, 1)
    h.subscribe(2, 1)
    out = h.put(9, b"a", b"b", b"c", b"d")
    ((lease_a, _),) = pushed(out, 1)
    ((lease_b, _),) = pushed(out, 2)
    assert h.queued() == [b"c", b"d"]
    out = h.oneway(2, Ack([lease_b]))  # 2 is not next in turn, but the only one with room
    assert pushed_items(out, 2) == [b"c"] and pushed_items(out, 1) == []
    assert h.queued() == [b"d"]
    out = h.oneway(1, Ack([lease_a]))
    assert pushed_items(out, 1) == [b"d"] and pushed_items(out, 2) == []
    assert h.queued() == []
    assert h.leases(1) == h.leases(2) == 1


def test_queue_return_puts_pushed_items_back_at_the_head_and_frees_the_window() -> None:
    h = Harness(1, 9)
    h.open(9)
    h.subscribe(1, 2)
    out = h.put(9, b"a", b"b", b"c", b"d")
    (lease_a, _), (lease_b, _) = pushed(out, 1)
    assert h.queued() == [b"c", b"d"]
    reply, out = h.ok(1, QueueReturn([lease_a]))
    assert reply == Ok()
    # a went back to the head, before c, and the slot it freed was filled from the head.
    again = pushed(out, 1)
    assert [item for _, item in again] == [b"a"]
    assert again[0][0] not in (lease_a, lease_b), "a returned lease number was reused"
    assert h.queued() == [b"c", b"d"]
    assert h.leases(1) == 2
    # the returned lease is forgotten: acknowledging it frees no slot and pushes nothing
    assert nothing_pushed(h.oneway(1, Ack([lease_a])))
    assert h.leases(1) == 2


def test_returned_items_go_back_at_the_head_in_their_order_for_another_subscriber() -> None:
    h = Harness(1, 2, 9)
    h.open(9)
    h.subscribe(1, 3)
    out = h.put(9, b"a", b"b", b"c", b"d")
    assert pushed_items(out, 1) == [b"a", b"b", b"c"]
    leases = [lease for lease, _ in pushed(out, 1)]
    h.ok(1, QueueUnsubscribe("q"))
    reply, out = h.ok(1, QueueReturn(leases[::-1]))  # the order of the list does not matter
    assert reply == Ok() and nothing_pushed(out)
    assert h.queued() == [b"a", b"b", b"c", b"d"]
    assert h.queue_status()["leased"] == 0
    out = h.subscribe(2, 8)
    assert pushed_items(out, 2) == [b"a", b"b", b"c", b"d"]


def test_unsubscribe_stops_pushes_and_keeps_what_was_pushed_leased() -> None:
    h = Harness(1, 2, 9)
    h.open(9)
    h.subscribe(1, 4)
    h.subscribe(2, 4)
    out = h.put(9, b"a", b"b")
    ((lease_a, _),) = pushed(out, 1)
    reply, out = h.ok(1, QueueUnsubscribe("q"))
    assert reply == Ok() and nothing_pushed(out)
    assert h.queue_status()["subscribers"] == 1
    out = h.put(9, b"c", b"d", b"e")
    assert pushed_items(out, 1) == []
    assert pushed_items(out, 2) == [b"c", b"d", b"e"]
    assert h.leases(1) == 1  # a is still leased to 1 until acknowledged or returned
    assert nothing_pushed(h.oneway(1, Ack([lease_a])))
    h.ok(2, QueueUnsubscribe("q"))
    assert nothing_pushed(h.put(9, b"f"))
    assert h.queued() == [b"f"]
    assert h.queue_status()["subscribers"] == 0
    reply, _ = h.ok(2, QueueUnsubscribe("q"))  # twice, or never subscribed: harmless
    assert reply == Ok()


def test_a_disconnect_puts_pushed_unacked_items_back_at_the_head_for_other_subscribers() -> None:
    h = Harness(1, 2, 9)
    h.open(9)
    h.subscribe(1, 3)
    h.subscribe(2, 1)
    out = h.put(9, b"a", b"b", b"c", b"d", b"e")
    assert pushed_items(out, 1) == [b"a", b"c", b"d"]
    assert pushed_items(out, 2) == [b"b"]
    assert h.queued() == [b"e"]
    lease_c = pushed(out, 1)[1][0]
    ((lease_b, _),) = pushed(out, 2)
    h.oneway(1, Ack([lease_c]))  # c consumed: it never comes back
    out = h.disconnect(1)
    assert nothing_pushed(out)  # 2's window is full
    assert h.queued() == [b"a", b"d", b"e"]
    assert h.queue_status()["subscribers"] == 1
    received = []
    for _ in range(3):
        out = h.oneway(2, Ack([lease_b]))  # each ack frees 2's slot for the next at the head
        ((lease_b, item),) = pushed(out, 2)
        received.append(item)
    assert received == [b"a", b"d", b"e"]
    assert h.queued() == []


def test_a_disconnected_subscriber_leaves_the_turn_and_a_free_subscriber_gets_its_items() -> None:
    h = Harness(1, 2, 3, 9)
    h.open(9)
    for conn in (1, 2, 3):
        h.subscribe(conn, 2)
    out = h.put(9, *ITEMS[:5])  # 1: a d, 2: b e, 3: c
    assert pushed_items(out, 1) == [b"a", b"d"]
    out = h.disconnect(1)
    # 3 has one free slot: it gets the head (a); d waits for room.
    assert pushed_items(out, 3) == [b"a"] and pushed_items(out, 2) == []
    assert h.queued() == [b"d"]
    out = h.put(9, b"x")
    assert nothing_pushed(out) and h.queued() == [b"d", b"x"]


@pytest.mark.parametrize("window", [0, -1])
def test_a_window_below_one_fails_with_value_error_and_subscribes_nothing(window: int) -> None:
    h = Harness(1)
    h.open(1)
    rid, out = h.send(1, QueueSubscribe("q", window))
    failure = fail_of(out, 1, rid)
    assert failure.kind == "ValueError"
    assert str(window) in failure.text
    assert h.queue_status()["subscribers"] == 0
    assert nothing_pushed(h.put(1, b"a"))
    assert h.queued() == [b"a"]


@pytest.mark.parametrize("deleted", [True, False], ids=["deleted", "never-opened"])
def test_subscribing_to_a_missing_queue_fails_with_the_same_error_as_a_get(deleted: bool) -> None:
    h = Harness(1)
    if deleted:
        h.open(1)
        h.put(1, b"a")
        h.ok(1, QueueDelete("q"))
    rid, out = h.send(1, QueueSubscribe("q", 4))
    subscribe = fail_of(out, 1, rid)
    rid, out = h.send(1, QueueGet("q", 1, True))
    get = fail_of(out, 1, rid)
    assert (subscribe.kind, subscribe.text) == (get.kind, get.text)
    assert subscribe.kind == "BrokenResourceError"
    assert h.state.status()["queues"] == []


def test_a_subscription_ends_with_the_queue_it_was_on() -> None:
    h = Harness(1, 2)
    h.open(2)
    h.subscribe(1, 4)
    h.ok(2, QueueDelete("q"))
    h.open(2)  # a new queue under the old name has no subscriber
    assert h.queue_status()["subscribers"] == 0
    assert nothing_pushed(h.put(2, b"a"))


def test_pushees_are_served_first_and_parked_getters_get_the_rest() -> None:
    h = Harness(1, 2, 3, 9)
    h.open(9)
    rid2, out = h.send(2, QueueGet("q", 1, True))
    rid3, _ = h.send(3, QueueGet("q", 1, True))
    assert out == []
    h.subscribe(1, 2)
    out = h.put(9, b"a", b"b", b"c", b"d", b"e")
    assert pushed_items(out, 1) == [b"a", b"b"]
    got2, got3 = reply_to(out, 2, rid2), reply_to(out, 3, rid3)
    assert isinstance(got2, Items) and isinstance(got3, Items)
    assert (got2.items, got3.items) == ([b"c"], [b"d"])
    assert h.queued() == [b"e"]
    # with every window full, a get takes from the queue directly
    _, out = h.send(2, QueueGet("q", 4, False))
    assert [i.message.items for i in out if i.conn == 2] == [[b"e"]]


def test_a_parked_getter_is_served_when_every_subscriber_window_is_full() -> None:
    h = Harness(1, 2, 9)
    h.open(9)
    h.subscribe(1, 1)
    out = h.put(9, b"a")
    assert pushed_items(out, 1) == [b"a"]
    rid, out = h.send(2, QueueGet("q", 1, True))
    assert out == []  # parked: nothing queued
    out = h.put(9, b"b")
    got = reply_to(out, 2, rid)
    assert isinstance(got, Items) and got.items == [b"b"]
    assert nothing_pushed(out)


def item_with(*keys: str, tag: str = "") -> bytes:
    """An item referring to tasks ``keys``, as a client's ``dumps_item`` makes it."""
    return Serializer().dumps_item([tag, [Reference(key) for key in keys]])


def test_references_in_pushed_items_are_handed_to_the_subscriber() -> None:
    submitter, subscriber, other = 1, 2, 3
    h = Harness(submitter, subscriber, other)
    h.ok(submitter, Submit("t", b"payload", 0, None, 0))
    h.open(submitter)
    h.subscribe(subscriber, 4)
    out = h.put(submitter, item_with("t", tag="one"), item_with("t", tag="two"))
    ((lease_one, _), (lease_two, _)) = pushed(out, subscriber)
    task = h.state.tasks._tasks["t"]
    assert subscriber in task.holders, "the subscriber was handed a reference it does not hold"
    assert other not in task.holders
    assert task.refs == 2  # leased, not consumed: both items still count
    h.oneway(subscriber, Ack([lease_one]))
    assert task.refs == 1
    # unacknowledged when the subscriber goes: the item is queued again, still counted
    h.disconnect(subscriber)
    assert task.refs == 1 and subscriber not in task.holders
    assert h.queued() == [item_with("t", tag="two")]
    assert lease_two == lease_one + 1


# -- suspected bugs: the window is counted per connection, not per pushed lease ----------------


def test_acknowledging_a_pulled_item_does_not_widen_the_push_window() -> None:
    # A subscriber that also gets from the same queue: the ack of the item it
    # pulled must not free a push slot, or it holds more pushed items than its window.
    h = Harness(1, 9)
    h.open(9)
    h.subscribe(1, 1)
    assert pushed_items(h.put(9, b"a"), 1) == [b"a"]
    assert nothing_pushed(h.put(9, b"b"))
    assert h.queued() == [b"b"]
    rid, out = h.send(1, QueueGet("q", 1, False))
    pulled = reply_to(out, 1, rid)
    assert isinstance(pulled, Items) and pulled.items == [b"b"]
    h.oneway(1, Ack([pulled.first_lease]))
    out = h.put(9, b"c")
    assert pushed_items(out, 1) == [], "c pushed while a is still held: 2 pushed, window 1"
    assert h.queued() == [b"c"]


def test_subscribing_again_keeps_counting_what_is_already_pushed() -> None:
    h = Harness(1, 9)
    h.open(9)
    h.subscribe(1, 2)
    assert pushed_items(h.put(9, b"a", b"b"), 1) == [b"a", b"b"]
    h.subscribe(1, 2)  # e.g. a second push handle on the same connection
    out = h.put(9, b"c", b"d")
    assert pushed_items(out, 1) == [], "window 2 holds a and b: nothing more may be pushed"
    assert h.leases(1) == 2


# == end to end =================================================================================


@pytest.fixture
async def cluster() -> AsyncIterator[Any]:
    async with trioq.open_cluster() as cluster:
        yield cluster
        cluster.scheduler.state.validate()


def connect(cluster: Any, name: str) -> Any:
    return trioq.connect(cluster.address, name=name)


def queue_row(cluster: Any, name: str) -> dict[str, Any]:
    entry: dict[str, Any]
    for entry in cluster.scheduler.state.status()["queues"]:
        if entry["name"] == name:
            return entry
    raise AssertionError(f"queue {name!r} is not on the scheduler")


def leases_of(cluster: Any, client: Any) -> int:
    (row,) = [c for c in cluster.scheduler.state.status()["clients"] if c["id"] == client.id]
    count: int = row["leases"]
    return count


async def until(predicate: Any) -> None:
    """Wait (bounded by the caller's deadline) until ``predicate()`` holds."""
    while not predicate():
        await trio.testing.wait_all_tasks_blocked(cushion=0.001)


async def test_pull_mode_balances_by_demand_so_a_slow_consumer_gets_fewer(cluster: Any) -> None:
    count = 24
    got: dict[str, list[int]] = {"fast": [], "slow": []}
    fast_progress = trio.Event()  # set (and replaced) after every 4 items the fast one takes
    with trio.fail_after(TIMEOUT):
        async with (
            connect(cluster, "producer") as producer,
            connect(cluster, "fast") as fast_client,
            connect(cluster, "slow") as slow_client,
        ):
            pq = producer.simple_queue("work")
            fast = fast_client.simple_queue("work")
            slow = slow_client.simple_queue("work")
            assert (fast.mode, slow.mode) == ("pull", "pull")
            await pq.qsize()

            async def run_fast() -> None:
                nonlocal fast_progress
                while True:
                    got["fast"].append(await fast.get())
                    if len(got["fast"]) % 4 == 0:
                        fast_progress.set()
                        fast_progress = trio.Event()
                    if sum(map(len, got.values())) == count:
                        nursery.cancel_scope.cancel()

            async def run_slow() -> None:
                while True:
                    got["slow"].append(await slow.get())
                    if sum(map(len, got.values())) == count:
                        nursery.cancel_scope.cancel()
                    await fast_progress.wait()  # the pace of a consumer 4 times slower

            async with trio.open_nursery() as nursery:
                nursery.start_soon(run_slow)
                await until(lambda: queue_row(cluster, "work")["getters"] == 1)
                nursery.start_soon(run_fast)
                await until(lambda: queue_row(cluster, "work")["getters"] == 2)
                for i in range(count):
                    await pq.put(i)
            await fast.qsize()  # their acknowledgements are applied
            await slow.qsize()
            assert await pq.qsize() == 0  # every item consumed, none left leased
    assert Counter(got["fast"] + got["slow"]) == Counter(range(count))
    assert got["slow"][:1] == [0], "the consumer that asked first gets the first item"
    assert 1 <= len(got["slow"]) < len(got["fast"]), got


async def test_push_mode_alternates_exactly_between_two_idle_consumers(cluster: Any) -> None:
    count = 10
    with trio.fail_after(TIMEOUT):
        async with (
            connect(cluster, "producer") as producer,
            connect(cluster, "a") as a,
            connect(cluster, "b") as b,
        ):
            qa = a.simple_queue("deal", "push", window=count * 2)
            qb = b.simple_queue("deal", "push", window=count * 2)
            await qa.qsize()  # a round trip: the queue is open
            got: dict[str, list[int]] = {"a": [], "b": []}

            async def first(q: Any, key: str) -> None:
                got[key].append(await q.get())

            async with trio.open_nursery() as nursery:
                nursery.start_soon(first, qa, "a")  # subscribes first: first in turn
                await until(lambda: queue_row(cluster, "deal")["subscribers"] == 1)
                nursery.start_soon(first, qb, "b")
                await until(lambda: queue_row(cluster, "deal")["subscribers"] == 2)
                await producer.queue("deal").put_batch(range(count))
            assert leases_of(cluster, a) + leases_of(cluster, b) == count  # all pushed ahead
            with trio.fail_after(INSTANT):
                for _ in range(count // 2 - 1):
                    got["a"].append(await qa.get())
                    got["b"].append(await qb.get())
            assert got == {"a": [0, 2, 4, 6, 8], "b": [1, 3, 5, 7, 9]}
            await qb.qsize()  # b's acknowledgements are applied; a's go with its qsize
            assert await qa.qsize() == 0
            await qa.aclose()
            await qb.aclose()
            assert queue_row(cluster, "deal")["subscribers"] == 0


async def test_a_push_consumer_that_closes_returns_what_it_held_to_another(cluster: Any) -> None:
    count = 12
    a_got: list[int] = []
    b_got: list[int] = []
    with trio.fail_after(TIMEOUT):
        async with (
            connect(cluster, "producer") as producer,
            connect(cluster, "a") as a,
            connect(cluster, "b") as b,
        ):
            qb = b.simple_queue("hand", "push", window=8)
            await qb.qsize()  # a round trip: the queue is open
            async with a.simple_queue("hand", "push", window=8) as qa:
                async with trio.open_nursery() as nursery:

                    async def a_first() -> None:
                        a_got.append(await qa.get())

                    nursery.start_soon(a_first)
                    await until(lambda: queue_row(cluster, "hand")["subscribers"] == 1)

                    async def b_first() -> None:
                        b_got.append(await qb.get())

                    nursery.start_soon(b_first)
                    await until(lambda: queue_row(cluster, "hand")["subscribers"] == 2)
                    await producer.queue("hand").put_batch(range(count))
                a_got.append(await qa.get())
                await qa.qsize()  # its acknowledgements are applied
                held = leases_of(cluster, a)
                assert held == count // 2 - len(a_got) > 0, "a holds pushed items at close"
            # left the block: a is no subscriber and holds nothing
            assert queue_row(cluster, "hand")["subscribers"] == 1
            assert leases_of(cluster, a) == 0
            with trio.fail_after(INSTANT):
                while len(a_got) + len(b_got) < count:
                    b_got.append(await qb.get())
            assert await qb.qsize() == 0
            await qb.aclose()
    assert Counter(a_got + b_got) == Counter(range(count))
    assert len(a_got) == 2


def waiting(row: dict[str, Any]) -> int:
    """Consumers waiting on a queue: parked gets (pull) or subscribers (push)."""
    return int(row["getters"]) + int(row["subscribers"])


@pytest.mark.parametrize("mode", ["pull", "push"])
@pytest.mark.parametrize("rounds", [0, 2, 5, 10])
async def test_a_consumer_that_disconnects_mid_get_loses_no_item(
    cluster: Any, mode: str, rounds: int
) -> None:
    """A's get waits while items are put; A's connection ends ``rounds`` rounds
    later.  What A's get returned plus what B then takes is every item, once."""
    count = 6
    a_got: list[int] = []
    b_got: list[int] = []
    with trio.fail_after(TIMEOUT):
        async with connect(cluster, "b") as b, connect(cluster, "producer") as producer:
            pq = producer.simple_queue("gone")
            await pq.qsize()
            async with connect(cluster, "a") as a:
                qa = a.simple_queue("gone", mode)  # type: ignore[arg-type]
                async with trio.open_nursery() as nursery:

                    async def a_get() -> None:
                        a_got.append(await qa.get())

                    nursery.start_soon(a_get)
                    await until(lambda: bool(waiting(queue_row(cluster, "gone"))))
                    for i in range(count):
                        await pq.put(i)
                    for _ in range(rounds):
                        await trio.lowlevel.checkpoint()
                    nursery.cancel_scope.cancel()
                # leaving the block closes A's connection without closing the handle
            qb = b.simple_queue("gone", mode)  # type: ignore[arg-type]
            with trio.fail_after(INSTANT):
                while len(a_got) + len(b_got) < count:
                    b_got.append(await qb.get())
            await qb.aclose()
            await pq.qsize()
            await b.queue("gone").qsize()
            assert await pq.qsize() == 0
    assert Counter(a_got + b_got) == Counter(range(count))


@pytest.mark.parametrize("mode", ["pull", "push"])
async def test_get_after_aclose_raises_closed_resource_error(cluster: Any, mode: str) -> None:
    with trio.fail_after(TIMEOUT):
        async with connect(cluster, "c") as client:
            q = client.simple_queue("closing", mode)
            await q.put(1)
            assert await q.get() == 1
            await q.aclose()
            await q.aclose()  # idempotent
            with pytest.raises(trio.ClosedResourceError):
                await q.get()
            with pytest.raises(trio.ClosedResourceError):
                await q.put(2)
            assert await client.queue("closing").qsize() == 0


async def test_a_push_get_waiting_when_the_handle_closes_raises_closed_resource_error(
    cluster: Any,
) -> None:
    with trio.fail_after(TIMEOUT):
        async with connect(cluster, "c") as client:
            q = client.simple_queue("closing", "push")
            await q.qsize()
            raised: list[BaseException] = []

            async def wait_get() -> None:
                with pytest.raises(trio.ClosedResourceError) as info:
                    await q.get()
                raised.append(info.value)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(wait_get)
                await until(lambda: queue_row(cluster, "closing")["subscribers"] == 1)
                await q.aclose()
            assert raised and queue_row(cluster, "closing")["subscribers"] == 0


@pytest.mark.parametrize("mode", ["other", "PUSH", ""])
async def test_an_unknown_mode_is_a_value_error(cluster: Any, mode: str) -> None:
    with trio.fail_after(TIMEOUT):
        async with connect(cluster, "c") as client:
            with pytest.raises(ValueError, match="mode must be 'pull' or 'push'"):
                client.simple_queue("q", mode)  # type: ignore[arg-type]
            with pytest.raises(ValueError, match="window must be a positive int"):
                client.simple_queue("q", "push", window=0)


async def test_a_queue_without_a_name_gets_a_unique_one(cluster: Any) -> None:
    with trio.fail_after(TIMEOUT):
        async with connect(cluster, "c") as client:
            one, two = client.simple_queue(), client.simple_queue()
            assert one.name != two.name and one.mode == "pull"
            await one.put("x")
            assert await two.qsize() == 0 and await one.get() == "x"


# -- cancellation ------------------------------------------------------------------------------

# Seconds: from "already expired" through "during the first round trip" (tens of
# microseconds in one process) to "after an item arrived".
deadline = st.one_of(st.sampled_from([0.0, 0.00003, 0.00005, 0.0001, 0.001]), st.floats(0.0, 0.002))


@settings(max_examples=25)
@given(
    mode=st.sampled_from(["pull", "push"]),
    steps=st.lists(st.tuples(deadline, st.integers(0, 6), st.booleans()), min_size=1, max_size=6),
)
async def test_a_cancelled_get_loses_nothing_in_either_mode(
    mode: str, steps: list[tuple[float, int, bool]]
) -> None:
    """Gets under ``move_on_after`` deadlines while a producer puts after some rounds.

    Then the consumer closes its handle (a push consumer gives back what it
    holds) and another client drains the queue: what the gets returned plus
    what is drained is exactly what was put.
    """
    put: list[int] = []
    received: list[int] = []
    with trio.fail_after(TIMEOUT):
        async with (
            trioq.open_cluster() as cluster,
            connect(cluster, "producer") as producer,
            connect(cluster, "consumer") as consumer,
        ):
            pq = producer.simple_queue("cancel")
            cq = consumer.simple_queue("cancel", mode)  # type: ignore[arg-type]
            await pq.qsize()

            async def put_after(rounds: int) -> None:
                for _ in range(rounds):
                    await trio.lowlevel.checkpoint()
                put.append(len(put))
                await pq.put(put[-1])

            for seconds, rounds, also_put in steps:
                async with trio.open_nursery() as nursery:
                    if also_put:
                        nursery.start_soon(put_after, rounds)
                    with trio.move_on_after(seconds):
                        received.append(await cq.get())
            await cq.aclose()
            await pq.qsize()  # the producer's puts are applied
            await consumer.queue("cancel").qsize()  # and the consumer's acks and returns
            assert queue_row(cluster, "cancel")["subscribers"] == 0
            assert leases_of(cluster, consumer) == 0, "items stuck with a closed consumer"
            drain = producer.queue("cancel", prefetch=1)
            with trio.fail_after(INSTANT):
                while True:
                    try:
                        received.append(await drain.get_nowait())
                    except trio.WouldBlock:
                        break
            assert await drain.qsize() == 0
            cluster.scheduler.state.validate()
    counts = Counter(received)
    assert counts == Counter(put), f"received {sorted(counts.elements())}, put {put}"


@pytest.mark.parametrize("rounds", range(8))
async def test_a_push_get_cancelled_while_subscribing_leaves_no_subscription_behind(
    cluster: Any, rounds: int
) -> None:
    """The first push ``get`` subscribes; cancelled around that round trip, then
    closed, the handle must not stay subscribed (items pushed to it would only
    bounce back, and nobody else could have them)."""
    with trio.fail_after(TIMEOUT):
        async with connect(cluster, "c") as client, connect(cluster, "p") as producer:
            q = client.simple_queue("sub", "push")
            await q.qsize()

            async def cancel_after(scope: trio.CancelScope) -> None:
                for _ in range(rounds):
                    await trio.lowlevel.checkpoint()
                scope.cancel()

            scope = trio.CancelScope()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(cancel_after, scope)
                with scope:
                    await q.get()
            await q.aclose()
            await client.queue("sub").qsize()  # everything the handle sent is applied
            assert queue_row(cluster, "sub")["subscribers"] == 0
            other = producer.queue("sub")
            await other.put("x")
            with trio.fail_after(INSTANT):
                assert await other.get() == "x"


async def test_a_push_get_waiting_when_the_queue_is_deleted_raises_broken_resource_error(
    cluster: Any,
) -> None:
    with trio.fail_after(TIMEOUT):
        async with connect(cluster, "c") as client, connect(cluster, "d") as deleter:
            q = client.simple_queue("doomed", "push")
            await q.qsize()  # opened
            raised: list[BaseException] = []

            async def wait_get() -> None:
                with pytest.raises(trio.BrokenResourceError, match="deleted") as info:
                    await q.get()
                raised.append(info.value)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(wait_get)
                await until(lambda: queue_row(cluster, "doomed")["subscribers"] == 1)
                await deleter.queue("doomed").delete()
            assert raised
            await q.aclose()


async def test_aclose_of_a_push_consumer_on_a_closed_client_raises_nothing(cluster: Any) -> None:
    with trio.fail_after(TIMEOUT):
        async with connect(cluster, "c") as client:
            q = client.simple_queue("orphan", "push")
            await q.put(1)
            assert await q.get() == 1
        await q.aclose()  # the client is gone: the scheduler took the leases back
        assert client._session.push_links == {}
