"""The scheduler state holds a connection behind a barrier where an answer would be final.

Sans-IO: drives ``SchedulerState`` directly and plays every client by hand,
answering ``Barrier`` notices only when the test says so.
"""

from __future__ import annotations

from typing import Any

from trioq._scheduler.state import Fail, Notice, Reply, SchedulerState
from trioq._wire.flow_messages import Barrier, BarrierDone
from trioq._wire.messages import (
    EndpointClose,
    EndpointOpen,
    Ok,
    PutDone,
    QueueOpen,
    QueuePut,
    VariableSet,
)

Out = list[Any]


def state_with(*conns: int) -> SchedulerState:
    state = SchedulerState()
    for conn in conns:
        state.connect(conn)
    return state


def barriers_in(out: Out) -> dict[int, int]:
    """Connection -> barrier number, for every ``Barrier`` notice in ``out``."""
    return {
        i.conn: i.message.number
        for i in out
        if isinstance(i, Notice) and isinstance(i.message, Barrier)
    }


def open_receiver(state: SchedulerState, conn: int, rid: int) -> None:
    state.handle(conn, rid, QueueOpen("q", 0))
    state.handle(conn, 0, EndpointOpen("q", "receive"))


def test_closing_the_last_receiver_asks_every_other_connection_and_holds_the_closer() -> None:
    state = state_with(1, 2, 3)
    open_receiver(state, 1, 1)
    out = state.handle(1, 2, EndpointClose("q", "receive"))
    asked = barriers_in(out)
    assert set(asked) == {2, 3} and len(set(asked.values())) == 1
    assert [i for i in out if not isinstance(i, Notice)] == []  # no answer yet
    assert state.handle(1, 3, QueuePut("q", [b"x"], False, True)) == []  # held behind it
    state.validate()


def test_an_open_that_arrives_before_the_barrier_answer_keeps_the_queue_readable() -> None:
    state = state_with(1, 2)
    open_receiver(state, 1, 1)
    (number,) = barriers_in(state.handle(1, 2, EndpointClose("q", "receive"))).values()
    state.handle(1, 3, QueuePut("q", [b"x"], False, True))
    open_receiver(state, 2, 1)  # sent by 2 before it saw the barrier
    out = state.handle(2, 0, BarrierDone(number))
    assert Reply(1, 2, Ok()) in out
    assert Reply(1, 3, PutDone()) in out  # not BrokenResourceError: 2 reads
    state.validate()


def test_without_another_open_the_held_put_is_refused_as_broken_once_all_answered() -> None:
    state = state_with(1, 2, 3)
    open_receiver(state, 1, 1)
    asked = barriers_in(state.handle(1, 2, EndpointClose("q", "receive")))
    state.handle(1, 3, QueuePut("q", [b"x"], False, True))
    assert state.handle(2, 0, BarrierDone(asked[2])) == []  # 3 has not answered
    out = state.handle(3, 0, BarrierDone(asked[3]))
    fails = [i for i in out if isinstance(i, Fail)]
    assert [(f.request_id, f.kind) for f in fails] == [(3, "BrokenResourceError")]
    state.validate()


def test_a_connection_leaving_counts_as_its_answer() -> None:
    state = state_with(1, 2)
    open_receiver(state, 1, 1)
    state.handle(1, 2, EndpointClose("q", "receive"))
    state.handle(1, 3, QueuePut("q", [b"x"], False, True))
    out = state.disconnect(2)
    fails = [(i.request_id, i.kind) for i in out if isinstance(i, Fail)]
    assert fails == [(3, "BrokenResourceError")]
    state.validate()


def test_a_lone_connection_is_never_held() -> None:
    state = state_with(1)
    open_receiver(state, 1, 1)
    out = state.handle(1, 2, EndpointClose("q", "receive"))
    assert Reply(1, 2, Ok()) in out and barriers_in(out) == {}


def test_a_held_connection_that_leaves_still_waits_for_the_barrier() -> None:
    """Close the last sender, then leave: another connection's open in flight still counts."""
    state = state_with(1, 2)
    open_receiver(state, 1, 1)
    state.handle(2, 1, QueueOpen("q", 0))
    state.handle(1, 0, EndpointOpen("q", "send"))
    (number,) = barriers_in(state.handle(1, 2, EndpointClose("q", "send"))).values()
    state.disconnect(1)  # nothing of it applied yet: it is held
    state.handle(2, 0, EndpointOpen("q", "send"))  # sent by 2 before it saw the barrier
    out = state.handle(2, 0, BarrierDone(number))
    # 1's leaving takes the last receiver with it: one more barrier, then it is gone.
    (again,) = barriers_in(out).values()
    state.handle(2, 0, BarrierDone(again))
    status = {q["name"]: q for q in state.status()["queues"]}
    assert not status["q"]["closed"] and status["q"]["senders"] == 1
    assert status["q"]["receivers"] == 0
    assert [c["id"] for c in state.status()["clients"]] == [2]  # and 1 is gone
    state.validate()


def test_a_held_connection_that_leaves_has_its_requests_applied_in_order() -> None:
    state = state_with(1, 2)
    open_receiver(state, 1, 1)
    state.handle(2, 1, QueueOpen("q", 0))
    state.handle(2, 0, EndpointOpen("q", "receive"))
    state.handle(1, 0, EndpointOpen("q", "send"))
    (number,) = barriers_in(state.handle(1, 2, EndpointClose("q", "send"))).values()
    state.handle(1, 0, QueuePut("q", [b"late"], False, True))  # refused once applied
    state.disconnect(1)
    out = state.handle(2, 0, BarrierDone(number))
    for again in barriers_in(out).values():  # its leaving may need one more
        out += state.handle(2, 0, BarrierDone(again))
    status = {q["name"]: q for q in state.status()["queues"]}
    assert status["q"]["closed"] and status["q"]["size"] == 0
    assert not [i for i in out if isinstance(i, Reply | Fail) and i.conn == 2]
    state.validate()


def test_two_connections_held_behind_each_others_barriers_both_finish() -> None:
    """Each waits for the other's answer: answers are never held, so neither waits forever."""
    state = state_with(1, 2)
    state.handle(1, 1, QueueOpen("q1", 0))
    state.handle(1, 0, EndpointOpen("q1", "receive"))
    state.handle(2, 1, QueueOpen("q2", 0))
    state.handle(2, 0, EndpointOpen("q2", "receive"))
    (to_2,) = barriers_in(state.handle(1, 2, EndpointClose("q1", "receive"))).values()
    (to_1,) = barriers_in(state.handle(2, 2, EndpointClose("q2", "receive"))).values()
    out = state.handle(2, 0, BarrierDone(to_2)) + state.handle(1, 0, BarrierDone(to_1))
    assert Reply(1, 2, Ok()) in out and Reply(2, 2, Ok()) in out
    assert not state.barriers.holds(1) and not state.barriers.holds(2)
    state.validate()


def test_a_reference_to_an_unknown_task_waits_for_the_barrier_then_is_refused() -> None:
    from trioq._wire.serialize import Serializer

    serializer = Serializer()

    class Ref:
        pass

    serializer.register_reference(Ref, lambda _: "task-unknown")
    value = serializer.dumps_item(Ref())
    state = state_with(1, 2)
    out = state.handle(1, 1, VariableSet("v", value))
    (number,) = barriers_in(out).values()
    out = state.handle(2, 0, BarrierDone(number))
    assert [(i.request_id, i.kind) for i in out if isinstance(i, Fail)] == [(1, "LookupError")]
    state.validate()
