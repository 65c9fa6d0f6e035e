"""The session: the plumbing of one client connection, shared by every handle.

Rules:

* ``open_session()`` (in ``dial``) makes a ``Session`` and runs its reader
  and writer in a nursery it owns; leaving its block flushes what is
  buffered (acknowledgements included) and joins them.  ``Client`` (the
  public face) and every handle hold the session; none of them reaches
  into another object's private attributes.
* Many requests can be outstanding at once, matched to answers by request
  id.  ``request`` waits for the answer; what a cancel scope does to a
  waiting request is chosen per call site (``abandon``, ``withdraw`` or
  ``outcome``, see ``request``) so that no item is ever lost or duplicated.
* Acknowledgements of consumed items are batched (the ``outbox``) and
  always written before any later request, so the scheduler sees them in
  order.
* Once the connection breaks, every waiting and later call raises
  ``trio.BrokenResourceError`` with the cause attached; once the session is
  closed, ``trio.ClosedResourceError``.
* Unsolicited notices (credit, pushed items, task ends, task assignments
  for a worker) are routed by the reader to the handle they concern.

Every operation is O(1) apart from the closing sweep, which is O(pending).
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import trio

from .._exceptions import ProtocolError, RemoteProtocolError, refusal
from .._impl import core
from .._wire.flow_messages import Barrier, BarrierDone, LeaseRecall, Sync
from .._wire.heartbeat import HEARTBEAT_INTERVAL, keep_alive, on_ping
from .._wire.messages import (
    FLAG_AWAITED,
    Cancel,
    CreditNotice,
    CreditReturn,
    ErrorNotice,
    ErrorReply,
    Message,
    Ok,
    Op,
    Pushed,
    QueueReturn,
    decode_notice,
    decode_reply,
    encode_message,
)
from .._wire.pickling import full_serializer
from .._wire.task_messages import TaskAbort, TaskAssign, TaskFinished, TaskWatch
from .._wire.transport import FramedConnection
from .future import Future
from .outbox import Outbox
from .queue_link import return_idle_leases

if TYPE_CHECKING:
    from .simple_queue import SimpleQueue

__all__ = ["Session", "Pending", "session_of", "SCHEDULE_EVERY", "CLOSE_TIMEOUT"]

M = TypeVar("M", bound=Message)
CancelMode = Literal["abandon", "withdraw", "outcome"]

#: Items that ``put``/``get`` may serve from local state (put credit, prefetched
#: items) between two switches to other tasks; every call is a cancel point.
#: A constant of the library, not a setting.
SCHEDULE_EVERY = 16
#: Seconds a cancelled call waits for the scheduler's verdict before the
#: cancellation stands without it (the caller's deadline wins; the verdict is
#: settled when it comes, see ``Session.request``).
VERDICT_GRACE = 0.5
CLOSE_TIMEOUT = 5.0  # seconds a closing client waits for the scheduler to finish
ENDED_KEPT = 4096  # task ends kept for futures not read yet (older ones: TaskWatch tells)


class Pending:
    """One outstanding request; ``late`` handles an answer nobody waits for."""

    __slots__ = ("event", "op", "payload", "late", "parks")

    def __init__(self) -> None:
        self.event = trio.Event()
        self.op = 0
        self.payload = b""
        self.late: Callable[[Pending], None] | None = None
        self.parks = False  # the scheduler may hold it (see Message.may_park)


def _ignore(pending: Pending) -> None:
    pass


def _key_of(future: Future) -> str:
    return future.key


class Session:
    """The state and plumbing of one authenticated connection to the scheduler.

    Handles hold it and talk through its methods; ``Client`` is the thin
    public face over it.  Its attributes are the handles' shared state:
    ``queue_links`` (what this connection knows of each queue),
    ``push_links`` (push consumers), ``futures`` (this connection's live
    futures by key), ``serializer``, ``outbox`` and ``connection``.
    """

    def __init__(
        self,
        connection: FramedConnection,
        session_id: int,
        address: str,
        *,
        heartbeat_interval: float = HEARTBEAT_INTERVAL,
    ) -> None:
        #: The scheduler's address, ``tcp://host:port``.
        self.address = address
        #: The id the scheduler gave this connection (shown by ``status``).
        self.id = session_id
        self.connection = connection
        #: Seconds between signs of life; silent for ``MISSED_BEATS`` of them: broken.
        self.heartbeat_interval = heartbeat_interval
        self.pending: dict[int, Pending] = {}
        self.next_request = 1
        self.calls_since_switch = 0  # served from local state (see count_local_call)
        self.parked = 0  # pending requests the scheduler may hold (waiting gets, ...)
        self.broken: BaseException | None = None
        self.closed = False
        self.done = trio.Event()  # set when run() has ended
        self.serializer = full_serializer(owner=self)  # unpickled handles attach here
        self.serializer.register_reference(Future, _key_of)
        self.serializer.resolver = self.adopt_future
        self.queue_links: dict[str, Any] = {}
        self.futures: weakref.WeakValueDictionary[str, Future] = weakref.WeakValueDictionary()
        #: How tasks ended that the scheduler reported before this client made
        #: a future of them (it does, ahead of an item referring to one): by key.
        self.ended: dict[str, str] = {}
        self.task_change = trio.Event()  # set (and replaced) when a task of ours ends
        self.nursery: trio.Nursery | None = None  # set by open_session: stream stages run in it
        self.push_links: dict[str, SimpleQueue] = {}  # push consumers, by queue name
        #: Set by a ``Worker`` on its own connection: gets task assignments.
        self.task_handler: Callable[[Message], None] | None = None
        #: Credited puts and acknowledgements not written yet.
        self.outbox = Outbox(connection)

    def stream_nursery(self) -> trio.Nursery:
        """Where stream stages run: this session's own nursery (closing it stops them)."""
        self.check_usable()
        if self.nursery is None:
            raise RuntimeError("streams need a client made by trioq.connect")
        return self.nursery

    def usable(self) -> bool:
        """Can anything still be sent?  (The connection may break before ``run`` notes it.)"""
        return not self.closed and self.broken is None and not self.connection.is_broken

    async def aclose(self) -> None:
        """Send what is buffered (acknowledgements included) and close.

        Waits (up to ``CLOSE_TIMEOUT`` seconds, even if cancelled) for the
        scheduler to finish with this connection, so everything sent before
        is applied; idempotent.  Raises nothing for a connection that already
        broke.
        """
        if self.closed:
            await trio.lowlevel.checkpoint()
            return
        self.outbox.flush()
        self.closed = True
        self.connection.start_closing()
        with trio.CancelScope(shield=True):
            with trio.move_on_after(CLOSE_TIMEOUT):
                await self.done.wait()
            await self.connection.aclose()

    def check_usable(self) -> None:
        if self.closed:  # closed by its owner: trio's "you closed it"
            raise trio.ClosedResourceError("this client was closed")
        if self.broken is not None:
            raise trio.BrokenResourceError(self.broken_text()) from self.broken

    def send_request(self, message: Message, late: Callable[[Pending], None] | None = None) -> int:
        """Send ``message`` without waiting; ``late`` (if given) gets its answer."""
        self.check_usable()
        self.outbox.flush(wake=False)
        request_id = self.next_request
        while request_id in self.pending or request_id == 0:
            request_id = request_id + 1 if request_id < core.MAX_REQUEST_ID else 1
        self.next_request = request_id + 1 if request_id < core.MAX_REQUEST_ID else 1
        # Someone waits on this answer, and nothing else is in flight but requests
        # parked in the scheduler: the request and its answer skip write
        # gathering.  Requests in a stream, and answers nobody awaits, are gathered.
        awaited = late is None and len(self.pending) == self.parked
        self.connection.send(
            message.OP,
            request_id,
            encode_message(message),
            FLAG_AWAITED if awaited else 0,
            urgent=awaited,
        )
        pending = Pending()
        pending.late = late
        if message.may_park():
            pending.parks = True
            self.parked += 1
        self.pending[request_id] = pending
        return request_id

    def send_oneway(self, message: Message) -> None:
        """Send ``message`` with request id 0: no answer; failures come as notices."""
        self.check_usable()
        self.outbox.flush(wake=False)
        self.connection.send(message.OP, 0, encode_message(message))

    def count_local_call(self, items: int) -> bool:
        """Count a call served from local state; True when it is time to switch tasks.

        Fast paths (a put covered by credit, a get of a prefetched item) are
        cancel points on every call but let other tasks run only once per
        ``SCHEDULE_EVERY`` items (see ``_queue``).
        """
        self.calls_since_switch += items
        if self.calls_since_switch >= SCHEDULE_EVERY:
            self.calls_since_switch = 0
            return True
        return False

    async def request(
        self,
        message: Message,
        reply_type: type[M],
        *,
        on_cancel: CancelMode = "abandon",
        late: Callable[[Pending], None] = _ignore,
        settle: Callable[[Pending], None] = _ignore,
    ) -> M:
        """Send ``message`` and wait for its answer (a ``reply_type`` or an error).

        If the wait is cancelled: ``abandon`` forgets the answer; ``withdraw``
        asks the scheduler to drop the parked request and hands any answer
        that still comes to ``late``; ``outcome`` withdraws too but waits
        (shielded, until the answer or the connection's end) for the verdict,
        returning the answer if the request had already been carried out, so
        the caller always knows what happened.  That wait lasts at most
        ``VERDICT_GRACE`` seconds (a frozen scheduler or link must not hold
        the caller past its deadline): then the cancellation stands and
        ``settle`` gets the verdict when it comes (or the end of the
        connection), to put right what was carried out after all.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        request_id = self.send_request(message)
        pending = self.pending[request_id]
        try:
            await pending.event.wait()
        except trio.Cancelled:
            if pending.event.is_set():  # answered in the same instant
                if on_cancel == "outcome" and pending.op == Op.REPLY:
                    return self.result(pending, reply_type)
                if on_cancel == "withdraw":
                    late(pending)
                raise
            if on_cancel == "abandon":
                pending.late = _ignore
                raise
            self.withdraw(request_id)
            if on_cancel == "withdraw":
                pending.late = late
                raise
            with trio.CancelScope(shield=True):
                with trio.move_on_after(VERDICT_GRACE):
                    await pending.event.wait()
            if not pending.event.is_set():
                pending.late = settle  # the caller has gone: the verdict is settled later
                raise
            if pending.op == 0:
                raise  # the connection ended first: the cancellation stands (see above)
            if pending.op == Op.ERROR and self._is_withdrawn(pending):
                raise  # not carried out: the cancellation stands
            return self.result(pending, reply_type)  # done, or failed for another reason
        return self.result(pending, reply_type)

    async def flush(self, links: list[Any] | None = None) -> None:
        """Wait until the scheduler has applied everything this session sent so far.

        Then raise the first refusal of a one-way put (credited, unanswered)
        on ``links`` (default: every queue) that nobody has seen yet.
        """
        await self.request(Sync(), Ok)
        for link in self.queue_links.values() if links is None else links:
            error, link.error = link.error, None
            if error is not None:
                raise error

    async def _silent(self, seconds: float) -> None:
        """The scheduler (or the link to it) has been silent too long: break the session."""
        await self.abort(
            trio.TooSlowError(
                f"nothing from the scheduler at {self.address} for {seconds:.1f} s "
                f"(heartbeat every {self.heartbeat_interval:g} s): frozen or unreachable"
            )
        )

    async def abort(self, reason: BaseException) -> None:
        if self.broken is None:
            self.broken = reason
        await trio.aclose_forcefully(self.connection.stream)

    @staticmethod
    def _is_withdrawn(pending: Pending) -> bool:
        return decode_reply(ErrorReply, pending.payload).kind == "Cancelled"

    def withdraw(self, request_id: int) -> None:
        # If the connection is gone, the reader fails every pending request anyway.
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            self.outbox.flush(wake=False)
            self.connection.send(Op.CANCEL, 0, encode_message(Cancel(request_id)), urgent=True)

    def result(self, pending: Pending, reply_type: type[M]) -> M:
        if pending.op != Op.REPLY:
            raise self.error_of(pending)
        return decode_reply(reply_type, pending.payload)

    def broken_text(self) -> str:
        """ "The connection is broken", and why."""
        cause = "" if self.broken is None else f": {self.broken}"
        return f"the connection to the scheduler is broken{cause}"

    def error_of(self, pending: Pending) -> BaseException:
        """The exception an ``ERROR`` answer stands for."""
        if pending.op != Op.ERROR:  # no answer: the connection ended first
            error = trio.BrokenResourceError(self.broken_text())
            error.__cause__ = self.broken
            return error
        reply = decode_reply(ErrorReply, pending.payload)
        return refusal(reply.kind, reply.message)

    # -- the reader -------------------------------------------------------------------

    def on_frame(self, frame: Any) -> None:
        if frame.op == Op.PING:
            on_ping(self.connection, frame.payload)  # a sign of life, and the peer's beat
            return
        if frame.op != Op.REPLY and frame.op != Op.ERROR:
            self.on_notice(decode_notice(frame.op, frame.payload))
            return
        pending = self.pending.pop(frame.request_id, None)
        if pending is None:
            if frame.op == Op.ERROR and frame.request_id == 0:
                reply = decode_reply(ErrorReply, frame.payload)
                raise RemoteProtocolError(f"the scheduler closed the connection: {reply.message}")
            return  # an answer to a request that was abandoned and forgotten
        if pending.parks:
            self.parked -= 1
        pending.op = frame.op
        pending.payload = frame.payload
        if pending.late is not None:
            pending.late(pending)
        else:
            pending.event.set()

    def on_notice(self, notice: Message) -> None:
        if isinstance(notice, CreditNotice):
            link = self.queue_links.get(notice.queue)
            unused = 0 if link is None else link.on_credit(notice.credit, notice.action)
            subscriber = self.push_links.get(notice.queue)
            if notice.action == "deleted" and subscriber is not None:
                subscriber._on_deleted()
            if notice.action == "revoke" and not self.connection.is_broken:
                answer = CreditReturn(notice.queue, notice.credit, unused or 0)
                self.outbox.flush(wake=False)  # puts paid with that credit must arrive first
                self.connection.send(Op.CREDIT_RETURN, 0, encode_message(answer))
        elif isinstance(notice, Pushed):
            subscriber = self.push_links.get(notice.queue)
            if subscriber is not None:
                subscriber._on_pushed(notice)
            elif not self.connection.is_broken:  # unsubscribed meanwhile: give them back
                first = notice.first_lease
                leases = list(range(first, first + len(notice.items)))
                self.send_request(QueueReturn(leases), late=_ignore)
        elif isinstance(notice, TaskFinished):
            future = self.futures.get(notice.key)
            if future is not None:
                future.status = notice.status
            else:  # ahead of an item referring to it: adopt_future takes it
                self.ended[notice.key] = notice.status
                if len(self.ended) > ENDED_KEPT:  # items given back unread leave some
                    del self.ended[next(iter(self.ended))]
            self.task_ended()
        elif isinstance(notice, (TaskAssign, TaskAbort)):
            if self.task_handler is None:
                raise RemoteProtocolError("the scheduler sent a task to a client, not a worker")
            self.task_handler(notice)
        elif isinstance(notice, Barrier):
            # Everything sent so far is ahead of this answer on the connection.
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                self.send_oneway(BarrierDone(notice.number))
        elif isinstance(notice, LeaseRecall):
            link = self.queue_links.get(notice.queue)
            if link is not None:
                link.recall()
        elif isinstance(notice, ErrorNotice):
            link = self.queue_links.get(notice.queue)
            if link is not None and link.error is None:  # the first one nobody has seen
                link.error = refusal(notice.kind, notice.message)

    def adopt_future(self, key: str) -> Future:
        """The future for ``key`` read from an item, a value or a task: this
        client's own if it has one, else a new one the scheduler is told to
        keep (and report the end of) for this client."""
        future = self.futures.get(key)
        if future is None:
            future = self.futures[key] = Future(self, key)
            future.status = self.ended.pop(key, future.status)  # known at once if it ended
            if not self.connection.is_broken:
                self.send_oneway(TaskWatch(key))
        return future

    def task_ended(self) -> None:
        """Wake ``as_completed`` iterators: a future of this client has ended."""
        self.task_change.set()
        self.task_change = trio.Event()

    async def run(self) -> None:
        """Reader and writer; ends when the connection does."""
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self.connection.run_writer)
                nursery.start_soon(self.outbox.run_ack_timer)
                nursery.start_soon(return_idle_leases, self)
                nursery.start_soon(
                    partial(
                        keep_alive,
                        self.connection,
                        self.heartbeat_interval,
                        self._silent,
                        first=True,  # announces this client's interval; the scheduler answers
                    )
                )
                try:
                    await self.connection.run_reader(self.on_frame)
                    if not self.closed:
                        self.broken = trio.EndOfChannel("the scheduler closed the connection")
                except (
                    ProtocolError,
                    trio.BrokenResourceError,
                    trio.ClosedResourceError,
                    OSError,
                ) as exc:
                    if self.broken is None:
                        self.broken = exc
                finally:
                    nursery.cancel_scope.cancel()
        finally:
            self.done.set()
            if self.broken is None:
                self.broken = trio.ClosedResourceError("the client was closed")
            self.task_ended()  # as_completed iterators notice the end too
            for subscriber in self.push_links.values():
                subscriber._arrived.set()  # a push get waiting there raises
            pending, self.pending = self.pending, {}
            self.parked = 0
            for entry in pending.values():
                entry.op = 0
                if entry.late is not None:
                    entry.late(entry)
                else:
                    entry.event.set()


def session_of(client: Any) -> Session:
    """The session behind a public ``trioq.Client``: the one sanctioned way in.

    Raises ``TypeError`` for anything that is not a client.
    """
    session = getattr(client, "_session", None)
    if not isinstance(session, Session):
        raise TypeError(f"expected a trioq.Client, got {type(client).__name__}")
    return session
