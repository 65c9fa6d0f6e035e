"""Replayable channels: the scheduler's ``ChannelBoard`` (sans-IO) and ``trioq.Channel``.

Two layers, each on its own terms:

* ``SchedulerState`` (sans-IO, ``validate()`` after every step): elements
  are numbered in the order appends are applied, whoever sent them; a read
  from a trimmed number starts at the oldest retained element; a parked
  read is answered by the next append or by the stop, withdrawn by
  ``Cancel`` and forgotten with its connection; refusals (stopped, maxlen
  mismatch, oversize element, unknown task) change nothing; elements keep
  the futures they refer to while retained.  A hypothesis state machine
  checks every answer against a model list.
* End to end in one process (``trioq.open_cluster``): replay, following,
  ``subscribe(start=n)``, stop, flush and its errors, snapshots larger
  than a read batch, cancelled receives (hypothesis-chosen deadlines) that
  neither lose nor repeat an element, and futures that outlive the client
  that appended them until the channel trims them.  Task functions are
  module level (pickled by reference) and wait on ``GATES``, trio events
  shared with the test.

Every wait is bounded by ``trio.fail_after``; nothing synchronises by
sleeping.  The scheduler's own state (which nothing notifies the test of)
is polled, bounded too.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import procs
import pytest
import trio
from gated_tasks import GATES, Order, add, gated
from hypothesis import Phase, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)
from state_answers import answers, fail_of, reply_to, with_barriers_answered

import trioq
from trioq._client.channel import READ_BATCH
from trioq._scheduler.state import DEFAULT_MAX_ITEM_BYTES, Fail, Reply, SchedulerState
from trioq._wire.channel_messages import (
    ChannelAppend,
    ChannelAppended,
    ChannelInfo,
    ChannelItems,
    ChannelOpen,
    ChannelRead,
    ChannelStop,
)
from trioq._wire.messages import ITEM_OVERHEAD, Cancel, Message, Ok
from trioq._wire.serialize import Reference, Serializer
from trioq._wire.task_messages import (
    Submit,
    TaskAssign,
    TaskDone,
    TaskRelease,
    WorkerHello,
    WorkerReady,
)

WAIT = 10.0  # seconds any one step may take (generous: CI boxes are slow)

SUBMITTER, WORKER = 1, 9  # the client that submits every task, and the worker that runs them
ALICE, BOB, CAROL = 2, 3, 4  # other clients


def element(tag: Any) -> bytes:
    """A plain element, as a client's ``dumps_item`` makes it."""
    return Serializer().dumps_item(tag)


def referring(*keys: str, tag: str = "") -> bytes:
    """An element referring to the tasks ``keys``."""
    return Serializer().dumps_item([tag, [Reference(key) for key in keys]])


class Board:
    """A ``SchedulerState`` with a worker, fresh request ids and ``validate()`` after each step."""

    def __init__(self, *conns: int, max_item_bytes: int = DEFAULT_MAX_ITEM_BYTES) -> None:
        self.state = SchedulerState(max_item_bytes)
        self._rids = itertools.count(1)
        for conn in (SUBMITTER, *conns, WORKER):
            self.connect(conn)
        assert isinstance(self.ok(WORKER, WorkerHello("w", 1, [])), Ok)

    def connect(self, conn: int) -> None:
        self.state.connect(conn, f"conn-{conn}", f"127.0.0.1:{1000 + conn}")
        self.state.validate()

    def disconnect(self, conn: int) -> list[Any]:
        out = with_barriers_answered(self.state, self.state.disconnect(conn))
        self.state.validate()
        return out

    def send(self, conn: int, message: Message, rid: int | None = None) -> tuple[int, list[Any]]:
        rid = next(self._rids) if rid is None else rid
        out = with_barriers_answered(self.state, self.state.handle(conn, rid, message))
        self.state.validate()
        return rid, out

    def ok(self, conn: int, message: Message) -> Message:
        rid, out = self.send(conn, message)
        return reply_to(out, conn, rid)

    def refused(self, conn: int, message: Message) -> Fail:
        rid, out = self.send(conn, message)
        return fail_of(out, conn, rid)

    def oneway(self, conn: int, message: Message) -> list[Any]:
        return self.send(conn, message, rid=0)[1]

    # -- channels ---------------------------------------------------------------------

    def open(self, conn: int, name: str = "c", maxlen: int = 0) -> ChannelInfo:
        info = self.ok(conn, ChannelOpen(name, maxlen))
        assert isinstance(info, ChannelInfo)
        return info

    def append(self, conn: int, *items: bytes, name: str = "c") -> list[Any]:
        rid, out = self.send(conn, ChannelAppend(name, list(items)))
        assert isinstance(reply_to(out, conn, rid), ChannelAppended)
        return out

    def read(self, conn: int, start: int, max_items: int = 100, name: str = "c") -> ChannelItems:
        """A read that must be answered at once."""
        reply = self.ok(conn, ChannelRead(name, start, max_items, False))
        assert isinstance(reply, ChannelItems), reply
        return reply

    def park(self, conn: int, start: int, max_items: int = 100, name: str = "c") -> int:
        """A waiting read that must park; its request id."""
        rid, out = self.send(conn, ChannelRead(name, start, max_items, True))
        assert out == [], out
        return rid

    def stop(self, conn: int, name: str = "c") -> list[Any]:
        rid, out = self.send(conn, ChannelStop(name))
        assert isinstance(reply_to(out, conn, rid), Ok)
        return out

    def info(self, name: str = "c") -> dict[str, Any]:
        (found,) = [c for c in self.state.status()["channels"] if c["name"] == name]
        return found  # type: ignore[no-any-return]

    # -- tasks ----------------------------------------------------------------------------

    def finished_task(self, key: str) -> None:
        assert isinstance(self.ok(SUBMITTER, Submit(key, b"payload", 0, None, 0)), Ok)
        out = self.oneway(WORKER, WorkerReady(1))
        assert [n.message.key for n in out if isinstance(n.message, TaskAssign)] == [key]
        self.oneway(WORKER, TaskDone(key, True, b"result"))

    def known(self, key: str) -> bool:
        return key in self.state.tasks._tasks

    def refs(self, key: str) -> int:
        return self.state.tasks._tasks[key].refs

    def holders(self, key: str) -> set[int]:
        return set(self.state.tasks._tasks[key].holders)


def items_of(reply: ChannelItems) -> tuple[list[bytes], int, int, bool]:
    return reply.items, reply.first, reply.end, reply.stopped


def served(out: list[Any], conn: int, rid: int) -> ChannelItems:
    message = reply_to(out, conn, rid)
    assert isinstance(message, ChannelItems), message
    return message


E = [element(i) for i in range(40)]  # E[i] is the element tagged i


# -- numbering and trimming -------------------------------------------------------------


def test_elements_are_numbered_in_the_order_appends_are_applied_whoever_sends_them() -> None:
    b = Board(ALICE, BOB)
    assert b.open(ALICE) == ChannelInfo(0, False, 0)
    b.append(ALICE, E[0], E[1])
    b.append(BOB, E[2])
    b.append(ALICE, E[3])
    assert items_of(b.read(BOB, 0)) == ([E[0], E[1], E[2], E[3]], 0, 4, False)
    assert items_of(b.read(ALICE, 1, max_items=2)) == ([E[1], E[2]], 1, 4, False)
    assert items_of(b.read(ALICE, 3)) == ([E[3]], 3, 4, False)
    assert b.info() == {
        "name": "c",
        "length": 4,
        "appended": 4,
        "maxlen": 0,
        "readers": 0,
        "stopped": False,
    }


def test_a_read_from_a_trimmed_number_starts_at_the_oldest_retained_element() -> None:
    b = Board(ALICE)
    b.open(ALICE, maxlen=3)
    b.append(ALICE, E[0], E[1])
    b.append(ALICE, E[2], E[3], E[4])
    assert items_of(b.read(ALICE, 0)) == ([E[2], E[3], E[4]], 2, 5, False)
    assert items_of(b.read(ALICE, 3)) == ([E[3], E[4]], 3, 5, False)
    b.append(ALICE, *E[5:12])  # one batch longer than maxlen: only its newest three stay
    assert items_of(b.read(ALICE, 4)) == ([E[9], E[10], E[11]], 9, 12, False)
    assert (b.info()["length"], b.info()["appended"]) == (3, 12)


def test_a_long_trimmed_channel_compacts_its_storage_and_keeps_its_numbers() -> None:
    b = Board(ALICE)
    b.open(ALICE, maxlen=3)
    tags = itertools.count()
    for _ in range(500):
        b.append(ALICE, *[element(next(tags)) for _ in range(7)])
    assert items_of(b.read(ALICE, 0)) == (
        [element(n) for n in (3497, 3498, 3499)],
        3497,
        3500,
        False,
    )
    channel = b.state.channels._channels["c"]  # white box: the head moved and was cut
    assert len(channel.elements) - channel.head == 3
    assert len(channel.elements) <= 2 * 1024 + 7


def test_a_reopen_without_maxlen_gets_the_channel_as_it_is() -> None:
    b = Board(ALICE, BOB)
    b.open(ALICE, maxlen=3)
    assert b.open(BOB) == ChannelInfo(3, False, 0)
    assert b.open(BOB, maxlen=3) == ChannelInfo(3, False, 0)
    b.stop(ALICE)
    assert b.open(BOB) == ChannelInfo(3, True, 0)


def test_a_maxlen_that_differs_from_the_channels_is_a_value_error() -> None:
    b = Board(ALICE, BOB)
    b.open(ALICE, "bounded", maxlen=3)
    failure = b.refused(BOB, ChannelOpen("bounded", 4))
    assert (failure.kind, failure.text) == (
        "ValueError",
        "channel 'bounded' exists with maxlen 3, not 4",
    )
    b.open(ALICE, "unbounded")
    failure = b.refused(BOB, ChannelOpen("unbounded", 2))
    assert (failure.kind, failure.text) == (
        "ValueError",
        "channel 'unbounded' exists with maxlen None, not 2",
    )
    assert b.refused(BOB, ChannelOpen("negative", -1)).kind == "ValueError"
    assert "negative" not in {c["name"] for c in b.state.status()["channels"]}


# -- parked reads -------------------------------------------------------------------------


def test_a_parked_read_is_answered_by_the_first_append_that_reaches_its_start() -> None:
    b = Board(ALICE, BOB, CAROL)
    b.open(ALICE)
    early = b.park(ALICE, 0)
    ahead = b.park(BOB, 2, max_items=1)  # subscribe(start=2) on an empty channel
    assert b.info()["readers"] == 2
    out = b.append(CAROL, E[0])
    assert items_of(served(out, ALICE, early)) == ([E[0]], 0, 1, False)
    assert not answers(out, BOB, ahead)
    out = b.append(CAROL, E[1], E[2], E[3])
    assert items_of(served(out, BOB, ahead)) == ([E[2]], 2, 4, False)
    assert b.info()["readers"] == 0
    assert b.state._conns[BOB].parked == {}


def test_every_parked_read_of_one_number_gets_the_same_elements() -> None:
    b = Board(ALICE, BOB, CAROL)
    b.open(ALICE)
    b.append(ALICE, E[0])
    rids = {conn: b.park(conn, 1) for conn in (ALICE, BOB, CAROL)}
    out = b.append(SUBMITTER, E[1], E[2])
    for conn, rid in rids.items():
        assert items_of(served(out, conn, rid)) == ([E[1], E[2]], 1, 3, False)


def test_a_parked_read_of_a_bounded_channel_answers_from_the_oldest_retained() -> None:
    b = Board(ALICE)
    b.open(ALICE, maxlen=2)
    rid = b.park(ALICE, 0)
    out = b.append(SUBMITTER, E[0], E[1], E[2])  # trimmed before it is served
    assert items_of(served(out, ALICE, rid)) == ([E[1], E[2]], 1, 3, False)


def test_stop_answers_every_parked_read_and_later_reads_end_at_the_last_element() -> None:
    b = Board(ALICE, BOB)
    b.open(ALICE)
    b.append(ALICE, E[0], E[1])
    first, second = b.park(ALICE, 2), b.park(BOB, 5)
    out = b.stop(SUBMITTER)
    assert items_of(served(out, ALICE, first)) == ([], 2, 2, True)
    assert items_of(served(out, BOB, second)) == ([], 5, 2, True)
    assert b.info()["readers"] == 0 and b.info()["stopped"]
    assert items_of(b.read(BOB, 0, max_items=1)) == ([E[0]], 0, 2, False)  # not the end yet
    assert items_of(b.read(BOB, 1)) == ([E[1]], 1, 2, True)  # reaches the end
    rid, out = b.send(ALICE, ChannelRead("c", 2, 10, True))  # would wait: ends at once
    assert items_of(served(out, ALICE, rid)) == ([], 2, 2, True)


def test_stop_is_idempotent() -> None:
    b = Board(ALICE)
    b.open(ALICE)
    b.stop(ALICE)
    b.stop(ALICE)
    assert b.open(ALICE) == ChannelInfo(0, True, 0)


def test_an_append_after_stop_is_refused_with_closed_resource_error() -> None:
    b = Board(ALICE)
    b.open(ALICE)
    b.append(ALICE, E[0])
    b.stop(ALICE)
    failure = b.refused(ALICE, ChannelAppend("c", [E[1]]))
    assert (failure.kind, failure.text) == ("ClosedResourceError", "channel 'c' was stopped")
    assert items_of(b.read(ALICE, 0)) == ([E[0]], 0, 1, True)


def test_cancel_withdraws_a_parked_read_and_the_next_append_does_not_answer_it() -> None:
    b = Board(ALICE, BOB)
    b.open(ALICE)
    rid = b.park(ALICE, 0)
    kept = b.park(BOB, 0)
    out = b.oneway(ALICE, Cancel(rid))
    assert out == [Fail(ALICE, rid, "Cancelled", "withdrawn")]
    assert b.info()["readers"] == 1
    out = b.append(BOB, E[0])
    assert not answers(out, ALICE, rid)
    assert items_of(served(out, BOB, kept)) == ([E[0]], 0, 1, False)
    assert b.oneway(ALICE, Cancel(rid)) == []  # answered already: nothing to withdraw
    assert b.oneway(BOB, Cancel(kept)) == []


def test_a_disconnect_forgets_the_parked_reads_of_its_connection() -> None:
    b = Board(ALICE, BOB)
    b.open(ALICE, "one")
    b.open(ALICE, "two")
    b.park(ALICE, 0, name="one")
    b.park(ALICE, 0, name="two")
    kept = b.park(BOB, 0, name="one")
    assert b.disconnect(ALICE) == []
    assert b.info("one")["readers"] == 1 and b.info("two")["readers"] == 0
    out = b.append(BOB, E[0], name="one")
    out += b.append(BOB, E[0], name="two")
    out += b.stop(BOB, name="two")
    assert [i for i in out if i.conn == ALICE] == []
    assert items_of(served(out, BOB, kept)) == ([E[0]], 0, 1, False)


# -- refusals ----------------------------------------------------------------------------


def test_an_element_over_the_size_limit_is_refused_and_nothing_of_its_batch_is_appended() -> None:
    b = Board(ALICE, max_item_bytes=100)
    b.open(ALICE)
    rid = b.park(ALICE, 0)
    failure = b.refused(ALICE, ChannelAppend("c", [b"x" * 100, b"y" * 101]))
    assert (failure.kind, failure.text) == (
        "ValueError",
        "an element of 101 bytes is over this scheduler's limit of 100 bytes",
    )
    assert b.info()["appended"] == 0 and b.info()["readers"] == 1
    out = b.append(ALICE, b"x" * 100)  # at the limit is fine
    assert items_of(served(out, ALICE, rid)) == ([b"x" * 100], 0, 1, False)


def test_an_element_referring_to_an_unknown_task_is_refused_with_lookup_error() -> None:
    b = Board(ALICE)
    b.finished_task("known")
    b.open(ALICE)
    failure = b.refused(ALICE, ChannelAppend("c", [referring("known"), referring("never")]))
    assert failure.kind == "LookupError"
    assert "'never'" in failure.text
    assert b.info()["appended"] == 0
    assert b.refs("known") == 0  # all or none: the good element was not kept either


def test_requests_on_a_channel_never_opened_are_broken_resource_errors() -> None:
    b = Board(ALICE)
    for message in [
        ChannelAppend("nope", [E[0]]),
        ChannelRead("nope", 0, 1, True),
        ChannelRead("nope", 0, 1, False),
        ChannelStop("nope"),
    ]:
        failure = b.refused(ALICE, message)
        assert (failure.kind, failure.text) == (
            "BrokenResourceError",
            "channel 'nope' does not exist (it was deleted)",
        )


def test_a_read_that_may_not_wait_past_the_end_is_would_block() -> None:
    b = Board(ALICE)
    b.open(ALICE)
    b.append(ALICE, E[0])
    failure = b.refused(ALICE, ChannelRead("c", 1, 5, False))
    assert (failure.kind, failure.text) == ("WouldBlock", "channel 'c' has nothing from 1")
    assert b.info()["readers"] == 0


def test_malformed_reads_are_refused() -> None:
    b = Board(ALICE)
    b.open(ALICE)
    assert b.refused(ALICE, ChannelRead("c", 0, 0, True)).text == "max_items must be >= 1, got 0"
    assert b.refused(ALICE, ChannelRead("c", -1, 1, True)).text == "start must be >= 0, got -1"
    out = b.oneway(ALICE, ChannelRead("c", 0, 1, True))  # may wait, yet no id to answer
    assert [i for i in out if isinstance(i, Reply | Fail)] == []
    rid = b.park(ALICE, 0)
    rid_again, out = b.send(ALICE, ChannelRead("c", 0, 1, True), rid=rid)
    assert fail_of(out, ALICE, rid_again).kind == "ProtocolError"
    assert b.info()["readers"] == 1


def test_an_answer_never_carries_more_bytes_than_one_element_may_have() -> None:
    b = Board(ALICE, max_item_bytes=100)
    b.open(ALICE)
    big = [bytes([i]) * 40 for i in range(5)]
    b.append(ALICE, *big)
    seen: list[bytes] = []
    start = 0
    while start < 5:
        reply = b.read(ALICE, start, max_items=10)
        assert reply.first == start and reply.items
        assert sum(len(i) + ITEM_OVERHEAD for i in reply.items) <= 100 or len(reply.items) == 1
        seen += reply.items
        start += len(reply.items)
    assert seen == big
    b.append(ALICE, b"z" * 100)  # one element at the limit still goes, alone
    assert b.read(ALICE, 5).items == [b"z" * 100]


# -- references to futures ---------------------------------------------------------------------


def test_an_element_keeps_its_task_after_the_submitter_goes_until_it_is_trimmed() -> None:
    b = Board(ALICE)
    b.finished_task("t")
    b.open(SUBMITTER, maxlen=2)
    b.append(SUBMITTER, referring("t"))
    b.disconnect(SUBMITTER)
    assert b.known("t") and b.refs("t") == 1 and b.holders("t") == set()
    b.append(ALICE, E[0])
    assert b.known("t")
    b.append(ALICE, E[1])  # trims the element: nothing refers to the task any more
    assert not b.known("t")


def test_a_reader_holds_the_tasks_of_the_elements_it_was_handed() -> None:
    b = Board(ALICE, BOB)
    b.finished_task("t")
    b.open(SUBMITTER, maxlen=1)
    parked = b.park(BOB, 0)
    out = b.append(SUBMITTER, referring("t"))
    assert served(out, BOB, parked).items == [referring("t")]
    b.read(ALICE, 0)
    assert b.holders("t") == {SUBMITTER, ALICE, BOB}
    b.oneway(SUBMITTER, TaskRelease("t"))
    b.append(SUBMITTER, E[0])  # trimmed
    assert b.known("t") and b.refs("t") == 0
    b.disconnect(ALICE)
    b.oneway(BOB, TaskRelease("t"))
    assert not b.known("t")


def test_each_element_counts_and_a_trim_drops_exactly_its_own() -> None:
    b = Board(ALICE)
    b.finished_task("a")
    b.finished_task("b")
    b.open(SUBMITTER, maxlen=2)
    b.append(SUBMITTER, referring("a", "b"), referring("a"))
    b.disconnect(SUBMITTER)
    assert (b.refs("a"), b.refs("b")) == (2, 1)
    b.append(ALICE, E[0])
    assert not b.known("b") and b.refs("a") == 1
    b.append(ALICE, E[1])
    assert not b.known("a")


# -- against a model -----------------------------------------------------------------------------


class ChannelMachine(RuleBasedStateMachine):
    """Connections open, append, read (waiting or not, from any number), withdraw,
    stop and leave.  Every answer is predicted by a model: the list of every element
    ever appended, of which the newest ``maxlen`` are retained."""

    @initialize(maxlen=st.sampled_from([0, 1, 3]))
    def start(self, maxlen: int) -> None:
        self.b = Board()
        self.maxlen = maxlen
        assert self.b.open(SUBMITTER, maxlen=maxlen) == ChannelInfo(maxlen, False, 0)
        self.conns = {SUBMITTER}
        self.next_conn = 100
        self.appended: list[bytes] = []
        self.stopped = False
        self.parked: dict[tuple[int, int], tuple[int, int]] = {}  # (conn, rid) -> read
        self.tags = itertools.count()

    # -- the model -----------------------------------------------------------------------

    @property
    def end(self) -> int:
        return len(self.appended)

    @property
    def first(self) -> int:
        return max(0, self.end - self.maxlen) if self.maxlen else 0

    def expect(self, start: int, max_items: int) -> ChannelItems:
        first = max(start, self.first)
        items = self.appended[first : first + max_items]
        return ChannelItems(items, first, self.end, self.stopped and first + len(items) >= self.end)

    def check_served(self, out: list[Any]) -> None:
        """Parked reads the model says are answerable got exactly the model's answer."""
        for (conn, rid), (start, max_items) in list(self.parked.items()):
            if start < self.end or self.stopped:
                assert served(out, conn, rid) == self.expect(start, max_items)
                del self.parked[(conn, rid)]
            else:
                assert not answers(out, conn, rid)

    def pick(self, data: st.DataObject) -> int:
        return data.draw(st.sampled_from(sorted(self.conns)))

    # -- rules -------------------------------------------------------------------------------

    @rule()
    def connect(self) -> None:
        self.b.connect(self.next_conn)
        self.conns.add(self.next_conn)
        self.next_conn += 1

    @precondition(lambda self: self.conns)
    @rule(data=st.data())
    def disconnect(self, data: st.DataObject) -> None:
        conn = self.pick(data)
        assert self.b.disconnect(conn) == []
        self.conns.discard(conn)
        self.parked = {key: read for key, read in self.parked.items() if key[0] != conn}

    @precondition(lambda self: self.conns)
    @rule(data=st.data(), n=st.integers(1, 4))
    def append(self, data: st.DataObject, n: int) -> None:
        conn = self.pick(data)
        items = [element(next(self.tags)) for _ in range(n)]
        rid, out = self.b.send(conn, ChannelAppend("c", items))
        if self.stopped:
            assert fail_of(out, conn, rid).kind == "ClosedResourceError"
            assert len(out) == 1
            return
        self.appended += items
        assert reply_to(out, conn, rid) == ChannelAppended(self.end - self.first, self.end)
        self.check_served(out)
        assert len(out) == 1 + sum(1 for i in out if isinstance(i.message, ChannelItems))

    @precondition(lambda self: self.conns)
    @rule(data=st.data(), ahead=st.integers(-8, 2), max_items=st.integers(1, 4), wait=st.booleans())
    def read(self, data: st.DataObject, ahead: int, max_items: int, wait: bool) -> None:
        conn = self.pick(data)
        start = max(0, self.end + ahead)
        rid, out = self.b.send(conn, ChannelRead("c", start, max_items, wait))
        if start < self.end or self.stopped:
            assert served(out, conn, rid) == self.expect(start, max_items)
        elif not wait:
            assert fail_of(out, conn, rid).kind == "WouldBlock"
        else:
            assert out == []
            self.parked[(conn, rid)] = (start, max_items)

    @precondition(lambda self: self.parked)
    @rule(data=st.data())
    def withdraw(self, data: st.DataObject) -> None:
        conn, rid = data.draw(st.sampled_from(sorted(self.parked)))
        assert self.b.oneway(conn, Cancel(rid)) == [Fail(conn, rid, "Cancelled", "withdrawn")]
        del self.parked[(conn, rid)]

    @precondition(lambda self: self.conns)
    @rule(data=st.data())
    def stop(self, data: st.DataObject) -> None:
        conn = self.pick(data)
        out = self.b.stop(conn)
        self.stopped = True
        self.check_served(out)
        assert not self.parked

    @precondition(lambda self: self.conns)
    @rule(data=st.data(), maxlen=st.sampled_from([0, 1, 3]))
    def reopen(self, data: st.DataObject, maxlen: int) -> None:
        conn = self.pick(data)
        rid, out = self.b.send(conn, ChannelOpen("c", maxlen))
        if maxlen and maxlen != self.maxlen:
            assert fail_of(out, conn, rid).kind == "ValueError"
        else:
            info = ChannelInfo(self.maxlen, self.stopped, self.end - self.first)
            assert reply_to(out, conn, rid) == info

    @invariant()
    def the_channel_is_the_model(self) -> None:
        if not hasattr(self, "b"):
            return
        info = self.b.info()
        assert info["appended"] == self.end
        assert info["length"] == self.end - self.first
        assert info["readers"] == len(self.parked)
        assert info["stopped"] == self.stopped


TestChannelMachine = ChannelMachine.TestCase


# -- end to end, in one process ------------------------------------------------------------------


def tasks_of(cluster: trioq.Cluster) -> dict[str, Any]:
    """The scheduler's tasks (white box)."""
    return cluster.scheduler.state.tasks._tasks


@asynccontextmanager
async def connected(cluster: trioq.Cluster, name: str) -> AsyncIterator[trioq.Client]:
    """A client; once it has left, the scheduler has dropped its connection too."""
    async with trioq.connect(cluster.address, name=name) as client:
        yield client
    await procs.poll_until(lambda: client.id not in cluster.scheduler.state._conns)


async def drain(subscription: trioq.ChannelSubscription) -> list[Any]:
    return [x async for x in subscription]


async def readers_parked(
    cluster: trioq.Cluster, name: str, count: int, interval: float = procs.POLL_INTERVAL
) -> None:
    """Wait until ``count`` reads of channel ``name`` wait at the scheduler (bound it).

    Polled every ``interval`` seconds: nothing tells the test when a read parks.
    """
    state = cluster.scheduler.state
    while True:
        if any(c["name"] == name and c["readers"] == count for c in state.channels.status()):
            return
        await trio.sleep(interval)


async def test_every_subscriber_sees_every_element_in_one_order_and_stop_ends_them_all() -> None:
    async with trioq.open_cluster() as cluster:
        with trio.fail_after(WAIT):
            async with (
                connected(cluster, "a") as a,
                connected(cluster, "b") as b,
                connected(cluster, "reader") as reader,
            ):
                chan_a, chan_b = a.channel("log"), b.channel("log")
                await chan_a.append("before")
                await chan_a.flush()
                seen: dict[int, list[Any]] = {}

                async def subscriber(i: int) -> None:
                    seen[i] = [x async for x in reader.channel("log")]

                async with trio.open_nursery() as nursery:
                    for i in range(3):
                        nursery.start_soon(subscriber, i)
                    await readers_parked(cluster, "log", 3)  # all caught up and following
                    for i in range(20):
                        await (chan_a if i % 2 else chan_b).append(("a" if i % 2 else "b", i))
                    await chan_b.extend([("b", "x"), ("b", "y")])
                    await chan_a.flush()
                    await chan_b.flush()
                    await chan_b.stop()
                assert seen[0] == seen[1] == seen[2]
                assert seen[0] == await a.channel("log").snapshot()
                assert seen[0][0] == "before" and len(seen[0]) == 23
                assert [x for x in seen[0][1:] if x[0] == "a"] == [
                    ("a", i) for i in range(1, 20, 2)
                ]
                assert [x for x in seen[0][1:] if x[0] == "b"] == [
                    *[("b", i) for i in range(0, 20, 2)],
                    ("b", "x"),
                    ("b", "y"),
                ]
                ended = reader.channel("log").subscribe(23)
                with pytest.raises(trio.EndOfChannel):  # stopped: a new subscriber ends too
                    await ended.receive()


async def test_maxlen_keeps_the_newest_elements_and_a_late_subscriber_replays_them() -> None:
    async with trioq.open_cluster() as cluster, connected(cluster, "c") as client:
        with trio.fail_after(WAIT):
            chan = client.channel("recent", maxlen=3)
            assert chan.maxlen == 3
            await chan.extend(range(5))
            await chan.append(5)
            await chan.flush()
            assert await chan.snapshot() == [3, 4, 5]
            late = client.channel("recent").subscribe()
            assert [await late.receive() for _ in range(3)] == [3, 4, 5]
            assert late.position == 6
            await chan.extend([6, 7, 8, 9])
            await chan.stop()
            assert await drain(late) == [7, 8, 9]  # 6 was trimmed before it read on
            assert await drain(client.channel("recent").subscribe()) == [7, 8, 9]
            async with connected(cluster, "other") as other:
                other_chan = other.channel("recent")
                assert await other_chan.snapshot() == [7, 8, 9]
                assert other_chan.maxlen == 3  # reported by the scheduler


async def test_subscribe_from_a_number_skips_what_came_before_and_waits_for_what_is_ahead() -> None:
    async with trioq.open_cluster() as cluster, connected(cluster, "c") as client:
        with trio.fail_after(WAIT):
            chan = client.channel("numbered")
            await chan.extend(["zero", "one", "two"])
            assert await drain_n(chan.subscribe(start=1), 2) == ["one", "two"]
            ahead = chan.subscribe(start=5)
            got: list[Any] = []
            async with trio.open_nursery() as nursery:

                async def follow() -> None:
                    got.extend(await drain(ahead))

                nursery.start_soon(follow)
                await readers_parked(cluster, "numbered", 1)
                await chan.extend(["three", "four", "five", "six"])
                await chan.stop()
            assert got == ["five", "six"]
            with pytest.raises(ValueError, match="start must be an int >= 0, got -1"):
                chan.subscribe(start=-1)


async def drain_n(subscription: trioq.ChannelSubscription, n: int) -> list[Any]:
    return [await subscription.receive() for _ in range(n)]


async def test_a_closed_subscription_raises_closed_resource_error_and_the_channel_goes_on() -> None:
    async with trioq.open_cluster() as cluster, connected(cluster, "c") as client:
        with trio.fail_after(WAIT):
            chan = client.channel("closing")
            await chan.extend([1, 2])
            sub = chan.subscribe()
            assert await sub.receive() == 1
            await sub.aclose()
            with pytest.raises(trio.ClosedResourceError):
                await sub.receive()
            assert await chan.snapshot() == [1, 2]


async def test_flush_returns_once_every_append_is_applied_by_the_scheduler() -> None:
    async with trioq.open_cluster() as cluster, connected(cluster, "c") as client:
        with trio.fail_after(WAIT):
            chan = client.channel("flushed")
            await chan.flush()  # nothing in flight: returns
            for i in range(300):
                await chan.append(i)
            await chan.flush()
            (info,) = cluster.scheduler.state.channels.status()
            assert info["appended"] == 300  # applied, seen without another round trip
            await chan.append(300)
            with trio.move_on_after(0) as scope:  # a cancelled flush changes nothing
                await chan.flush()
            assert scope.cancelled_caught
            await chan.flush()
            assert await chan.snapshot() == list(range(301))


async def test_a_flush_that_waits_while_more_is_appended_returns_once_all_are_applied() -> None:
    async with trioq.open_cluster() as cluster, connected(cluster, "c") as client:
        with trio.fail_after(WAIT):
            chan = client.channel("flushed")
            await chan.append(b"x" * 10_000_000)  # takes many round trips of the loop to land
            flushed = trio.Event()

            async def flusher(task_status: trio.TaskStatus[None]) -> None:
                task_status.started()
                await chan.flush()  # reached before the test runs on
                flushed.set()

            async with trio.open_nursery() as nursery:
                await nursery.start(flusher)  # the flusher waits for the big append
                assert not flushed.is_set() and chan._in_flight >= 1  # white box: the setting
                await chan.append("small")
                await chan.flush()  # both are applied now
                (info,) = cluster.scheduler.state.channels.status()
                assert info["appended"] == 2
                with trio.fail_after(1):  # nothing is left for the first flush to wait for
                    await flushed.wait()


async def test_a_refused_append_surfaces_on_flush_once_and_later_appends_go_through() -> None:
    async with trioq.open_cluster() as cluster, connected(cluster, "c") as client:
        with trio.fail_after(WAIT):
            chan = client.channel("refusing")
            await chan.append(trioq.Future(client, "never-submitted"))
            with pytest.raises(LookupError, match="never-submitted"):
                await chan.flush()
            await chan.flush()  # seen once
            await chan.append("fine")
            await chan.flush()
            assert await chan.snapshot() == ["fine"]


async def test_an_append_after_stop_raises_closed_resource_error_on_flush_or_next_append() -> None:
    async with trioq.open_cluster() as cluster, connected(cluster, "c") as client:
        with trio.fail_after(WAIT):
            chan = client.channel("stopped")
            await chan.append(1)
            await chan.stop()
            await chan.stop()  # idempotent
            await chan.append(2)  # pipelined: the refusal comes later
            with pytest.raises(trio.ClosedResourceError, match="channel 'stopped' was stopped"):
                await chan.flush()
            await chan.append(3)
            await chan.snapshot()  # a round trip: the refusal of 3 is in
            with pytest.raises(trio.ClosedResourceError):
                await chan.append(4)  # raised before 4 is sent
            await chan.flush()
            assert await chan.snapshot() == [1]


async def test_a_second_handle_with_another_maxlen_raises_value_error() -> None:
    async with trioq.open_cluster() as cluster, connected(cluster, "c") as client:
        with trio.fail_after(WAIT):
            await client.channel("sized", maxlen=2).snapshot()
            other = client.channel("sized", maxlen=5)
            await other.snapshot()  # a round trip: the refusal of the open is in
            with pytest.raises(ValueError, match="exists with maxlen 2, not 5"):
                await other.append("x")
            with pytest.raises(ValueError, match="maxlen must be a positive int or None"):
                client.channel("sized", maxlen=0)


async def test_a_snapshot_and_a_subscriber_read_a_channel_larger_than_one_read_batch() -> None:
    count = 2 * READ_BATCH + 37
    async with trioq.open_cluster() as cluster, connected(cluster, "c") as client:
        with trio.fail_after(WAIT):
            chan = client.channel("big")
            assert await chan.snapshot() == []
            await chan.extend(range(count))
            assert await chan.snapshot() == list(range(count))
            await chan.stop()
            assert await drain(chan.subscribe()) == list(range(count))
            bounded = client.channel("big-bounded", maxlen=READ_BATCH + 1)
            await bounded.extend(range(count))
            assert await bounded.snapshot() == list(range(count - READ_BATCH - 1, count))


# Shrinking only replays timings that need not recur; report unshrunk.
@settings(max_examples=20, phases=[Phase.explicit, Phase.reuse, Phase.generate])
@given(
    deadlines=st.lists(
        st.sampled_from([0.0, 0.0001]) | st.floats(0.0, 0.003), min_size=1, max_size=40
    ),
    every=st.integers(1, 4),
)
async def test_a_cancelled_receive_loses_nothing_and_repeats_nothing(
    deadlines: list[float], every: int
) -> None:
    count = 30
    async with (
        trioq.open_cluster() as cluster,
        connected(cluster, "writer") as writer,
        connected(cluster, "reader") as reader,
    ):
        with trio.fail_after(WAIT):
            out, into = writer.channel("cancel"), reader.channel("cancel")
            await out.flush()
            subscription = into.subscribe()
            got: list[Any] = []
            cancelled = 0

            async def write() -> None:
                for i in range(count):
                    if i % every == 0:  # each burst finds the reader waiting at the scheduler
                        await readers_parked(cluster, "cancel", 1, interval=0.0005)
                    await out.append(i)
                await out.stop()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(write)
                for deadline in deadlines:
                    with trio.move_on_after(deadline) as scope:
                        try:
                            got.append(await subscription.receive())
                        except trio.EndOfChannel:
                            break
                    cancelled += scope.cancelled_caught
                got += await drain(subscription)
            assert got == list(range(count)), f"{cancelled} receives were cancelled"
            assert cluster.scheduler.state.channels.status()[0]["readers"] == 0


@pytest.mark.parametrize("ended_first", [False, True], ids=["pending", "ended"])
async def test_a_future_appended_by_a_client_that_left_is_awaited_by_another(
    ended_first: bool,
) -> None:
    async with trioq.open_cluster(workers=1) as cluster:
        with trio.fail_after(WAIT):
            async with connected(cluster, "submitter") as submitter:
                future = await submitter.submit(gated, "go", 42)
                chan = submitter.channel("futures")
                await chan.append(Order("order", future))
                await chan.append({"nested": [future]})
                await chan.flush()
            key = future.key
            assert key in tasks_of(cluster)  # the channel keeps it
            if ended_first:
                GATES["go"].set()
                await procs.poll_until(lambda: tasks_of(cluster)[key].status == "finished")
                assert tasks_of(cluster)[key].holders == set()
            async with connected(cluster, "reader") as reader:
                first, second = await reader.channel("futures").snapshot()
                assert first.future.key == second["nested"][0].key == key
                GATES["go"].set()
                assert await first.future == 42
                assert await reader.gather([second["nested"][0]]) == [42]
            assert key in tasks_of(cluster)  # still retained by the channel


async def test_a_trimmed_future_is_forgotten_once_nothing_else_holds_it() -> None:
    async with trioq.open_cluster(workers=1) as cluster:
        with trio.fail_after(WAIT):
            async with connected(cluster, "submitter") as submitter:
                kept_alone = await submitter.submit(add, 1, 2)
                read_too = await submitter.submit(add, 3, 4)
                assert await submitter.gather([kept_alone, read_too]) == [3, 7]
                chan = submitter.channel("trimmed", maxlen=2)
                await chan.extend([{"f": kept_alone}, Order("o", read_too)])
                await chan.flush()
            assert {kept_alone.key, read_too.key} <= set(tasks_of(cluster))
            async with connected(cluster, "reader") as reader:
                # Reading only the second element, the reader holds read_too alone.
                order = await reader.channel("trimmed").subscribe(start=1).receive()
                async with connected(cluster, "appender") as appender:
                    more = appender.channel("trimmed")
                    await more.append("pushes the first out")
                    await more.flush()
                    assert kept_alone.key not in tasks_of(cluster)
                    assert read_too.key in tasks_of(cluster)
                    await more.append("pushes the second out")
                    await more.flush()
                    assert read_too.key in tasks_of(cluster)  # the reader holds it
                    assert await order.future == 7
            await procs.poll_until(lambda: read_too.key not in tasks_of(cluster))
            cluster.scheduler.state.validate()


async def test_the_status_command_lists_channels_and_queue_subscribers() -> None:
    from trioq.__main__ import format_status

    async with trioq.open_cluster() as cluster, trioq.connect(cluster.address) as client:
        with trio.fail_after(WAIT):
            news = client.channel("news", maxlen=2)
            await news.extend(["a", "b", "c"])
            await news.flush()
            await client.queue("jobs").put(1)
            text = format_status(await client.status())
    channels = text.split("channels:")[1].split("clients:")[0]
    header, row = channels.strip().splitlines()
    assert header.split() == ["name", "length", "appended", "maxlen", "readers", "stopped"]
    assert row.split() == ["news", "2", "3", "2", "0", "False"]
    assert "subscribers" in text.split("queues:")[1].split("variables:")[0]
