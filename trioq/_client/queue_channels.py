"""The trio channel endpoints of a named queue: ``QueueSendChannel`` and ``QueueReceiveChannel``.

Rules (trio's memory-channel contract, across the cluster):

* Every open endpoint is counted by the scheduler.  When the last send
  endpoint closes, receivers drain the queue and then get
  ``trio.EndOfChannel``; when the last receive endpoint closes, sends raise
  ``trio.BrokenResourceError``.  A send right after this client closed its
  last receive endpoint asks the scheduler (``QueueLink.can_put``), so it
  raises at once rather than on a later send.
* Closing an endpoint wakes the tasks waiting on that very endpoint with
  ``trio.ClosedResourceError``, clones open or not: a waiting send puts
  nothing, and the item a waiting receive would have got goes to the next
  receiver in line.
* An endpoint of a handle whose ``maxsize`` the scheduler has not confirmed
  is counted once it is (never, if refused: see ``Queue._open_endpoint``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import trio

from .._wire.messages import EndpointClose

if TYPE_CHECKING:
    from .client import Client
    from .queue import Queue
    from .session import Pending
    from .statistics import QueueStatistics

__all__ = ["QueueSendChannel", "QueueReceiveChannel", "check_open"]


class QueueSendChannel(trio.abc.SendChannel[Any]):
    """A ``trio.abc.SendChannel`` that puts into a named queue.

    Every open send endpoint in the cluster is counted by the scheduler;
    when the last one closes (or its client vanishes), receivers drain the
    queue and then get ``trio.EndOfChannel``.
    """

    def __init__(self, queue: Queue) -> None:
        self._queue = queue
        self._closed = False
        self._sending: set[trio.CancelScope] = set()  # sends waiting on this endpoint
        self._counted = False  # the scheduler was told of it (see Queue._open_endpoint)
        queue._session.check_usable()
        queue._open_endpoint(self, "send")

    async def send(self, value: Any) -> None:
        """Put ``value`` (see ``Queue.put``, whose errors it raises).

        Raises ``trio.ClosedResourceError`` if this endpoint was closed,
        also when another task closes it while this send waits for room
        (then the value was not put, with the exception ``Queue.put``
        describes for a scheduler that gives no verdict).
        """
        if self._closed:
            raise trio.ClosedResourceError("this send endpoint was closed")
        with trio.CancelScope() as scope:
            self._sending.add(scope)
            try:
                await self._queue.put(value)
                return
            finally:
                self._sending.discard(scope)
        raise trio.ClosedResourceError("this send endpoint was closed while send waited")

    async def statistics(self) -> QueueStatistics:
        """The queue's figures (see ``Queue.statistics``)."""
        return await self._queue.statistics()

    def clone(self) -> QueueSendChannel:
        """Another send endpoint, counted separately (close each one).

        Raises ``trio.ClosedResourceError`` if this endpoint was closed.
        """
        if self._closed:
            raise trio.ClosedResourceError("this send endpoint was closed")
        return QueueSendChannel(self._queue)

    async def aclose(self) -> None:
        """Close this endpoint (idempotent); the scheduler counts it as gone.

        Sends of this endpoint still waiting raise ``trio.ClosedResourceError``
        (their values are not put).  Waits for nothing and raises nothing; on
        a client that is closed or broken it only closes locally (the
        scheduler counted it gone already).
        """
        self.close()
        await trio.lowlevel.checkpoint()

    def close(self) -> None:
        """``aclose`` without the checkpoint, like a memory channel's ``close``."""
        if not self._closed:
            self._closed = True
            for scope in self._sending:
                scope.cancel()
            if self._counted:
                _close_endpoint(self._queue, "send")

    # -- in other processes: the unpickled copy is one more endpoint (docs/queues.rst) --

    @property
    def client(self) -> Client:
        """The ``trioq.Client`` whose connection this endpoint uses."""
        return self._queue.client

    def __reduce__(self) -> tuple[Any, tuple[Queue]]:
        """Pickled, its queue; raises ``trio.ClosedResourceError`` once closed."""
        if self._closed:
            raise trio.ClosedResourceError("a closed send endpoint cannot be pickled")
        return QueueSendChannel, (self._queue,)


class QueueReceiveChannel(trio.abc.ReceiveChannel[Any]):
    """A ``trio.abc.ReceiveChannel`` that gets from a named queue.

    Counted like send endpoints: once every receive endpoint is closed,
    sending raises ``trio.BrokenResourceError``.
    """

    def __init__(self, queue: Queue) -> None:
        self._queue = queue
        self._closed = False
        self._receiving: set[trio.CancelScope] = set()  # receives waiting on this endpoint
        self._counted = False  # the scheduler was told of it (see Queue._open_endpoint)
        queue._session.check_usable()
        queue._open_endpoint(self, "receive")

    async def receive(self) -> Any:
        """Get an item (see ``Queue.get``, whose errors it raises).

        Raises ``trio.EndOfChannel`` once the last sender closed and the
        queue is empty, ``trio.ClosedResourceError`` if this endpoint was
        closed, also when another task closes it while this receive waits
        (the item it would have got goes to another receiver).
        """
        if self._closed:
            raise trio.ClosedResourceError("this receive endpoint was closed")
        with trio.CancelScope() as scope:
            self._receiving.add(scope)
            try:
                return await self._queue._get_one(self)
            finally:
                self._receiving.discard(scope)
        raise trio.ClosedResourceError("this receive endpoint was closed while receive waited")

    async def statistics(self) -> QueueStatistics:
        """The queue's figures (see ``Queue.statistics``)."""
        return await self._queue.statistics()

    def clone(self) -> QueueReceiveChannel:
        """Another receive endpoint, counted separately (close each one).

        Raises ``trio.ClosedResourceError`` if this endpoint was closed.
        """
        if self._closed:
            raise trio.ClosedResourceError("this receive endpoint was closed")
        return QueueReceiveChannel(self._queue)

    async def aclose(self) -> None:
        """Close this endpoint (idempotent); the scheduler counts it as gone.

        Receives of this endpoint still waiting raise
        ``trio.ClosedResourceError``.  When it is this client's last receive
        endpoint on the queue, the items prefetched here go back to the
        queue, and this client's next put on the queue asks the scheduler
        (so a put after the last receiver in the cluster closed raises
        ``trio.BrokenResourceError`` at once).  Waits for nothing and raises
        nothing.
        """
        self.close()
        await trio.lowlevel.checkpoint()

    def close(self) -> None:
        """``aclose`` without the checkpoint, like a memory channel's ``close``."""
        if self._closed:
            return
        self._closed = True
        for scope in self._receiving:
            scope.cancel()
        if not self._counted:
            return
        queue = self._queue
        link = queue._link
        link.receivers -= 1
        if link.receivers:
            _close_endpoint(queue, "receive")
            return
        # The last local receiver is gone: give prefetched items back now, so the
        # stream's other receivers get them (and its end).
        link.released = True
        if not link.waiters:
            link.give_back()
        session = queue._session
        if session.usable():
            # Until the scheduler answers, puts here ask it: it may say nobody reads.
            link.unconfirmed_closes += 1

            def answered(pending: Pending) -> None:
                link.unconfirmed_closes -= 1

            session.send_request(EndpointClose(queue.name, "receive"), late=answered)

    # -- in other processes: the unpickled copy is one more endpoint (docs/queues.rst) --

    @property
    def client(self) -> Client:
        """The ``trioq.Client`` whose connection this endpoint uses."""
        return self._queue.client

    def __reduce__(self) -> tuple[Any, tuple[Queue]]:
        """Pickled, its queue; raises ``trio.ClosedResourceError`` once closed."""
        if self._closed:
            raise trio.ClosedResourceError("a closed receive endpoint cannot be pickled")
        return QueueReceiveChannel, (self._queue,)


def check_open(endpoint: QueueReceiveChannel | None) -> None:
    if endpoint is not None and endpoint._closed:
        raise trio.ClosedResourceError("this receive endpoint was closed while receive waited")


def _close_endpoint(queue: Queue, kind: str) -> None:
    if queue._session.usable():  # else the scheduler counts them closed with the client
        queue._session.send_oneway(EndpointClose(queue.name, kind))
