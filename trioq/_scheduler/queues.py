"""The scheduler's records of queues and connections, and put-credit arithmetic (sans-IO).

Rules:

* A ``QueueRecord`` holds one queue's items, its waiting getters and
  putters, its leases count, its endpoint counts and its push subscribers.
  Room is ``maxsize - queued - leased - reserved``: an item counts until a
  client acknowledged consuming it, and ``reserved`` is put credit held by
  connections (a connection holding credit may put that many items without
  waiting for an answer).
* Credit is granted only while nobody waits for room and the queue takes
  puts, up to a window per connection (``credit_window``).  Revoking asks
  each holder to return what it has not used: until the return arrives,
  the credit still counts against the room, so a bounded queue never holds
  more than ``maxsize``.
* A ``ConnRecord`` holds what one connection has: its leases (items handed
  to it, not yet acknowledged), its parked requests and its endpoints.

Complexity: O(1) per grant; O(holders) per revocation or stop.
"""

from __future__ import annotations

import itertools
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from .._wire.messages import CreditNotice
from .instructions import Notice, Out

__all__ = [
    "CREDIT_WINDOW",
    "QueueRecord",
    "ConnRecord",
    "Subscriber",
    "end_lease",
    "broken_text",
    "closed_text",
]

CREDIT_WINDOW = 64  # most put credit one connection holds for one queue

_revocations = itertools.count(1)  # numbers every credit revocation, process-wide

_AFRESH = "; both ends are final: delete the queue (queue.delete()) to use its name afresh"


def broken_text(name: str) -> str:
    """Why a put on a broken queue is refused, and how to start over."""
    return f"every receive endpoint of queue {name!r} is closed{_AFRESH}"


def closed_text(name: str) -> str:
    """Why a put or a new send endpoint on a closed queue is refused, and how to start over."""
    return f"queue {name!r} was closed by its last send endpoint{_AFRESH}"


@dataclass(slots=True)
class Subscriber:
    """A connection items of a queue are pushed to (``QueueSubscribe``)."""

    window: int  # most pushed items it holds at once
    pushed: set[int] = field(default_factory=set)  # its leases that were pushed

    @property
    def free(self) -> int:
        return self.window - len(self.pushed)


@dataclass(slots=True)
class QueueRecord:
    """One named queue in the scheduler."""

    name: str
    maxsize: int
    items: deque[bytes] = field(default_factory=deque)
    getters: dict[tuple[int, int], int] = field(default_factory=dict)  # (conn, rid) -> max
    putters: dict[tuple[int, int], list[bytes]] = field(default_factory=dict)
    reserved: dict[int, int] = field(default_factory=dict)  # conn -> put credit (> 0)
    reserved_total: int = 0
    openers: set[int] = field(default_factory=set)  # connections that opened it
    revoking: dict[int, int] = field(default_factory=dict)  # conn -> revocation number
    leased: int = 0
    senders: int = 0
    receivers: int = 0
    closed: bool = False  # its last send endpoint closed
    broken: bool = False  # its last receive endpoint closed
    pushees: dict[int, Subscriber] = field(default_factory=dict)
    pulled: dict[int, set[int]] = field(default_factory=dict)  # conn -> leases got by a get
    peak: int = 0  # the most items queued and leased at once
    push_turn: deque[int] = field(default_factory=deque)  # subscribers, next served first

    def room(self) -> int:
        # Leased items are not consumed until acknowledged: they still take room.
        return self.maxsize - len(self.items) - self.leased - self.reserved_total

    def status(self) -> dict[str, Any]:
        """This queue's line in ``python -m trioq status``, as plain data."""
        return {
            "name": self.name,
            "size": len(self.items),
            "maxsize": self.maxsize,
            "leased": self.leased,
            "peak": self.peak,
            "getters": len(self.getters),
            "putters": len(self.putters),
            "senders": self.senders,
            "receivers": self.receivers,
            "closed": self.closed,
            "subscribers": len(self.pushees),
        }

    def validate(self) -> None:
        """Check the invariants this record keeps by itself (the state checks the rest)."""
        assert self.reserved_total == sum(self.reserved.values()), "credit sum is wrong"
        assert all(held > 0 for held in self.reserved.values()), "empty or negative credit"
        assert set(self.revoking) <= set(self.reserved), "revoking credit nobody holds"
        if self.maxsize:
            assert len(self.items) + self.leased + self.reserved_total <= max(
                self.maxsize, len(self.items) + self.leased
            ), "credit beyond the room"
        assert not (self.items and self.getters), "items wait while getters wait"
        assert sorted(self.push_turn) == sorted(self.pushees), "push turn is off"
        if self.items:
            assert all(sub.free <= 0 for sub in self.pushees.values()), "push stalled"
        assert not ((self.closed or self.broken) and self.putters), "refused puts wait"
        assert self.senders >= 0 and self.receivers >= 0, "negative endpoint count"

    # -- put credit ----------------------------------------------------------------

    def credit_window(self) -> int:
        """The most credit one connection holds: a quarter of the bound, at most 64."""
        return max(1, min(CREDIT_WINDOW, self.maxsize // 4))

    def grant(self, conn: int) -> int:
        """Top this connection's credit up towards the window; return the grant.

        Unbounded queues need no credit (clients know from ``maxsize`` 0), and
        none is granted while someone waits for room or the queue refuses puts.
        """
        if not self.maxsize or self.putters or self.closed or self.broken:
            return 0
        if conn in self.revoking:
            return 0
        held = self.reserved.get(conn, 0)
        grant = min(self.credit_window() - held, self.room())
        if grant <= 0:
            return 0
        self.set_held(conn, held + grant)
        return grant

    def offer_credit(self, conn: int, out: Out) -> None:
        """Grant what ``grant`` allows, as a notice (before any reply it goes with)."""
        grant = self.grant(conn)
        if grant:
            out.append(Notice(conn, CreditNotice(self.name, grant, "grant")))

    def set_held(self, conn: int, held: int) -> None:
        """Set the credit ``conn`` holds (0 releases it, and any revocation of it)."""
        self.reserved_total += held - self.reserved.get(conn, 0)
        if held:
            self.reserved[conn] = held
        else:
            self.reserved.pop(conn, None)
            self.revoking.pop(conn, None)

    def revoke_credit(self, out: Out) -> None:
        """Ask every holder to return its credit (``CreditReturn``).

        Until a holder's return arrives its credit still counts against the
        room, because credited puts it sent before seeing the request may be
        on their way: the queue never holds more than ``maxsize``.
        """
        for conn, held in self.reserved.items():
            if held > 0 and conn not in self.revoking:
                revocation = next(_revocations)
                self.revoking[conn] = revocation
                out.append(Notice(conn, CreditNotice(self.name, revocation, "revoke")))

    def stop_credit(self, out: Out, action: str = "stop") -> None:
        """The queue refuses puts from now on: every opener must ask, not assume."""
        self.reserved.clear()
        self.reserved_total = 0
        self.revoking.clear()
        for conn in self.openers:
            out.append(Notice(conn, CreditNotice(self.name, 0, action)))


@dataclass(slots=True)
class ConnRecord:
    """What one connection has in the scheduler."""

    name: str
    address: str
    leases: dict[int, tuple[QueueRecord, bytes]] = field(default_factory=dict)
    next_lease: int = 1
    parked: dict[int, tuple[str, str]] = field(default_factory=dict)  # rid -> (kind, name)
    endpoints: dict[tuple[str, str], int] = field(default_factory=dict)


def end_lease(queue: QueueRecord, conn: int, lease: int) -> None:
    """A lease ended (consumed or returned): a pushed one frees a place in its window."""
    subscriber = queue.pushees.get(conn)
    if subscriber is not None:
        subscriber.pushed.discard(lease)
    pulled = queue.pulled.get(conn)
    if pulled is not None:
        pulled.discard(lease)
        if not pulled:
            del queue.pulled[conn]
