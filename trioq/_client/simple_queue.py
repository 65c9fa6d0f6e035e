"""``SimpleQueue``: Fiber's queue, with its two ways of handing items to consumers.

Rules:

* ``mode="pull"``: a consumer's ``get`` asks the scheduler for one item, so
  an item goes to whichever consumer asks next: load-balanced by demand (a
  slow consumer takes fewer items).  It is a ``Queue`` that never
  prefetches.
* ``mode="push"``: a consumer subscribes on its first ``get``; the scheduler
  then deals items round-robin to subscribers ahead of their requests, up
  to ``window`` leased to each.  ``get`` takes from that local buffer, so
  it costs no round trip (lowest overhead) but the split ignores speed: a
  slow consumer still gets its turn.
* Either way an item handed to a consumer is leased until consumed: a
  consumer that closes returns what it holds to the head of the queue, and
  one that vanishes has it returned by the scheduler.  No item is lost.
"""

from __future__ import annotations

import contextlib
from collections import deque
from typing import TYPE_CHECKING, Any, Literal

import trio

from .._wire.messages import Ok, Pushed, QueueReturn, QueueSubscribe, QueueUnsubscribe
from .queue import Queue
from .session import CLOSE_TIMEOUT

if TYPE_CHECKING:
    from types import TracebackType

    from .session import Session

__all__ = ["SimpleQueue"]

Mode = Literal["pull", "push"]


class SimpleQueue:
    """A named queue with Fiber's pull or push dispatch; ``client.simple_queue()``.

    ``put`` and ``get`` as on ``trioq.Queue``; ``aclose`` (or ``async with``)
    returns the items a push consumer holds but has not taken.  Raises
    ``ValueError`` for a ``mode`` other than "pull" or "push" or a ``window``
    that is not a positive int, ``TypeError`` for a name that is not a str.
    """

    def __init__(
        self, session: Session, name: str | None = None, mode: Mode = "pull", *, window: int = 16
    ) -> None:
        if mode not in ("pull", "push"):
            raise ValueError(f"mode must be 'pull' or 'push', got {mode!r}")
        if type(window) is not int or window < 1:
            raise ValueError(f"window must be a positive int, got {window!r}")
        self._session = session
        self._queue = Queue(session, name, prefetch=1)
        #: "pull" or "push".
        self.mode: Mode = mode
        self._window = window
        self._subscribed = False
        self._buffer: deque[tuple[int, bytes]] = deque()  # (lease, item) pushed to us
        self._arrived = trio.Event()
        self._closed = False
        self._deleted = False  # the scheduler said the queue was deleted

    @property
    def name(self) -> str:
        """The queue's name in the cluster."""
        return self._queue.name

    def __repr__(self) -> str:
        return f"<trioq.SimpleQueue {self.name!r} mode={self.mode}>"

    async def put(self, item: Any) -> None:
        """Put one item (see ``Queue.put``, whose errors it raises).

        Raises ``trio.ClosedResourceError`` after ``aclose``.  If cancelled,
        the item was not put.
        """
        self._check_open()
        await self._queue.put(item)

    async def get(self) -> Any:
        """The next item for this consumer, waiting for one.

        Pull: asks the scheduler for one, and raises what ``Queue.get``
        raises.  Push: takes the oldest item pushed here (subscribing on
        first use); raises ``RuntimeError`` if this client already has
        another push consumer on the queue, ``trio.BrokenResourceError`` if
        the queue was deleted before the subscription.  Either way raises
        ``trio.ClosedResourceError`` after ``aclose`` (also in a ``get``
        waiting then).  If cancelled, nothing was taken (a push subscription
        made stays until ``aclose``).
        """
        self._check_open()
        if self.mode == "pull":
            return await self._queue.get()
        if not self._subscribed:
            if self._session.push_links.get(self.name) is not None:
                raise RuntimeError(
                    f"this client already has a push consumer on queue {self.name!r}"
                )
            # Subscribed from the moment the request is sent: if the wait is
            # cancelled, the scheduler may still apply it, and aclose must undo it.
            self._subscribed = True
            self._session.push_links[self.name] = self
            try:
                await self._session.request(QueueSubscribe(self.name, self._window), Ok)
            except trio.Cancelled:
                raise
            except BaseException:
                self._subscribed = False  # refused: nothing to undo
                del self._session.push_links[self.name]
                raise
        while not self._buffer:
            self._session.check_usable()
            if self._deleted:
                raise trio.BrokenResourceError(f"queue {self.name!r} was deleted")
            await self._arrived.wait()
            self._arrived = trio.Event()
            self._check_open()
        lease, data = self._buffer[0]
        value = self._session.serializer.loads(data)  # a bad item stays leased, not lost
        self._buffer.popleft()
        self._session.outbox.ack([lease], batch=max(1, self._window // 2))
        return value

    async def qsize(self) -> int:
        """Items put and not yet consumed (queued, pushed or leased).

        Raises ``trio.BrokenResourceError`` if the queue was deleted; it
        still answers after ``aclose``.  A cancelled call changes nothing.
        """
        return await self._queue.qsize()

    async def aclose(self) -> None:
        """Stop consuming; a push consumer returns what it holds, unconsumed.  Idempotent.

        Later ``put`` and ``get`` raise ``trio.ClosedResourceError``.  A push
        consumer unsubscribes and returns its items shielded from
        cancellation, waiting for the scheduler up to ``CLOSE_TIMEOUT``
        seconds; raises nothing (on a broken or closed client the scheduler
        returns the items itself when the connection ends).
        """
        if self._closed:
            await trio.lowlevel.checkpoint()
            return
        self._closed = True
        self._arrived.set()  # a get waiting here sees the close
        if not self._subscribed:
            await trio.lowlevel.checkpoint()
            return
        try:
            with (
                trio.CancelScope(shield=True),
                trio.move_on_after(CLOSE_TIMEOUT),
                contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError),
            ):
                await self._session.request(QueueUnsubscribe(self.name), Ok)
                # Pushes sent before the unsubscribe may still arrive: they are
                # returned as they come (see the client's notice handler).  Then
                # return what we hold.
                self._session.push_links.pop(self.name, None)
                leases = [lease for lease, _ in self._buffer]
                self._buffer.clear()
                if leases:
                    await self._session.request(QueueReturn(leases), Ok)
        finally:
            # A broken connection (or a silent scheduler): the scheduler returns
            # what this consumer held when the connection ends.
            if self._session.push_links.get(self.name) is self:
                del self._session.push_links[self.name]

    async def __aenter__(self) -> SimpleQueue:
        """Return the queue; leaving the block calls ``aclose``."""
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """``await self.aclose()``; raises what it raises."""
        await self.aclose()

    def _check_open(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("this SimpleQueue was closed")

    def _on_deleted(self) -> None:
        """Called by the connection's reader: the queue was deleted."""
        self._deleted = True
        self._buffer.clear()  # leased from the deleted queue: gone with it
        self._arrived.set()

    def _on_pushed(self, notice: Pushed) -> None:
        """Called by the connection's reader with items the scheduler pushed."""
        first = notice.first_lease
        self._buffer.extend((first + i, item) for i, item in enumerate(notice.items))
        self._arrived.set()
