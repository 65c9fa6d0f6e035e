"""Holding one connection's requests until every other connection's earlier frames are in (sans-IO).

Why: a client's call can return before its frames reach the scheduler
(opening an endpoint, a submit, a credited put are written later).  If
another client then does something that depends on it, its frames may
arrive first: the scheduler would count a close before an open that
happened earlier, or refuse a reference to a task it has not yet heard of.
Where the answer would be final (a queue's last endpoint of a kind closes,
a referenced task is unknown), the state holds the asking connection and
sends every other connection a ``Barrier``; each answers ``BarrierDone``
after what it sent before, since frames on one connection arrive in order.
Once all have answered (or left), the held requests run again, in order.

Rules:

* A held connection's later requests wait behind the one that is held, so
  its own order holds; ``BarrierDone`` is never held (two connections
  holding each other would wait forever).
* The request that caused a hold runs again with ``replay`` set: it is not
  held a second time, so a reference that is still unknown is refused then.
* A connection that leaves answers every barrier it was asked; what it had
  held runs before it is gone.

Complexity: O(connections) per barrier; holds are rare (ends of streams,
references that race their submit).
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Iterable
from typing import Any

from .._wire.flow_messages import Barrier
from .instructions import Notice, Out

__all__ = ["Barriers", "Held"]

Held = deque[tuple[int, Any]]  # (request id, message) in arrival order


class Barriers:
    """The barriers in progress and the requests each one holds."""

    def __init__(self) -> None:
        self._numbers = itertools.count(1)
        self._unanswered: dict[int, set[int]] = {}  # barrier -> connections yet to answer
        self._holder: dict[int, int] = {}  # barrier -> the connection it holds
        self._held: dict[int, Held] = {}  # held connection -> its requests, in order

    def holds(self, conn: int) -> bool:
        return conn in self._held

    def hold(self, conn: int, rid: int, message: Any, others: Iterable[int], out: Out) -> bool:
        """Hold ``conn`` behind a barrier to ``others``; False if there is nobody to ask."""
        asked = set(others)
        asked.discard(conn)
        if not asked:
            return False
        number = next(self._numbers)
        self._unanswered[number] = asked
        self._holder[number] = conn
        self._held[conn] = deque([(rid, message)])
        for other in sorted(asked):
            out.append(Notice(other, Barrier(number)))
        return True

    def defer(self, conn: int, rid: int, message: Any) -> None:
        """A request from a held connection: it waits behind the held ones."""
        self._held[conn].append((rid, message))

    def requeue(self, conn: int, rest: Held) -> None:
        """Requests left over from a replay that held ``conn`` again: after the new hold."""
        self._held[conn].extend(rest)

    def answered(self, conn: int, number: int) -> list[int]:
        """``conn`` answered barrier ``number``; the connections it releases."""
        unanswered = self._unanswered.get(number)
        if unanswered is None:
            return []
        unanswered.discard(conn)
        return self._release_done([number])

    def release(self, conn: int) -> Held:
        """Take the requests ``conn`` held (it is no longer held)."""
        for number in [n for n, holder in self._holder.items() if holder == conn]:
            del self._holder[number]
            self._unanswered.pop(number, None)
        return self._held.pop(conn, deque())

    def left(self, conn: int) -> list[int]:
        """``conn`` is gone: it answers everything; the connections that releases."""
        numbers = [n for n, unanswered in self._unanswered.items() if conn in unanswered]
        for number in numbers:
            self._unanswered[number].discard(conn)
        return self._release_done(numbers)

    def _release_done(self, numbers: list[int]) -> list[int]:
        released = []
        for number in numbers:
            if not self._unanswered.get(number, True):
                del self._unanswered[number]
                released.append(self._holder.pop(number))
        return released

    def status(self) -> int:
        """Connections held now (for ``status``)."""
        return len(self._held)

    def validate(self, conns: Iterable[int]) -> None:
        known = set(conns)
        assert set(self._holder) == set(self._unanswered), "a barrier lost its holder"
        assert set(self._holder.values()) <= set(self._held), "a holder is not held"
        for unanswered in self._unanswered.values():
            assert unanswered <= known, "a barrier waits for a gone connection"
