"""Picking the answers to one request out of a ``SchedulerState`` instruction list.

Shared by the sans-IO tests of queues, tasks, channels and references.
"""

from __future__ import annotations

from trioq._scheduler.state import Fail, Notice, Out, Reply, SchedulerState
from trioq._wire.flow_messages import Barrier, BarrierDone
from trioq._wire.messages import Message


def with_barriers_answered(state: SchedulerState, out: Out) -> Out:
    """``out`` with every ``Barrier`` answered at once and left out.

    Clients with nothing in flight answer at once; the sans-IO tests play
    such clients unless they test barriers themselves (test_barriers_state).
    """
    result: Out = []
    todo = list(out)
    while todo:
        instruction = todo.pop(0)
        if isinstance(instruction, Notice) and isinstance(instruction.message, Barrier):
            done = BarrierDone(instruction.message.number)
            todo.extend(state.handle(instruction.conn, 0, done))
        else:
            result.append(instruction)
    return result


def answers(out: Out, conn: int, rid: int) -> list[Reply | Fail]:
    """Every ``Reply`` or ``Fail`` for request ``rid`` of connection ``conn``."""
    return [i for i in out if isinstance(i, Reply | Fail) and (i.conn, i.request_id) == (conn, rid)]


def reply_to(out: Out, conn: int, rid: int) -> Message:
    """The ``Reply`` message for (conn, rid) in ``out``; fails if absent or a ``Fail``."""
    found = answers(out, conn, rid)
    assert len(found) == 1, f"expected one answer to {conn}/{rid}, got {out}"
    assert isinstance(found[0], Reply), found[0]
    return found[0].message


def fail_of(out: Out, conn: int, rid: int) -> Fail:
    """The ``Fail`` for (conn, rid) in ``out``; fails if absent or a ``Reply``."""
    found = answers(out, conn, rid)
    assert len(found) == 1, f"expected one answer to {conn}/{rid}, got {out}"
    assert isinstance(found[0], Fail), found[0]
    return found[0]
