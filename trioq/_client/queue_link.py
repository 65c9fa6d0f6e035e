"""What one client knows about one queue, shared by all its handles: credit, leases, waiters.

Rules:

* ``buffer`` holds items leased to this client and not yet handed to a
  caller, oldest first.  Items that arrive (an answer to a get, a top-up,
  items a cancelled get gives back) go to the tasks waiting in ``get``
  first, in the order they started waiting, as trio's memory channels
  serve their receivers; only what is left stays in ``buffer``.  So a
  non-empty buffer means no task waits without items.
* One request at a time asks the scheduler for items on behalf of all
  waiting tasks (``fetching``) and a top-up (``top_up``) never waits
  there; when either ends without serving every waiter, the first waiter
  still without items is woken to ask next.
* Items nobody here will take go back to the queue (``give_back``): when
  this client's last receive endpoint closes, when the scheduler recalls
  them for a consumer elsewhere, and after ``IDLE_RETURN`` seconds
  untouched.  A top-up still in flight is returned with them, in one
  return, so the queue gets them back in order.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

import trio

from .._wire.messages import QueueReturn

if TYPE_CHECKING:
    from .session import Session

__all__ = ["QueueLink", "Waiter", "IDLE_RETURN", "Leased"]

#: Seconds prefetched items may sit untouched before they go back to the queue.
IDLE_RETURN = 0.5

Leased = tuple[int, bytes]  # (lease number, item)


class Waiter:
    """One task waiting in ``get`` for up to ``want`` items."""

    __slots__ = ("want", "items", "event", "asking")

    def __init__(self, want: int) -> None:
        self.want = want
        self.items: list[Leased] = []  # handed to it, not yet taken
        self.event = trio.Event()  # set when it has items or should ask the scheduler
        #: While it asks the scheduler for the line: cancelled if it is served
        #: meanwhile (a late answer, say), so it does not wait on for more.
        self.asking: trio.CancelScope | None = None


class QueueLink:
    """What one client knows about one queue; shared by all its handles."""

    __slots__ = (
        "name",
        "maxsize",
        "credit",
        "unlimited",
        "buffer",
        "error",
        "fetching",
        "waiters",
        "receivers",
        "released",
        "top_up",
        "returns_after_top_up",
        "unconfirmed_closes",
        "last_touched",
        "confirmed",
        "session",
    )

    def __init__(self, session: Session, name: str, maxsize: int) -> None:
        self.session = session
        self.name = name
        self.maxsize = maxsize
        self.credit = 0  # put credit granted by the scheduler
        self.unlimited = False  # unbounded queue: puts need no credit
        self.buffer: deque[Leased] = deque()  # leased, not yet handed out
        self.error: BaseException | None = None  # from a put nobody waited for
        self.fetching = False  # a get of this client waits in the scheduler for everyone
        self.waiters: deque[Waiter] = deque()  # tasks waiting in get, first come first
        self.receivers = 0  # this client's open receive endpoints
        self.released = False  # its last receive endpoint closed: nobody here takes items
        self.top_up: trio.Event | None = None  # a top-up in flight: set when it is answered
        self.returns_after_top_up: list[int] = []  # returned with the top-up's leases, in order
        self.unconfirmed_closes = 0  # receive endpoint closes the scheduler has not answered
        self.last_touched = trio.current_time()  # when a get last took from ``buffer``
        self.confirmed = False  # ``maxsize`` is the scheduler's (an open was answered)

    # -- credit ------------------------------------------------------------------------

    def can_put(self, n: int) -> bool:
        """May ``n`` items be put without asking?  Not while a receive close is unanswered:
        the scheduler may answer that nobody reads any more."""
        return (self.unlimited or self.credit >= n) and not self.unconfirmed_closes

    def on_info(self, maxsize: int, accepting: bool) -> None:
        self.maxsize = maxsize
        self.confirmed = True
        self.unlimited = maxsize == 0 and accepting

    def on_credit(self, credit: int, action: str) -> int | None:
        """Apply a credit notice; returns the credit to send back, if asked."""
        if action == "grant":
            self.credit += credit
        elif action == "revoke":
            unused, self.credit = self.credit, 0
            return unused
        else:  # "stop", "deleted"
            self.credit = 0
            self.unlimited = False
            if action == "deleted":
                self.buffer.clear()  # leased from the deleted queue: gone with it
        return None

    # -- items arriving -------------------------------------------------------------------

    def deliver(self, leased: list[Leased], *, front: bool = False) -> None:
        """Hand arriving items to waiting tasks in order; keep the rest.

        ``front``: items given back by a get that did not take them; they
        are older than anything buffered.
        """
        if front:
            self.buffer.extendleft(reversed(leased))
        else:
            self.buffer.extend(leased)
        buffer = self.buffer
        for waiter in self.waiters:
            if not buffer:
                break
            if not waiter.items:
                take = min(waiter.want, len(buffer))
                waiter.items = [buffer.popleft() for _ in range(take)]
                waiter.event.set()
                if waiter.asking is not None:
                    waiter.asking.cancel()  # its request is withdrawn; what it brings is delivered
        self.nudge()
        if self.released and not self.waiters:
            self.give_back()

    def nudge(self) -> None:
        """Nobody is asking the scheduler: wake the first waiter without items to ask."""
        if self.fetching or self.top_up is not None:
            return
        for waiter in self.waiters:
            if not waiter.items:
                waiter.event.set()
                return

    # -- items going back -------------------------------------------------------------------

    def give_back(self) -> None:
        """Return every buffered item to the queue (a top-up in flight goes back too)."""
        if not self.buffer:
            return
        leases = [lease for lease, _ in self.buffer]
        self.buffer.clear()
        if not self.session.usable():
            return  # the scheduler returns them itself when the connection ends
        if self.top_up is not None:
            self.returns_after_top_up.extend(leases)
        else:
            self.session.send_oneway(QueueReturn(leases))

    def on_top_up(self, leased: list[Leased]) -> None:
        """A top-up's answer: deliver it, or return it if items went back meanwhile.

        Items given back while it was on its way wait in
        ``returns_after_top_up``; they go back with its items in one return,
        so the queue gets them back in order.
        """
        self.top_up = None
        if self.released or self.returns_after_top_up:
            leases = self.returns_after_top_up + [lease for lease, _ in leased]
            self.returns_after_top_up = []
            if leases and self.session.usable():
                self.session.send_oneway(QueueReturn(leases))
            self.nudge()
            return
        self.deliver(leased)

    def recall(self) -> None:
        """The scheduler asks for unclaimed items: a consumer elsewhere waits."""
        if not self.waiters:
            self.give_back()

    def return_if_idle(self, now: float) -> bool:
        """Give back items untouched for ``IDLE_RETURN`` seconds; True if some remain."""
        if not self.buffer:
            return False
        if now - self.last_touched >= IDLE_RETURN and not self.waiters:
            self.give_back()
            return False
        return True


async def return_idle_leases(session: Session) -> None:
    """Runs with a session: gives back items prefetched and left untouched.

    A consumer that stops calling ``get`` (its task ended, it moved on)
    would otherwise hold them until it closes, out of every other
    consumer's reach.
    """
    while True:
        await trio.sleep(IDLE_RETURN / 2)
        now = trio.current_time()
        for link in session.queue_links.values():
            link.return_if_idle(now)
