"""Named queues shared through the scheduler, and their trio channel endpoints.

Rules (the cancellation contract of the product design):

* A ``put`` either put its items or did not, and the caller can tell: it
  returns only once the items are committed, and raises ``trio.Cancelled``
  only if they were not.  With put credit (always, for an unbounded queue)
  the commit is local and instant: the frame is queued on the ordered
  connection and the scheduler has reserved room for it (``flush``
  confirms it arrived).  Without credit the put parks in the scheduler; a
  cancelled one is withdrawn and its verdict awaited before returning, for
  at most ``VERDICT_GRACE`` seconds: a frozen scheduler or link must not
  keep the caller past its deadline, so then the put may still be applied
  (the one exception to the rule, at-least-once).
* A ``get`` either took nothing, or returns its items: a cancelled get
  that waits in the scheduler is withdrawn and its verdict awaited (one
  round trip, shielded); if items had already been sent, the get returns
  them and the cancellation takes effect at the caller's next checkpoint.
  Items leased to this client and not yet handed to a caller (prefetched
  extras) return to the queue if the client goes away.
* ``*_nowait`` methods are ``async``: they never wait for room or for an
  item, but may need one round trip to ask the scheduler (a plain method
  could only answer from local state and would report ``WouldBlock`` for a
  queue that has items).
* ``prefetch``: a get asks for up to that many items and keeps the extra
  ones locally for the next gets (fast, but others cannot take them
  meanwhile); ``prefetch=1`` gives strict demand-driven fairness.  Once a
  get leaves half of them or fewer, the client asks (without waiting in
  the scheduler) for items already queued to top the buffer up, so a
  steady consumer does not stall one round trip per ``prefetch`` items.
* Every ``put``/``get`` is a cancel point (a cancelled scope raises
  ``trio.Cancelled`` before anything is put or taken).  A call served from
  local state (put credit, a prefetched item) lets other tasks run once
  every ``SCHEDULE_EVERY`` items rather than on each call, unlike trio's
  own checkpoints: a switch costs as much as the call itself (see
  docs/queues.rst).  Calls that wait always switch.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterable
from typing import TYPE_CHECKING, Any

import trio

from .._wire.messages import (
    Count,
    EndpointOpen,
    Items,
    Ok,
    Op,
    PutDone,
    QueueDelete,
    QueueGet,
    QueueInfo,
    QueueOpen,
    QueuePut,
    QueueSize,
    decode_reply,
)
from .current import attaching_session, client_of
from .queue_channels import QueueReceiveChannel, QueueSendChannel, check_open
from .queue_link import QueueLink, Waiter
from .session import SCHEDULE_EVERY
from .statistics import QueueStatistics, queue_statistics

if TYPE_CHECKING:
    from .client import Client
    from .session import Pending, Session

__all__ = ["Queue", "QueueSendChannel", "QueueReceiveChannel", "SCHEDULE_EVERY"]


def _check_count(name: str, value: object, minimum: int) -> int:
    if type(value) is not int:
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


class Queue:
    """A named multi-producer, multi-consumer FIFO queue shared by every client.

    Create it with ``client.queue(name, maxsize)``: ``maxsize`` 0 (the
    default) is unbounded; a positive one bounds the items not yet
    consumed, and ``put`` waits for room.  Items are any msgpack-able or
    cloudpickle-able objects.  Raises ``TypeError`` for a name that is not a
    str or a ``maxsize``/``prefetch`` that is not an int, ``ValueError`` for
    a negative ``maxsize`` or a ``prefetch`` below 1.  ``async for item in
    queue`` gets items until ``trio.EndOfChannel``.
    """

    def __init__(
        self, session: Session, name: str | None = None, maxsize: int = 0, *, prefetch: int = 16
    ) -> None:
        if name is None:
            name = f"queue-{uuid.uuid4().hex}"
        if type(name) is not str:
            raise TypeError(f"queue name must be a str, got {type(name).__name__}")
        self._session = session
        self._prefetch = _check_count("prefetch", prefetch, 1)
        # Top up at half the buffer; never for prefetch=1 (strict fairness).
        self._top_up_at = prefetch // 2 if prefetch > 1 else -1
        _check_count("maxsize", maxsize, 0)
        link = session.queue_links.get(name)
        if link is None:
            link = session.queue_links[name] = QueueLink(session, name, maxsize)
        self._link: QueueLink = link
        # A maxsize the scheduler has not confirmed may be refused: until its
        # verdict, this handle's puts and gets wait for it, and its endpoints
        # are not counted, so a refused handle stores nothing (``_on_opened``).
        self._ready = not maxsize or (link.confirmed and link.maxsize == maxsize)
        self._verdict: trio.Event | None = None if self._ready else trio.Event()
        self._refused: BaseException | None = None
        self._unopened: list[tuple[QueueSendChannel | QueueReceiveChannel, str]] = []
        session.send_request(QueueOpen(name, maxsize), late=self._on_opened)

    @property
    def name(self) -> str:
        """The queue's name in the cluster."""
        return self._link.name

    @property
    def maxsize(self) -> int:
        """The queue's bound (0: unbounded), as the scheduler last reported it."""
        return self._link.maxsize

    def __repr__(self) -> str:
        return f"<trioq.Queue {self.name!r} maxsize={self.maxsize}>"

    # -- putting -------------------------------------------------------------------

    async def put(self, item: Any) -> None:
        """Put one item, waiting for room if the queue is full.

        Raises ``trio.ClosedResourceError`` once the queue's last send endpoint
        closed, ``trio.BrokenResourceError`` once its last receive endpoint
        closed or it was deleted, ``SerializationError`` for an item that
        cannot be serialized, ``LocalProtocolError`` (nothing put) or
        ``ValueError`` for an item too large for a frame, ``ValueError`` for
        a ``maxsize`` that differs from the existing queue's, ``LookupError``
        for an item holding a released future.  A put that used credit did
        not wait for the scheduler: its refusal is raised by this client's
        next put on the queue.  If cancelled, the item was not put, unless
        the scheduler gave no verdict within ``VERDICT_GRACE`` seconds (a
        frozen scheduler or link: the caller's deadline wins), when it may
        still be.  Always a
        cancel point; a put covered by credit switches tasks only once every
        ``SCHEDULE_EVERY`` items (see the queues guide).
        """
        session = self._session
        link = self._link
        data = session.serializer.dumps_item(item)
        if (
            (link.unlimited or link.credit > 0)
            and self._ready
            and not link.unconfirmed_closes
            and link.error is None
            and session.broken is None
            and not session.closed
            and not session.connection.over_high_water()
        ):
            # Fast path, ``_put`` for one item with credit.  ``checkpoint_if_cancelled``
            # does not switch tasks unless it raises, so the checks above still hold.
            await trio.lowlevel.checkpoint_if_cancelled()
            session.outbox.put_one(link.name, data)
            if not link.unlimited:
                link.credit -= 1
            # session.count_local_call(1), inline on the hottest path:
            session.calls_since_switch += 1
            if session.calls_since_switch >= SCHEDULE_EVERY:
                session.calls_since_switch = 0
                await trio.lowlevel.cancel_shielded_checkpoint()
            return
        await self._put([data], wait=True)

    async def put_nowait(self, item: Any) -> None:
        """Put one item or raise ``trio.WouldBlock`` if there is no room now.

        Never waits for room; may take one round trip to ask the scheduler.
        ``trio.WouldBlock`` also when the connection's send buffer is full.
        Otherwise raises what ``put`` raises, and behaves on cancellation as it does.
        """
        await self._put([self._session.serializer.dumps_item(item)], wait=False)

    async def put_batch(self, items: Iterable[Any]) -> None:
        """Put several items, all or none, in order (waits for room for all).

        ``ValueError`` if a bounded queue could never hold them all at once,
        ``LocalProtocolError`` if they do not fit in one frame; otherwise
        raises what ``put`` raises.  If cancelled, none was put (with the
        exception ``put`` describes).
        """
        dumps = self._session.serializer.dumps_item
        data = [dumps(item) for item in items]
        if data:
            await self._put(data, wait=True)
        else:
            await trio.lowlevel.checkpoint()

    async def _put(self, data: list[bytes], *, wait: bool) -> None:
        link = self._link
        await self._opened()
        self._raise_deferred()
        await trio.lowlevel.checkpoint_if_cancelled()
        connection = self._session.connection
        while link.can_put(len(data)):
            if connection.over_high_water():  # back pressure before committing
                if not wait:
                    raise trio.WouldBlock("the connection's send buffer is full")
                await connection.wait_writable()
                continue  # the credit may have been spent or revoked meanwhile
            # Check and spend with no await between: the commit is atomic.
            session = self._session
            session.check_usable()
            session.outbox.put(link.name, data)
            if not link.unlimited:
                link.credit -= len(data)
            if session.count_local_call(len(data)):
                await trio.lowlevel.cancel_shielded_checkpoint()
            return
        await self._session.request(
            QueuePut(link.name, data, False, wait), PutDone, on_cancel="outcome"
        )

    # -- getting -------------------------------------------------------------------

    async def get(self) -> Any:
        """Take the oldest item, waiting for one.

        Raises ``trio.EndOfChannel`` once the queue's last send endpoint
        closed and it is empty, ``trio.BrokenResourceError`` if it was
        deleted.  Tasks of this client waiting on the queue are served
        first come, first served.  If cancelled, either nothing was taken
        or the item is kept for this client's next ``get`` on the queue.
        Always a cancel point; a get of a prefetched item switches tasks
        only once every ``SCHEDULE_EVERY`` items (see the queues guide).
        """
        return await self._get_one(None)

    async def _get_one(self, endpoint: QueueReceiveChannel | None) -> Any:
        link = self._link
        session = self._session
        if link.buffer and self._ready and session.broken is None and not session.closed:
            # Fast path: an item prefetched here (nobody waits: see QueueLink).
            await trio.lowlevel.checkpoint_if_cancelled()
            usable = True
            # session.count_local_call(1), inline on the hottest path:
            session.calls_since_switch += 1
            if session.calls_since_switch >= SCHEDULE_EVERY:
                session.calls_since_switch = 0
                await trio.lowlevel.cancel_shielded_checkpoint()
                # Closed meanwhile?  An item taken now could not be acknowledged:
                # the scheduler would give it to another consumer as well.
                usable = session.usable() and (endpoint is None or not endpoint._closed)
            if link.buffer and usable:
                lease, data = link.buffer.popleft()
                session.outbox.ack_one(lease)
                link.last_touched = trio.current_time()
                if len(link.buffer) <= self._top_up_at:
                    self._top_up()
                return session.serializer.loads(data)
        return (await self._get(1, wait=True, endpoint=endpoint))[0]

    async def get_nowait(self) -> Any:
        """Take the oldest item or raise ``trio.WouldBlock`` if there is none now.

        Never waits for an item; may take one round trip to ask the scheduler.
        Otherwise raises, and behaves on cancellation, like ``get``.
        """
        return (await self._get(1, wait=False))[0]

    async def get_batch(self, n: int) -> list[Any]:
        """Take up to ``n`` items, oldest first (at least one, waiting for it).

        Raises ``TypeError`` for an ``n`` that is not an int, ``ValueError``
        for one below 1; otherwise raises and behaves on cancellation like
        ``get`` (items already taken are kept for the next get).
        """
        _check_count("n", n, 1)
        return await self._get(n, wait=True)

    async def _get(
        self, n: int, *, wait: bool, endpoint: QueueReceiveChannel | None = None
    ) -> list[Any]:
        link = self._link
        session = self._session
        session.check_usable()
        await self._opened()
        await trio.lowlevel.checkpoint_if_cancelled()
        if endpoint is None:
            link.released = False  # a plain get takes items here again
        if link.buffer and session.count_local_call(min(n, len(link.buffer))):
            await trio.lowlevel.cancel_shielded_checkpoint()
            session.check_usable()  # closed meanwhile: take nothing it cannot acknowledge
            check_open(endpoint)
        if link.buffer:
            taken = [link.buffer.popleft() for _ in range(min(n, len(link.buffer)))]
        elif not wait:
            taken = await self._get_now(n)
        else:
            taken = await self._wait_for_items(n, endpoint)
        session.outbox.ack([lease for lease, _ in taken])
        link.last_touched = trio.current_time()
        if len(link.buffer) <= self._top_up_at:
            self._top_up()
        loads = session.serializer.loads
        return [loads(data) for _, data in taken]

    async def _get_now(self, n: int) -> list[tuple[int, bytes]]:
        """Items queued now, without waiting for more (``WouldBlock`` if none)."""
        link = self._link
        if link.top_up is not None:
            await link.top_up.wait()  # its answer comes first: take from it, not past it
        if not link.buffer:
            await self._fetch(n, wait=False)
        if not link.buffer:  # tasks waiting here took what it brought: they came first
            raise trio.WouldBlock(f"queue {link.name!r} is empty")
        return [link.buffer.popleft() for _ in range(min(n, len(link.buffer)))]

    async def _wait_for_items(
        self, n: int, endpoint: QueueReceiveChannel | None
    ) -> list[tuple[int, bytes]]:
        """Wait in line behind this client's other waiting tasks for up to ``n`` items.

        One request at a time waits in the scheduler for the whole line
        (``QueueLink``); what it brings is handed out in line order.
        Leaving the line (cancelled, or the endpoint closed) gives whatever
        was handed to this task to the next in line.
        """
        link = self._link
        waiter = Waiter(n)
        link.waiters.append(waiter)
        try:
            while not waiter.items:
                if waiter.event.is_set():
                    waiter.event = trio.Event()
                if not link.fetching and link.top_up is None:
                    try:
                        with trio.CancelScope() as waiter.asking:
                            await self._fetch(n, wait=True)
                    finally:
                        waiter.asking = None
                else:
                    await waiter.event.wait()
            check_open(endpoint)
        except BaseException:
            link.waiters.remove(waiter)
            if waiter.items:
                link.deliver(waiter.items, front=True)
            else:
                link.nudge()
            raise
        link.waiters.remove(waiter)
        return waiter.items

    async def _fetch(self, n: int, wait: bool) -> None:
        """Ask the scheduler for items (``prefetch`` of them if it has them) for the line."""
        link = self._link
        if wait:
            link.fetching = True
        leased: list[tuple[int, bytes]] = []

        def settle(pending: Pending) -> None:
            """A verdict that came after the caller gave up: its items are the line's."""
            if pending.op == Op.REPLY:
                late = decode_reply(Items, pending.payload)
                link.deliver(list(enumerate(late.items, late.first_lease)))

        try:
            reply = await self._session.request(
                QueueGet(link.name, max(n, self._prefetch), wait),
                Items,
                on_cancel="outcome",
                settle=settle,
            )
            leased = list(enumerate(reply.items, reply.first_lease))
        finally:
            if wait:
                link.fetching = False
            link.deliver(leased)

    def _top_up(self) -> None:
        """Top the buffer up to ``prefetch`` with items queued now, without waiting.

        Called when a get leaves the buffer half empty or worse: the answer
        arrives while the caller consumes the rest.  It asks with
        ``wait=False``, so it never holds a place among the scheduler's
        waiting getters; an empty queue answers ``WouldBlock``, ignored.
        Gets that find the buffer empty meanwhile wait for this answer
        (``link.top_up``) rather than ask past it.
        """
        link = self._link
        session = self._session
        want = self._prefetch - len(link.buffer)
        if link.fetching or link.top_up is not None or want < 1 or link.released:
            return
        if session.closed or session.broken is not None or session.connection.is_broken:
            return
        top_up = link.top_up = trio.Event()

        def arrived(pending: Pending) -> None:
            top_up.set()
            leased: list[tuple[int, bytes]] = []
            if pending.op == Op.REPLY:  # else WouldBlock, the end, an error: gets find out
                reply = decode_reply(Items, pending.payload)
                leased = list(enumerate(reply.items, reply.first_lease))
            link.on_top_up(leased)

        session.send_request(QueueGet(link.name, want, False), late=arrived)

    # -- other operations ---------------------------------------------------------------

    async def flush(self) -> None:
        """Wait until the scheduler has taken every put this client made before the call.

        Raises the first refusal of this queue's puts nobody has seen (see
        ``put``), ``trio.BrokenResourceError`` if the connection breaks
        first (see ``Client.flush``).
        """
        await self._session.flush([self._link])

    async def statistics(self) -> QueueStatistics:
        """The queue's figures in trio's shape, cluster-wide, with queued and leased apart.

        One round trip (trio's is a plain call: a memory channel is local).
        Raises ``trio.BrokenResourceError`` if the queue was deleted.
        """
        return await queue_statistics(self)

    async def qsize(self) -> int:
        """Items put and not yet consumed (including ones prefetched by clients).

        Raises ``trio.BrokenResourceError`` if the queue was deleted.  A
        cancelled call changes nothing.
        """
        reply = await self._session.request(QueueSize(self.name), Count)
        return reply.value

    async def delete(self) -> None:
        """Delete the queue and its items; waiting calls raise ``BrokenResourceError``.

        Deleting a queue that does not exist is not an error.  If cancelled,
        the deletion may or may not have happened (it is idempotent: repeat it).
        """
        await self._session.request(QueueDelete(self.name), Ok)
        self._link.buffer.clear()  # leased from the deleted queue: gone with it

    def open_channels(self) -> tuple[QueueSendChannel, QueueReceiveChannel]:
        """A send and a receive endpoint, counted across the cluster.

        Like ``trio.open_memory_channel``: when the last send endpoint in the
        cluster closes, receivers drain the queue, then get
        ``trio.EndOfChannel``.  A process that only produces (or only
        consumes) should open just its half with ``open_send_channel`` (or
        ``open_receive_channel``): closing an unused half early can end the
        stream for everyone.  Opening does not wait for the scheduler: a send
        endpoint opened on a queue that was closed makes this client's next
        put on it raise ``trio.ClosedResourceError``.
        """
        return QueueSendChannel(self), QueueReceiveChannel(self)

    def open_send_channel(self) -> QueueSendChannel:
        """One send endpoint on this queue (see ``open_channels``)."""
        return QueueSendChannel(self)

    def open_receive_channel(self) -> QueueReceiveChannel:
        """One receive endpoint on this queue (see ``open_channels``)."""
        return QueueReceiveChannel(self)

    def __aiter__(self) -> AsyncIterator[Any]:
        """Items from ``get`` until ``trio.EndOfChannel``; raises what ``get`` raises."""
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Any]:
        while True:
            try:
                item = await self.get()
            except trio.EndOfChannel:
                return
            yield item

    # -- answers nobody waits for ---------------------------------------------------------

    def _raise_deferred(self) -> None:
        self._session.check_usable()
        error, self._link.error = self._link.error, None
        if error is not None:
            raise error

    async def _opened(self) -> None:
        """Wait for the scheduler's verdict on this handle's ``maxsize``; raise its refusal."""
        if self._verdict is not None:
            await self._verdict.wait()
        if self._refused is not None:
            raise self._refused

    def _on_opened(self, pending: Pending) -> None:
        try:
            if pending.op == 0:
                return  # the connection broke: every later call says so
            try:
                info = self._session.result(pending, QueueInfo)
            except Exception as exc:
                self._refused = exc  # this handle's, never another's
                return
            self._link.on_info(info.maxsize, info.accepting)
            self._ready = True
            for endpoint, kind in self._unopened:
                if not endpoint._closed:
                    self._count_endpoint(endpoint, kind)
        finally:
            self._unopened = []
            if self._verdict is not None:
                self._verdict.set()

    def _open_endpoint(self, endpoint: QueueSendChannel | QueueReceiveChannel, kind: str) -> None:
        """Count a new endpoint now, or once the verdict on ``maxsize`` says it may be."""
        if self._ready:
            self._count_endpoint(endpoint, kind)
        elif self._refused is None:
            self._unopened.append((endpoint, kind))

    def _count_endpoint(self, endpoint: QueueSendChannel | QueueReceiveChannel, kind: str) -> None:
        endpoint._counted = True
        self._session.send_oneway(EndpointOpen(self.name, kind))
        if kind == "receive":
            self._link.receivers += 1
            self._link.released = False

    # -- in other processes (see "Handles in other processes" in docs/queues.rst) ----

    @property
    def client(self) -> Client:
        """The ``trioq.Client`` whose connection this handle uses."""
        return client_of(self._session)

    def __reduce__(self) -> tuple[Any, tuple[str, int, int]]:
        """Pickled, its name, ``maxsize`` and ``prefetch`` (see ``attaching_session``)."""
        return Queue._unpickle, (self.name, self.maxsize, self._prefetch)

    @staticmethod
    def _unpickle(name: str, maxsize: int, prefetch: int) -> Queue:
        return Queue(attaching_session(f"trioq.Queue {name!r}"), name, maxsize, prefetch=prefetch)
