"""Futures as picklable references: serializer, scheduler counting, and end to end.

Three layers, each tested on its own terms:

* The serializer (no trio): ``dumps_item`` wraps an item holding references
  in an ``EXT_REFERENCES`` envelope listing their keys; ``references_of``
  reads that list without decoding the item, and never mistakes plain data
  for an envelope, however big (an ext 32 value starts with 0xC9 too).
  ``Handle`` below stands in for a future: registered as a reference type,
  and pickling as one (``__reduce__`` through ``note_reference`` and
  ``resolve_reference``) when it sits inside a pickled object.
* ``SchedulerState`` (sans-IO, ``validate()`` after every step): a stored
  or leased item and a variable value keep the tasks they refer to; the
  connection an item or value is handed to holds them; a task is forgotten
  exactly when the last reference goes.  A hypothesis state machine checks
  that against a model.
* End to end in one process (``trioq.open_cluster``): a future put in a
  queue or variable by a client that then leaves is awaited by another
  client; the scheduler forgets it once nothing refers to it.  Task
  functions are module level (pickled by reference) and wait on ``GATES``,
  trio events shared with the test.

Every wait is bounded by ``trio.fail_after``; nothing synchronises by
sleeping.  Conditions nothing notifies the test of (the scheduler's own
state) are polled, bounded too.
"""

from __future__ import annotations

import itertools
import pickle
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import msgpack
import procs
import pytest
import trio
from gated_tasks import GATES, Order, add, gated
from hypothesis import given
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
from trioq import SerializationError
from trioq._scheduler.state import Notice, SchedulerState
from trioq._wire.messages import (
    Ack,
    ErrorNotice,
    Items,
    Message,
    Ok,
    PutDone,
    QueueDelete,
    QueueGet,
    QueueInfo,
    QueueOpen,
    QueuePut,
    QueueReturn,
    Value,
    VariableDelete,
    VariableGet,
    VariableSet,
)
from trioq._wire.pickling import full_serializer, pickle_dumps, pickle_loads
from trioq._wire.serialize import (
    EXT_PICKLE,
    EXT_REFERENCE,
    EXT_REFERENCES,
    EXT_TUPLE,
    FIRST_FREE_EXT,
    Pickled,
    Reference,
    Serializer,
    note_reference,
    references_of,
    resolve_reference,
)
from trioq._wire.task_messages import (
    Submit,
    TaskAssign,
    TaskDone,
    TaskFinished,
    TaskOutcome,
    TaskRelease,
    TaskResult,
    TaskWatch,
    WorkerHello,
    WorkerReady,
)

WAIT = 10.0  # seconds any one step may take (generous: CI boxes are slow)
BIG = 70_000  # bytes: past 65535, so msgpack writes an ext 32 (first byte 0xC9)


# -- a stand-in for a future ---------------------------------------------------------------


class Handle:
    """Refers to a cluster object by key, like ``trioq.Future`` (same ``__reduce__``)."""

    def __init__(self, key: str) -> None:
        self.key = key

    def __eq__(self, other: object) -> bool:
        return type(other) is Handle and other.key == self.key

    def __hash__(self) -> int:
        return hash(self.key)

    def __repr__(self) -> str:
        return f"Handle({self.key!r})"

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        note_reference(self.key)
        return resolve_reference, (self.key,)


@dataclass
class Box:
    """A custom object: not msgpack, so it travels pickled (with whatever it holds)."""

    content: Any


class Blob:
    """A type registered with its own extension code (carried as raw bytes)."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __eq__(self, other: object) -> bool:
        return type(other) is Blob and other.data == self.data

    def __hash__(self) -> int:
        return hash(self.data)


def client_serializer() -> Serializer:
    """What a client or worker has: pickles, and resolves references to ``Handle``s."""
    serializer = full_serializer()
    serializer.register_reference(Handle, lambda handle: handle.key)
    serializer.resolver = Handle
    return serializer


def envelope(body: bytes) -> bytes:
    """A reference envelope around ``body`` (a key list, then the item), by hand."""
    return b"\xc9" + len(body).to_bytes(4, "big") + bytes([EXT_REFERENCES]) + body


def keys_in(value: Any) -> list[str]:
    """The keys of the ``Handle``s in ``value``, in order of first appearance."""
    found: dict[str, None] = {}

    def walk(obj: Any) -> None:
        if type(obj) is Handle:
            found.setdefault(obj.key, None)
        elif isinstance(obj, list | tuple):
            for each in obj:
                walk(each)
        elif isinstance(obj, dict):
            for each in obj.values():
                walk(each)
        elif type(obj) is Box:
            walk(obj.content)

    walk(value)
    return list(found)


int64 = st.integers(min_value=-(2**63), max_value=2**64 - 1)
scalars = st.none() | st.booleans() | int64 | st.floats(allow_nan=False) | st.text() | st.binary()
handles = st.text(max_size=12).map(Handle)


def nested(leaves: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.recursive(
        leaves,
        lambda inner: (
            st.lists(inner, max_size=5)
            | st.lists(inner, max_size=5).map(tuple)
            | st.dictionaries(st.text(max_size=5), inner, max_size=5)
            | inner.map(Box)
        ),
        max_leaves=25,
    )


plain = nested(scalars)
with_handles = nested(scalars | handles)


# -- the serializer ------------------------------------------------------------------------


@given(with_handles)
def test_an_item_round_trips_with_its_references_resolved_by_the_reader(value: Any) -> None:
    serializer = client_serializer()
    assert serializer.loads(serializer.dumps_item(value)) == value


@given(with_handles)
def test_the_envelope_lists_every_referenced_key_once_even_inside_pickled_objects(
    value: Any,
) -> None:
    data = client_serializer().dumps_item(value)
    expected = keys_in(value)
    listed = references_of(data)
    if not expected:
        assert listed is None
    else:
        assert listed is not None
        assert sorted(listed) == sorted(expected)
        assert len(set(listed)) == len(listed)


@given(plain)
def test_an_item_without_references_is_plain_serialized_data_and_no_envelope(value: Any) -> None:
    serializer = client_serializer()
    data = serializer.dumps_item(value)
    assert data == serializer.dumps(value)
    assert references_of(data) is None


def big_values() -> list[Any]:
    """Plain values whose serialized form is one ext 32 (so it starts with 0xC9)."""
    tricky = msgpack.packb(["looks-like-a-key"]) + b"\x00" * BIG  # a key list up front
    return [
        (b"x" * BIG,),  # a tuple: EXT_TUPLE
        Box(b"y" * BIG),  # pickled: EXT_PICKLE
        Pickled(tricky),  # opaque pickled bytes that start like a key list
        Blob(tricky),  # a registered extension type
        Blob(bytes([EXT_REFERENCES]) * BIG),
    ]


@pytest.mark.parametrize("value", big_values(), ids=["tuple", "pickled", "opaque", "ext", "4s"])
def test_a_big_ext_value_starts_with_0xc9_and_is_still_not_an_envelope(value: Any) -> None:
    serializer = client_serializer()
    serializer.register(Blob, FIRST_FREE_EXT, lambda blob: blob.data, Blob)
    data = serializer.dumps_item(value)
    assert data[0] == 0xC9
    assert data[5] in {EXT_TUPLE, EXT_PICKLE, FIRST_FREE_EXT}
    assert references_of(data) is None
    assert data == serializer.dumps(value)
    reader = Serializer() if type(value) is Pickled else serializer  # not real pickle bytes
    assert reader.loads(data) == value


@given(
    code=st.integers(FIRST_FREE_EXT, 127),
    size=st.integers(0, 2 * BIG),
    fill=st.integers(0, 255),
    wrap=st.booleans(),
)
def test_no_plain_value_of_any_size_is_taken_for_an_envelope(
    code: int, size: int, fill: int, wrap: bool
) -> None:
    serializer = Serializer()
    serializer.register(Blob, code, lambda blob: blob.data, Blob)
    value: Any = Blob(bytes([fill]) * size)
    if wrap:
        value = (value,)
    data = serializer.dumps_item(value)
    assert references_of(data) is None
    state = SchedulerState()  # nor does the scheduler count or refuse it
    state.connect(1)
    state.handle(1, 1, QueueOpen("q", 0))
    out = state.handle(1, 2, QueuePut("q", [data], False, True))
    assert isinstance(reply_to(out, 1, 2), PutDone)
    state.validate()


def test_a_big_item_with_references_is_still_read_from_its_envelope_header() -> None:
    serializer = client_serializer()
    data = serializer.dumps_item([b"z" * BIG, Handle("a"), Box(Handle("b"))])
    assert references_of(data) == ["a", "b"]
    assert serializer.loads(data) == [b"z" * BIG, Handle("a"), Box(Handle("b"))]


def test_the_scheduler_reads_references_as_reference_and_writes_them_back_unchanged() -> None:
    data = client_serializer().dumps_item({"f": Handle("k"), "t": (1, Handle("j"))})
    scheduler = Serializer()  # no pickler, no resolver: the scheduler's kind
    seen = scheduler.loads(data)
    assert seen == {"f": Reference("k"), "t": (1, Reference("j"))}
    again = scheduler.dumps_item(seen)
    assert references_of(again) == references_of(data) == ["k", "j"]
    assert client_serializer().loads(again) == {"f": Handle("k"), "t": (1, Handle("j"))}


def test_the_same_reference_twice_is_listed_once() -> None:
    data = client_serializer().dumps_item([Handle("k"), Handle("k"), Box([Handle("k")])])
    assert references_of(data) == ["k"]


def test_dumps_lists_nothing_only_dumps_item_makes_an_envelope() -> None:
    serializer = client_serializer()
    data = serializer.dumps([Handle("k")])
    assert references_of(data) is None
    assert serializer.loads(data) == [Handle("k")]  # the bare reference still resolves


def test_a_pickled_reference_read_outside_a_client_raises_serialization_error() -> None:
    with pytest.raises(SerializationError, match="only be deserialized by a trioq client"):
        pickle_loads(pickle_dumps(Box(Handle("k"))))
    with pytest.raises(SerializationError, match="'k' can only be deserialized"):
        pickle.loads(pickle.dumps(trioq.Future(None, "k")))  # type: ignore[arg-type]


def test_a_real_future_pickled_inside_an_object_is_listed_and_resolved() -> None:
    serializer = full_serializer()
    serializer.register_reference(trioq.Future, lambda future: future.key)
    serializer.resolver = Handle  # what the reading client makes of the key
    future = trioq.Future(None, "task-1")  # type: ignore[arg-type]
    data = serializer.dumps_item([future, Box({"inner": future})])
    assert references_of(data) == ["task-1"]
    assert serializer.loads(data) == [Handle("task-1"), Box({"inner": Handle("task-1")})]


def test_reference_types_and_codes_cannot_be_registered_twice_or_taken() -> None:
    serializer = client_serializer()
    with pytest.raises(ValueError, match="Handle is already registered"):
        serializer.register_reference(Handle, lambda handle: handle.key)
    with pytest.raises(ValueError, match="Handle is already registered"):
        serializer.register(Handle, FIRST_FREE_EXT, lambda handle: b"", Handle)
    for code in (EXT_REFERENCE, EXT_REFERENCES):
        with pytest.raises(ValueError, match=f"extension code {code} is taken by trioq"):
            serializer.register(Blob, code, lambda blob: blob.data, Blob)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "OutOfData"),
        (msgpack.packb({"a": 1}), "not a list of keys"),
        (msgpack.packb([1, 2]), "not a list of keys"),
        (msgpack.packb([b"bytes-key"], use_bin_type=True), "not a list of keys"),
        (msgpack.packb(["ok", None]), "not a list of keys"),
        (b"\xc1", "malformed reference envelope"),  # a byte msgpack never uses
        (b"\x92\xa1a", "malformed reference envelope"),  # a list cut short
    ],
)
def test_a_malformed_envelope_raises_value_error(body: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        references_of(envelope(body))


@given(st.binary(max_size=40))
def test_any_bytes_after_an_envelope_header_give_a_key_list_or_value_error(body: bytes) -> None:
    try:
        keys = references_of(envelope(body))
    except ValueError as exc:
        assert str(exc).startswith("malformed reference envelope")
    else:
        assert type(keys) is list and all(type(key) is str for key in keys)


def test_an_item_too_short_for_an_envelope_header_is_no_envelope() -> None:
    for data in [b"", b"\xc9", b"\xc9\x00\x00\x00\x00"]:
        assert references_of(data) is None


# -- the scheduler's counting (sans-IO) --------------------------------------------------------

SUBMITTER, WORKER = 1, 9  # the client that submits every task, and the worker that runs them
ALICE, BOB, CAROL = 2, 3, 4  # other clients


def item(*keys: str, tag: str = "") -> bytes:
    """An item referring to ``keys``, as a client's ``dumps_item`` makes it."""
    return Serializer().dumps_item([tag, [Reference(key) for key in keys]])


class Harness:
    """A ``SchedulerState`` with a worker, fresh request ids and ``validate()`` after each step."""

    def __init__(self, *conns: int) -> None:
        self.state = SchedulerState()
        self._rids = itertools.count(1)
        for conn in (SUBMITTER, *conns):
            self.connect(conn)
        self.connect(WORKER)
        rid, out = self.send(WORKER, WorkerHello("w", 1, []))
        assert isinstance(reply_to(out, WORKER, rid), Ok)

    def connect(self, conn: int) -> None:
        self.state.connect(conn, f"conn-{conn}", f"127.0.0.1:{1000 + conn}")
        self.state.validate()

    def send(self, conn: int, message: Message, rid: int | None = None) -> tuple[int, list[Any]]:
        rid = next(self._rids) if rid is None else rid
        out = with_barriers_answered(self.state, self.state.handle(conn, rid, message))
        self.state.validate()
        return rid, out

    def ok(self, conn: int, message: Message) -> Message:
        rid, out = self.send(conn, message)
        return reply_to(out, conn, rid)

    def oneway(self, conn: int, message: Message) -> list[Any]:
        return self.send(conn, message, rid=0)[1]

    def disconnect(self, conn: int) -> list[Any]:
        out = with_barriers_answered(self.state, self.state.disconnect(conn))
        self.state.validate()
        return out

    # -- tasks -----------------------------------------------------------------------

    def submit(self, key: str) -> None:
        assert isinstance(self.ok(SUBMITTER, Submit(key, b"payload", 0, None, 0)), Ok)

    def finish(self, key: str) -> list[Any]:
        """The worker asks for work, gets ``key`` and finishes it."""
        out = self.oneway(WORKER, WorkerReady(1))
        assert [n.message.key for n in out if isinstance(n.message, TaskAssign)] == [key]
        return self.oneway(WORKER, TaskDone(key, True, b"result"))

    def finished_task(self, key: str) -> None:
        self.submit(key)
        self.finish(key)

    def known(self, key: str) -> bool:
        return key in self.state.tasks._tasks

    def refs(self, key: str) -> int:
        return self.state.tasks._tasks[key].refs

    def holders(self, key: str) -> set[int]:
        return set(self.state.tasks._tasks[key].holders)

    # -- queues and variables --------------------------------------------------------------

    def open(self, conn: int, name: str = "q", maxsize: int = 0) -> None:
        assert isinstance(self.ok(conn, QueueOpen(name, maxsize)), QueueInfo)

    def put(self, conn: int, *items: bytes, name: str = "q") -> None:
        assert isinstance(self.ok(conn, QueuePut(name, list(items), False, True)), PutDone)

    def get(self, conn: int, name: str = "q", max_items: int = 1) -> Items:
        reply = self.ok(conn, QueueGet(name, max_items, False))
        assert isinstance(reply, Items), reply
        return reply

    def set(self, conn: int, name: str, value: bytes) -> None:
        assert isinstance(self.ok(conn, VariableSet(name, value)), Ok)


def finished_notices(out: list[Any], conn: int) -> list[tuple[str, str]]:
    return [
        (i.message.key, i.message.status)
        for i in out
        if isinstance(i, Notice) and i.conn == conn and isinstance(i.message, TaskFinished)
    ]


def test_a_queued_item_keeps_a_finished_task_after_its_submitter_goes() -> None:
    h = Harness(ALICE)
    h.finished_task("t")
    h.open(SUBMITTER)
    h.put(SUBMITTER, item("t"))
    assert h.refs("t") == 1
    h.disconnect(SUBMITTER)
    assert h.known("t") and h.holders("t") == set()
    lease = h.get(ALICE).first_lease
    assert h.holders("t") == {ALICE}  # handed over: Alice holds it from now on
    h.oneway(ALICE, Ack([lease]))
    assert h.known("t") and h.refs("t") == 0
    h.oneway(ALICE, TaskRelease("t"))
    assert not h.known("t")


def test_a_task_is_forgotten_when_its_last_holder_disconnects_after_the_item_is_acked() -> None:
    h = Harness(ALICE)
    h.finished_task("t")
    h.open(SUBMITTER)
    h.put(SUBMITTER, item("t"))
    lease = h.get(ALICE).first_lease
    h.oneway(ALICE, Ack([lease]))
    h.oneway(SUBMITTER, TaskRelease("t"))
    assert h.known("t")  # Alice still holds it
    h.disconnect(ALICE)
    assert not h.known("t")


def test_a_task_that_ends_while_only_an_item_refers_to_it_is_kept() -> None:
    h = Harness(ALICE)
    h.submit("t")
    h.open(SUBMITTER)
    h.put(SUBMITTER, item("t"))
    h.disconnect(SUBMITTER)
    h.finish("t")
    assert h.known("t") and h.state.tasks._tasks["t"].status == "finished"
    h.get(ALICE)
    rid, out = h.send(ALICE, TaskResult("t", False))
    message = reply_to(out, ALICE, rid)
    assert isinstance(message, TaskOutcome) and message.data == b"result"


def test_the_reader_of_a_pending_task_is_told_when_it_ends() -> None:
    h = Harness(ALICE)
    h.submit("t")
    h.open(SUBMITTER)
    h.put(SUBMITTER, item("t"))
    h.get(ALICE)
    out = h.finish("t")
    assert finished_notices(out, ALICE) == [("t", "finished")]


def test_a_returned_or_abandoned_lease_goes_back_to_the_queue_still_counted() -> None:
    h = Harness(ALICE, BOB, CAROL)
    h.finished_task("t")
    h.open(SUBMITTER)
    h.put(SUBMITTER, item("t"))
    h.oneway(SUBMITTER, TaskRelease("t"))
    lease = h.get(ALICE).first_lease
    assert isinstance(h.ok(ALICE, QueueReturn([lease])), Ok)
    h.oneway(ALICE, TaskRelease("t"))
    assert h.refs("t") == 1 and h.holders("t") == set()  # back in the queue, still counted
    h.get(BOB)
    h.disconnect(BOB)  # unacknowledged: back in the queue again
    assert h.refs("t") == 1 and h.holders("t") == set()
    lease = h.get(CAROL).first_lease
    h.oneway(CAROL, Ack([lease]))
    assert h.known("t")
    h.oneway(CAROL, TaskRelease("t"))
    assert not h.known("t")


def test_each_item_counts_and_the_task_goes_with_the_last_one() -> None:
    h = Harness(ALICE)
    h.finished_task("t")
    h.open(SUBMITTER)
    h.put(SUBMITTER, item("t", tag="one"), item("t", tag="two"))
    h.disconnect(SUBMITTER)
    assert h.refs("t") == 2
    leases = h.get(ALICE, max_items=2)
    h.oneway(ALICE, Ack([leases.first_lease]))
    h.oneway(ALICE, TaskRelease("t"))
    assert h.known("t") and h.refs("t") == 1  # the second item is still leased
    h.oneway(ALICE, Ack([leases.first_lease + 1]))
    assert not h.known("t")


def test_a_key_listed_twice_in_a_hand_made_envelope_is_counted_and_dropped_alike() -> None:
    h = Harness(ALICE)
    h.finished_task("t")
    h.open(SUBMITTER)
    h.put(SUBMITTER, envelope(msgpack.packb(["t", "t"]) + msgpack.packb(None)))
    h.disconnect(SUBMITTER)
    assert h.refs("t") == 2
    lease = h.get(ALICE).first_lease
    h.oneway(ALICE, Ack([lease]))
    h.disconnect(ALICE)
    assert not h.known("t")


def test_one_item_may_refer_to_several_tasks() -> None:
    h = Harness(ALICE)
    h.finished_task("a")
    h.finished_task("b")
    h.open(SUBMITTER)
    h.put(SUBMITTER, item("a", "b"))
    h.disconnect(SUBMITTER)
    assert (h.refs("a"), h.refs("b")) == (1, 1)
    lease = h.get(ALICE).first_lease
    assert h.holders("a") == h.holders("b") == {ALICE}
    h.oneway(ALICE, Ack([lease]))
    h.oneway(ALICE, TaskRelease("a"))
    assert not h.known("a") and h.known("b")
    h.disconnect(ALICE)
    assert not h.known("b")


def test_deleting_a_queue_drops_the_references_of_its_queued_items() -> None:
    h = Harness(ALICE)
    h.finished_task("t")
    h.open(SUBMITTER)
    h.put(SUBMITTER, item("t"), item("t"))
    h.disconnect(SUBMITTER)
    assert isinstance(h.ok(ALICE, QueueDelete("q")), Ok)
    assert not h.known("t")


@pytest.mark.parametrize("ending", ["ack", "return", "disconnect"])
def test_a_lease_of_a_deleted_queue_drops_its_references_when_it_ends(ending: str) -> None:
    h = Harness(ALICE, BOB)
    h.finished_task("t")
    h.open(SUBMITTER)
    h.put(SUBMITTER, item("t"))
    h.disconnect(SUBMITTER)
    lease = h.get(ALICE).first_lease
    h.oneway(ALICE, TaskRelease("t"))
    assert isinstance(h.ok(BOB, QueueDelete("q")), Ok)
    h.open(BOB)  # a new queue under the old name does not get the item back
    assert h.refs("t") == 1
    if ending == "ack":
        h.oneway(ALICE, Ack([lease]))
    elif ending == "return":
        assert isinstance(h.ok(ALICE, QueueReturn([lease])), Ok)
    else:
        h.disconnect(ALICE)
    assert not h.known("t")
    assert list(h.state._queues["q"].items) == []


def test_an_item_waiting_for_room_is_counted_once_it_is_stored() -> None:
    h = Harness(ALICE)
    h.finished_task("t")
    h.open(SUBMITTER, maxsize=1)
    h.put(SUBMITTER, item(tag="filler"))
    rid, out = h.send(SUBMITTER, QueuePut("q", [item("t")], False, True))
    assert not answers(out, SUBMITTER, rid)  # it waits for room
    assert h.refs("t") == 0  # parked, not stored
    lease = h.get(ALICE).first_lease
    out = h.oneway(ALICE, Ack([lease]))  # room: the parked put is stored
    assert isinstance(reply_to(out, SUBMITTER, rid), PutDone)
    assert h.refs("t") == 1
    h.disconnect(SUBMITTER)
    assert h.known("t")


def test_a_variable_value_keeps_its_tasks_until_overwritten_or_deleted() -> None:
    h = Harness(ALICE)
    for key in ["a", "b"]:
        h.finished_task(key)
    h.set(SUBMITTER, "v", item("a"))
    h.set(SUBMITTER, "w", item("b"))
    h.disconnect(SUBMITTER)
    assert h.known("a") and h.known("b")
    h.set(ALICE, "v", item("a", tag="again"))  # the same task again: never dropped between
    assert h.refs("a") == 1
    h.set(ALICE, "v", Serializer().dumps_item("no references"))
    assert not h.known("a")
    assert isinstance(h.ok(ALICE, VariableDelete("w")), Ok)
    assert not h.known("b")


def test_a_variable_reader_holds_the_tasks_of_the_value_it_read() -> None:
    h = Harness(ALICE, BOB)
    h.finished_task("t")
    h.set(SUBMITTER, "v", item("t"))
    h.disconnect(SUBMITTER)
    assert isinstance(h.ok(ALICE, VariableGet("v", False)), Value)
    assert h.holders("t") == {ALICE}
    assert isinstance(h.ok(BOB, VariableDelete("v")), Ok)
    assert h.known("t")  # Alice read it: she holds it
    h.disconnect(ALICE)
    assert not h.known("t")


def test_a_parked_variable_reader_holds_the_tasks_of_the_value_that_wakes_it() -> None:
    h = Harness(ALICE)
    h.finished_task("t")
    rid, out = h.send(ALICE, VariableGet("v", True))
    assert out == []
    out = h.send(SUBMITTER, VariableSet("v", item("t")))[1]
    assert isinstance(reply_to(out, ALICE, rid), Value)
    assert h.holders("t") == {SUBMITTER, ALICE}
    h.disconnect(SUBMITTER)
    assert isinstance(h.ok(ALICE, VariableDelete("v")), Ok)
    assert h.known("t")
    h.oneway(ALICE, TaskRelease("t"))
    assert not h.known("t")


def test_task_watch_makes_a_holder_and_reports_an_ended_task_at_once() -> None:
    h = Harness(ALICE, BOB)
    h.finished_task("done")
    h.submit("pending")
    out = h.oneway(ALICE, TaskWatch("done"))
    assert finished_notices(out, ALICE) == [("done", "finished")]
    assert h.oneway(BOB, TaskWatch("pending")) == []
    assert h.holders("done") == {SUBMITTER, ALICE}
    out = h.finish("pending")
    assert finished_notices(out, BOB) == [("pending", "finished")]
    h.disconnect(SUBMITTER)
    h.disconnect(BOB)
    assert h.known("done") and not h.known("pending")
    assert h.oneway(ALICE, TaskWatch("unknown")) == []  # nothing to hold, nothing to say


def test_a_put_or_set_referring_to_an_unknown_task_is_refused_with_lookup_error() -> None:
    h = Harness(ALICE)
    h.open(ALICE)
    rid, out = h.send(ALICE, QueuePut("q", [item("never-submitted")], False, True))
    assert fail_of(out, ALICE, rid).kind == "LookupError"
    rid, out = h.send(ALICE, VariableSet("v", item("never-submitted")))
    assert fail_of(out, ALICE, rid).kind == "LookupError"
    assert list(h.state._queues["q"].items) == []
    assert not h.known("never-submitted")


def test_an_item_naming_a_released_task_is_refused_so_a_later_task_of_its_key_counts() -> None:
    """Only references to live tasks are stored, so each drop uncounts the task it counted."""
    h = Harness(ALICE)
    h.open(ALICE)
    h.finished_task("k")
    h.put(ALICE, item("k", tag="old"))
    lease = h.get(ALICE).first_lease
    h.oneway(ALICE, Ack([lease]))
    h.disconnect(SUBMITTER)
    h.oneway(ALICE, TaskRelease("k"))
    assert not h.known("k")
    rid, out = h.send(ALICE, QueuePut("q", [item("k", tag="stale")], False, True))
    assert fail_of(out, ALICE, rid).kind == "LookupError"
    h.finished_task("k")  # a new task under the old key (keys are the submitter's choice)
    h.put(ALICE, item("k", tag="new"))
    assert h.refs("k") == 1


MALFORMED = envelope(msgpack.packb({"not": "a list"}) + msgpack.packb(None))


def test_a_put_with_a_malformed_envelope_is_refused_and_changes_nothing() -> None:
    h = Harness(ALICE)
    h.finished_task("t")
    h.open(ALICE)
    rid, out = h.send(ALICE, QueuePut("q", [item("t"), MALFORMED], False, True))
    failure = fail_of(out, ALICE, rid)
    assert failure.kind == "ValueError"
    assert failure.text == "malformed reference envelope: not a list of keys"
    assert list(h.state._queues["q"].items) == []
    assert h.refs("t") == 0  # all or none: the good item was not stored either


def test_a_one_way_put_with_a_malformed_envelope_is_reported_as_an_error_notice() -> None:
    h = Harness(ALICE)
    h.open(ALICE)
    out = h.oneway(ALICE, QueuePut("q", [MALFORMED], True, True))
    (notice,) = [i.message for i in out if isinstance(i, Notice)]
    assert isinstance(notice, ErrorNotice)
    assert (notice.queue, notice.kind) == ("q", "ValueError")
    assert list(h.state._queues["q"].items) == []


def test_a_variable_set_with_a_malformed_envelope_is_refused_and_keeps_the_old_value() -> None:
    h = Harness(ALICE)
    h.finished_task("t")
    h.set(SUBMITTER, "v", item("t"))
    rid, out = h.send(ALICE, VariableSet("v", envelope(b"\x92\xa1a")))
    assert fail_of(out, ALICE, rid).kind == "ValueError"
    assert h.state.variables._values["v"] == item("t")
    assert h.refs("t") == 1


# -- the counting against a model ---------------------------------------------------------------

KEYS = ["t0", "t1", "t2"]
VARIABLES = ["v0", "v1"]


class ReferenceMachine(RuleBasedStateMachine):
    """Clients put, get, ack, return, release, watch and leave; queues and variables come
    and go.  A task is kept exactly while a connection holds it or a stored item or
    value (queued, leased or set) refers to it; once forgotten it never comes back.

    The model does not predict which item a get returns: it reads it from the reply
    and checks it was queued.
    """

    @initialize()
    def start(self) -> None:
        self.h = Harness()
        for key in KEYS:
            self.h.finished_task(key)
        self.h.open(SUBMITTER)
        self.conns: set[int] = {SUBMITTER}
        self.next_conn = 100
        self.queue: Counter[bytes] = Counter()  # what the model says is queued
        self.queue_exists = True
        self.generation = 0  # bumped by every delete of the queue
        self.leases: dict[int, dict[int, tuple[bytes, int]]] = {SUBMITTER: {}}
        self.variables: dict[str, bytes] = {}
        self.holders: dict[str, set[int]] = {key: {SUBMITTER} for key in KEYS}
        self.alive = set(KEYS)
        self.tags = itertools.count()

    # -- the model's verdict -------------------------------------------------------------

    def stored(self) -> list[bytes]:
        items = list(self.queue.elements()) + list(self.variables.values())
        items += [entry[0] for leases in self.leases.values() for entry in leases.values()]
        return items

    def settle(self) -> None:
        referred = {key for data in self.stored() for key in references_of(data) or []}
        for key in list(self.alive):
            if not self.holders[key] and key not in referred:
                self.alive.discard(key)

    def hand(self, conn: int, data: bytes) -> None:
        for key in references_of(data) or []:
            if key in self.alive:
                self.holders[key].add(conn)

    # -- rules ---------------------------------------------------------------------------

    @rule()
    def connect(self) -> None:
        conn = self.next_conn
        self.next_conn += 1
        self.h.connect(conn)
        self.conns.add(conn)
        self.leases[conn] = {}

    @precondition(lambda self: self.conns)
    @rule(data=st.data())
    def disconnect(self, data: st.DataObject) -> None:
        conn = data.draw(st.sampled_from(sorted(self.conns)))
        self.h.disconnect(conn)
        self.conns.discard(conn)
        self.give_back(self.leases.pop(conn))
        for holders in self.holders.values():
            holders.discard(conn)
        self.settle()

    def give_back(self, leases: dict[int, tuple[bytes, int]]) -> None:
        for data, generation in leases.values():
            if self.queue_exists and generation == self.generation:
                self.queue[data] += 1

    @precondition(lambda self: self.conns and self.queue_exists)
    @rule(data=st.data(), keys=st.lists(st.sampled_from(KEYS), max_size=3))
    def put(self, data: st.DataObject, keys: list[str]) -> None:
        conn = data.draw(st.sampled_from(sorted(self.conns)))
        made = item(*keys, tag=str(next(self.tags)))
        if not set(keys) <= self.alive:  # a reference to a forgotten task is refused
            rid, out = self.h.send(conn, QueuePut("q", [made], False, True))
            assert fail_of(out, conn, rid).kind == "LookupError"
            return
        self.h.put(conn, made)
        self.queue[made] += 1

    @precondition(lambda self: self.conns and self.queue_exists)
    @rule(data=st.data())
    def get(self, data: st.DataObject) -> None:
        conn = data.draw(st.sampled_from(sorted(self.conns)))
        rid, out = self.h.send(conn, QueueGet("q", 1, False))
        if not self.queue:
            assert fail_of(out, conn, rid).kind == "WouldBlock"
            return
        reply = reply_to(out, conn, rid)
        assert isinstance(reply, Items)
        (got,) = reply.items
        assert self.queue[got] > 0, "an item the model does not have queued"
        self.queue[got] -= 1
        self.queue += Counter()  # drop zero counts
        self.leases[conn][reply.first_lease] = (got, self.generation)
        self.hand(conn, got)

    def some_lease(self, data: st.DataObject) -> tuple[int, int]:
        leased = [(c, lease) for c in sorted(self.conns) for lease in sorted(self.leases[c])]
        return data.draw(st.sampled_from(leased))

    def has_leases(self) -> bool:
        return any(self.leases[c] for c in self.conns)

    @precondition(has_leases)
    @rule(data=st.data())
    def ack(self, data: st.DataObject) -> None:
        conn, lease = self.some_lease(data)
        self.h.oneway(conn, Ack([lease]))
        del self.leases[conn][lease]
        self.settle()

    @precondition(has_leases)
    @rule(data=st.data())
    def give_back_one(self, data: st.DataObject) -> None:
        conn, lease = self.some_lease(data)
        assert isinstance(self.h.ok(conn, QueueReturn([lease])), Ok)
        self.give_back({lease: self.leases[conn].pop(lease)})
        self.settle()

    @precondition(lambda self: self.conns)
    @rule(data=st.data(), key=st.sampled_from(KEYS))
    def release(self, data: st.DataObject, key: str) -> None:
        conn = data.draw(st.sampled_from(sorted(self.conns)))
        self.h.oneway(conn, TaskRelease(key))
        self.holders[key].discard(conn)
        self.settle()

    @precondition(lambda self: self.conns)
    @rule(data=st.data(), key=st.sampled_from(KEYS))
    def watch(self, data: st.DataObject, key: str) -> None:
        conn = data.draw(st.sampled_from(sorted(self.conns)))
        out = self.h.oneway(conn, TaskWatch(key))
        if key in self.alive:
            self.holders[key].add(conn)
            assert finished_notices(out, conn) == [(key, "finished")]
        else:
            assert out == []

    @precondition(lambda self: self.conns and self.queue_exists)
    @rule(data=st.data())
    def delete_queue(self, data: st.DataObject) -> None:
        conn = data.draw(st.sampled_from(sorted(self.conns)))
        assert isinstance(self.h.ok(conn, QueueDelete("q")), Ok)
        self.queue.clear()
        self.queue_exists = False
        self.generation += 1
        self.settle()

    @precondition(lambda self: self.conns and not self.queue_exists)
    @rule(data=st.data())
    def open_queue(self, data: st.DataObject) -> None:
        self.h.open(data.draw(st.sampled_from(sorted(self.conns))))
        self.queue_exists = True

    @precondition(lambda self: self.conns)
    @rule(
        data=st.data(),
        name=st.sampled_from(VARIABLES),
        keys=st.lists(st.sampled_from(KEYS), max_size=2),
    )
    def set_variable(self, data: st.DataObject, name: str, keys: list[str]) -> None:
        conn = data.draw(st.sampled_from(sorted(self.conns)))
        made = item(*keys, tag=str(next(self.tags)))
        if not set(keys) <= self.alive:  # a reference to a forgotten task is refused
            rid, out = self.h.send(conn, VariableSet(name, made))
            assert fail_of(out, conn, rid).kind == "LookupError"
            return
        self.h.set(conn, name, made)
        self.variables[name] = made
        self.settle()

    @precondition(lambda self: self.conns)
    @rule(data=st.data(), name=st.sampled_from(VARIABLES))
    def read_variable(self, data: st.DataObject, name: str) -> None:
        conn = data.draw(st.sampled_from(sorted(self.conns)))
        rid, out = self.h.send(conn, VariableGet(name, False))
        if name not in self.variables:
            assert fail_of(out, conn, rid).kind == "LookupError"
            return
        reply = reply_to(out, conn, rid)
        assert isinstance(reply, Value) and reply.value == self.variables[name]
        self.hand(conn, reply.value)

    @precondition(lambda self: self.conns)
    @rule(data=st.data(), name=st.sampled_from(VARIABLES))
    def delete_variable(self, data: st.DataObject, name: str) -> None:
        conn = data.draw(st.sampled_from(sorted(self.conns)))
        assert isinstance(self.h.ok(conn, VariableDelete(name)), Ok)
        self.variables.pop(name, None)
        self.settle()

    @invariant()
    def tasks_are_kept_exactly_while_referred_to(self) -> None:
        if not hasattr(self, "h"):
            return
        assert set(self.h.state.tasks._tasks) == self.alive
        for key in self.alive:
            assert self.h.holders(key) == self.holders[key], key
            counted = sum((references_of(d) or []).count(key) for d in self.stored())
            assert self.h.refs(key) == counted, key


TestReferenceMachine = ReferenceMachine.TestCase


# -- end to end, in one process ------------------------------------------------------------------


def wrap(kind: str, future: trioq.Future) -> Any:
    if kind == "plain":
        return future
    if kind == "nested":
        return {"futures": [1, (future, "x")]}
    return Order("order", future)


def unwrap(kind: str, value: Any) -> trioq.Future:
    if kind == "plain":
        return value  # type: ignore[no-any-return]
    if kind == "nested":
        assert value["futures"][0] == 1 and value["futures"][1][1] == "x"
        return value["futures"][1][0]  # type: ignore[no-any-return]
    assert isinstance(value, Order) and value.name == "order"
    return value.future


KINDS = ["plain", "nested", "object"]


def tasks_of(cluster: trioq.Cluster) -> dict[str, Any]:
    """The scheduler's tasks (white box)."""
    return cluster.scheduler.state.tasks._tasks


def task_status(cluster: trioq.Cluster, key: str) -> str | None:
    task = tasks_of(cluster).get(key)
    return None if task is None else task.status


async def wait_for(condition: Callable[[], bool]) -> None:
    """Poll a condition nothing notifies us of, such as the scheduler's state (bound it)."""
    await procs.poll_until(condition)


@asynccontextmanager
async def connected(cluster: trioq.Cluster, name: str) -> AsyncIterator[trioq.Client]:
    """A client; once it has left, the scheduler has dropped its connection too."""
    async with trioq.connect(cluster.address, name=name) as client:
        yield client
    await wait_for(lambda: client.id not in cluster.scheduler.state._conns)


async def submit_and_leave(
    cluster: trioq.Cluster, put: Callable[[trioq.Client, trioq.Future], Any]
) -> str:
    """A client submits a gated task, hands its future to ``put``, and leaves."""
    async with connected(cluster, "submitter") as client:
        future = await client.submit(gated, "go", 42)
        await put(client, future)
    return future.key


@pytest.mark.parametrize("ended_first", [False, True], ids=["pending", "ended"])
@pytest.mark.parametrize("kind", KINDS)
async def test_a_future_put_in_a_queue_by_a_client_that_left_is_awaited_by_another(
    kind: str, ended_first: bool
) -> None:
    async with trioq.open_cluster(workers=1) as cluster:
        with trio.fail_after(WAIT):

            async def put(client: trioq.Client, future: trioq.Future) -> None:
                await client.queue("futures").put(wrap(kind, future))

            key = await submit_and_leave(cluster, put)
            if ended_first:
                GATES["go"].set()
                await wait_for(lambda: task_status(cluster, key) == "finished")
                assert tasks_of(cluster)[key].holders == set()  # only the item keeps it
            async with connected(cluster, "reader") as reader:
                future = unwrap(kind, await reader.queue("futures").get())
                assert isinstance(future, trioq.Future) and future.key == key
                GATES["go"].set()
                assert await future == 42
                assert future.done() and future.status == "finished"


@pytest.mark.parametrize("kind", KINDS)
async def test_a_future_set_in_a_variable_by_a_client_that_left_is_awaited_by_another(
    kind: str,
) -> None:
    async with trioq.open_cluster(workers=1) as cluster:
        with trio.fail_after(WAIT):

            async def put(client: trioq.Client, future: trioq.Future) -> None:
                await client.variable("result").set(wrap(kind, future))

            key = await submit_and_leave(cluster, put)
            GATES["go"].set()
            await wait_for(lambda: task_status(cluster, key) == "finished")
            async with connected(cluster, "reader") as reader:
                future = unwrap(kind, await reader.variable("result").get())
                assert await future == 42
                assert await unwrap(kind, await reader.variable("result").get_nowait()) == 42


async def test_as_completed_and_done_follow_futures_read_from_a_queue() -> None:
    async with trioq.open_cluster(workers=1, nthreads=2) as cluster:
        with trio.fail_after(WAIT):
            async with connected(cluster, "submitter") as submitter:
                ended = await submitter.submit(add, 1, 2)
                assert await ended == 3
                running = await submitter.submit(gated, "go", "late")
                await submitter.queue("futures").put_batch([ended, running])
            async with connected(cluster, "reader") as reader:
                queue = reader.queue("futures")
                got_ended, got_running = await queue.get(), await queue.get()
                await wait_for(got_ended.done)  # told by the scheduler, never awaited
                assert got_ended.status == "finished"
                assert not got_running.done() and got_running.status == "pending"
                order = []
                async with trio.open_nursery() as nursery:

                    async def follow() -> None:
                        async for future in reader.as_completed([got_running, got_ended]):
                            order.append(future)
                            if future is got_ended:
                                GATES["go"].set()

                    nursery.start_soon(follow)
                assert order == [got_ended, got_running]
                assert got_running.done() and got_running.status == "finished"
                assert await reader.gather([got_ended, got_running]) == [3, "late"]


async def test_the_scheduler_forgets_a_task_once_the_last_reference_is_gone() -> None:
    async with trioq.open_cluster(workers=1) as cluster:
        with trio.fail_after(WAIT):
            async with connected(cluster, "submitter") as submitter:
                future = await submitter.submit(add, 2, 3)
                assert await future == 5
                await submitter.queue("futures").put({"f": future})
            key = future.key
            assert key in tasks_of(cluster)  # the queued item keeps it
            async with connected(cluster, "first") as first, connected(cluster, "second") as second:
                got = (await first.queue("futures").get())["f"]
                await first.variable("shared").set([got])
                await first.status()  # the acknowledgement has been applied
                assert tasks_of(cluster)[key].refs == 1  # the variable now
                assert await (await second.variable("shared").get())[0] == 5
                await second.variable("shared").delete()
                assert tasks_of(cluster)[key].refs == 0
                assert tasks_of(cluster)[key].holders == {first.id, second.id}
                await got.release()
                await first.status()
                assert key in tasks_of(cluster)  # the second reader holds it still
            await wait_for(lambda: key not in tasks_of(cluster))


async def test_a_future_read_back_by_its_own_client_is_its_own_future() -> None:
    async with trioq.open_cluster(workers=1) as cluster, trioq.connect(cluster.address) as client:
        with trio.fail_after(WAIT):
            future = await client.submit(add, 1)
            queue = client.queue("loop")
            await queue.put([future])
            assert (await queue.get())[0] is future
            await client.variable("loop").set(Order("o", future))
            assert (await client.variable("loop").get()).future is future


async def test_futures_passed_as_task_arguments_reach_the_task_as_their_results() -> None:
    """Task dependencies (as dask): a future anywhere in the arguments, a custom object
    included, is replaced by its task's result before the task runs."""
    async with (
        trioq.open_cluster(workers=1, nthreads=2) as cluster,
        trioq.connect(cluster.address) as client,
    ):
        with trio.fail_after(WAIT):
            first = await client.submit(gated, "go", 100)
            more = [await client.submit(add, i) for i in range(3)]
            outer = await client.submit(total, first, {"more": more}, Order("o", first))
            GATES["go"].set()
            assert await outer == 100 + 3 + 100


async def total(first: int, nested: dict[str, list[int]], order: Order) -> int:
    return first + sum(nested["more"]) + order.future  # type: ignore[operator]  # a future there, its result here


async def test_an_async_task_awaits_a_future_it_reads_from_a_queue_and_may_return_it() -> None:
    async with (
        trioq.open_cluster(workers=1, nthreads=2) as cluster,
        trioq.connect(cluster.address) as client,
    ):
        with trio.fail_after(WAIT):
            inner = await client.submit(gated, "go", 42)
            await client.queue("to-the-worker").put([inner])
            outer = await client.submit(take_and_await, "to-the-worker")
            GATES["go"].set()
            value, passed_back = await outer
            assert value == 42
            assert passed_back is inner  # read back by its own client: the same object


async def take_and_await(queue: str) -> tuple[int, trioq.Future]:
    """On the worker: read a future from ``queue`` through the worker's connection."""
    (future,) = await trioq.worker_client().queue(queue).get()
    return await future, future


async def test_a_malformed_envelope_sent_by_hand_is_refused_and_the_scheduler_serves_on() -> None:
    async with trioq.open_cluster(workers=1) as cluster, trioq.connect(cluster.address) as client:
        with trio.fail_after(WAIT):
            queue = client.queue("hand-made")
            await queue.qsize()  # opened
            with pytest.raises(ValueError, match="malformed reference envelope"):
                await client._session.request(
                    QueuePut("hand-made", [MALFORMED], False, True), PutDone
                )
            with pytest.raises(ValueError, match="malformed reference envelope"):
                await client._session.request(VariableSet("hand-made", MALFORMED), Ok)
            client._session.send_oneway(QueuePut("hand-made", [MALFORMED], True, True))
            await client.status()  # its error notice has arrived
            with pytest.raises(ValueError, match="malformed reference envelope"):
                await queue.put("after the one-way put")
            assert await queue.qsize() == 0
            with pytest.raises(LookupError):
                await client.variable("hand-made").get_nowait()
            await queue.put("still served")
            assert await queue.get() == "still served"
            async with trioq.connect(cluster.address) as other:
                assert await (await other.submit(add, 1, 1)) == 2
