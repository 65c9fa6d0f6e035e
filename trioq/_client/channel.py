"""``Channel``: a named, replayable, append-only stream shared by every client.

Rules:

* ``append`` does not wait for the scheduler: the element is written on the
  ordered connection and the call returns; ``flush`` waits until every
  append of this handle was applied, and raises the first refusal (a
  stopped channel, say) that nobody has seen yet.  A refusal is also raised
  by the next ``append``.
* Iterating (``async for x in channel``) reads from the oldest retained
  element and then follows new ones, in the scheduler's order, which is the
  same for every subscriber.  It ends (as a trio channel ends with
  ``EndOfChannel``) after the last element once the channel is stopped.
  A cancelled read is withdrawn and the subscription's position does not
  move: reading is idempotent, so nothing is lost or repeated.
* Elements are serialized like queue items; futures among them stay alive
  on the scheduler while the channel retains them.
* ``delete`` forgets the channel on the scheduler, as ``Queue.delete`` does
  a queue: reads waiting on it raise ``trio.BrokenResourceError`` (and so
  does every later ``receive`` of their subscriptions); later calls of any
  handle on the name raise it too, until a new ``client.channel(name)``
  opens the name afresh.
* The handle knows the channel's length only as the scheduler last reported
  it (its open, an append of this handle, a ``snapshot``): ``repr`` shows
  that count, and never does I/O.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import trio

from .._wire.channel_messages import (
    ChannelAppend,
    ChannelAppended,
    ChannelDelete,
    ChannelInfo,
    ChannelItems,
    ChannelOpen,
    ChannelRead,
    ChannelStop,
)
from .._wire.messages import Ok
from .statistics import ChannelStatistics

if TYPE_CHECKING:
    from .session import Pending, Session

__all__ = ["Channel", "ChannelSubscription"]

READ_BATCH = 256  # elements asked for per read by a subscriber


class Channel:
    """A handle on the named replayable channel; get one with ``client.channel``.

    ``maxlen`` (None: unbounded) keeps only the newest elements; it is set
    by the first handle that opens the channel.  A handle given a
    ``maxlen`` waits for the scheduler's verdict on it before its first
    append; a different value than the channel's makes that append, and
    every later ``append``, ``extend`` or ``flush`` of the handle, raise
    ``ValueError``, and nothing it sent is stored.  Raises ``TypeError`` for a name that is not a
    str, ``ValueError`` for a ``maxlen`` that is not a positive int or None.
    """

    def __init__(self, session: Session, name: str, maxlen: int | None = None) -> None:
        if type(name) is not str:
            raise TypeError(f"channel name must be a str, got {type(name).__name__}")
        if maxlen is not None and (type(maxlen) is not int or maxlen < 1):
            raise ValueError(f"maxlen must be a positive int or None, got {maxlen!r}")
        self._session = session
        #: The channel's name in the cluster.
        self.name = name
        self._maxlen = maxlen or 0
        self._stopped = False
        self._length: int | None = None  # as last reported by the scheduler
        self._in_flight = 0  # appends sent and not yet answered
        self._settled = trio.Event()  # set when _in_flight drops to 0
        self._settled.set()
        self._error: BaseException | None = None  # a refusal nobody has seen
        # A maxlen the scheduler has not confirmed may be refused: appends wait for the verdict.
        self._verdict: trio.Event | None = trio.Event() if self._maxlen else None
        self._refused: BaseException | None = None  # this handle's maxlen, refused
        session.send_request(ChannelOpen(name, self._maxlen), late=self._on_opened)
        self._begin()  # flush also waits for the open (a maxlen refused, say)

    def __repr__(self) -> str:
        """``<trioq.Channel 'name' maxlen=N len=M>``: ``len`` is the element count
        the scheduler last reported to this handle (``?`` before its open was
        answered); other clients may have appended since."""
        length = "?" if self._length is None else self._length
        return f"<trioq.Channel {self.name!r} maxlen={self.maxlen} len={length}>"

    @property
    def maxlen(self) -> int | None:
        """The number of elements kept (None: all), as the scheduler reported it."""
        return self._maxlen or None

    # -- appending ---------------------------------------------------------------------

    async def append(self, element: Any) -> None:
        """Append ``element`` (data or futures) after every element appended before.

        Returns without waiting for the scheduler (see ``flush``).  Raises
        ``SerializationError`` for an element that cannot be serialized,
        ``LocalProtocolError`` for one too large for a frame, and a refusal
        of an earlier append that nobody has seen yet
        (``trio.ClosedResourceError`` once the channel was stopped,
        ``ValueError`` for an element over the size limit, ``LookupError``
        for one holding a released future).  If cancelled, nothing was appended.
        """
        await self.extend([element])

    async def extend(self, elements: Iterable[Any]) -> None:
        """Append several elements in order, in one message (see ``append``).

        Raises what ``append`` raises; all or none are appended.
        """
        dumps = self._session.serializer.dumps_item
        data = [dumps(element) for element in elements]
        await trio.lowlevel.checkpoint_if_cancelled()
        if self._verdict is not None:
            await self._verdict.wait()
        self._raise_error()
        if data:
            self._session.send_request(ChannelAppend(self.name, data), late=self._on_appended)
            self._begin()
        await trio.lowlevel.cancel_shielded_checkpoint()

    async def flush(self) -> None:
        """Wait until the scheduler has applied every append made through this handle.

        Raises the first refusal of those appends, as ``append`` would, and
        ``trio.BrokenResourceError`` if the connection broke (appends still
        unanswered may be lost).  Cancelling the wait changes nothing: the
        appends stand.
        """
        await self._settled.wait()
        self._session.check_usable()  # a broken connection: the appends may be lost
        self._raise_error()

    async def stop(self) -> None:
        """End every subscriber's iteration after the last element appended.

        Later appends are refused: ``trio.ClosedResourceError`` comes from the
        appending handle's next ``append``, ``extend`` or ``flush``.
        Idempotent.  If cancelled, the channel may or may not be stopped;
        repeating it is safe.
        """
        await self._session.request(ChannelStop(self.name), Ok)
        self._stopped = True

    async def delete(self) -> None:
        """Delete the channel and its elements from the scheduler.

        Reads waiting on it (``receive`` of a subscription, in any client)
        raise ``trio.BrokenResourceError``, and so does every later call on
        the name through an existing handle, until ``client.channel(name)``
        creates it afresh (empty, numbered from 0; an old subscription must
        not be reused on it).  Futures only the channel held may be
        released.  Deleting a channel that does not exist is no error.  If
        cancelled, the deletion may or may not have happened; repeating it
        is safe.
        """
        await self._session.request(ChannelDelete(self.name), Ok)
        self._length, self._stopped = 0, False

    # -- reading -------------------------------------------------------------------------

    async def snapshot(self) -> list[Any]:
        """The retained elements, oldest first, as the channel is now.

        Never waits for new elements; it reads in batches, so elements
        appended meanwhile may be included.  Raises ``SerializationError`` for
        an element that cannot be deserialized here.  A cancelled call
        changes nothing.
        """
        elements: list[Any] = []
        loads = self._session.serializer.loads
        start, end = 0, None
        while end is None or start < end:
            reply = await self._read(start, READ_BATCH, wait=False)
            if end is None:
                end = reply.end
            elements.extend(loads(item) for item in reply.items)
            start = reply.first + len(reply.items)
            if not reply.items:
                break
        self._length = len(elements)
        return elements

    def __aiter__(self) -> ChannelSubscription:
        """``self.subscribe()``: every retained element, then new ones."""
        return self.subscribe()

    def subscribe(self, start: int = 0) -> ChannelSubscription:
        """A receive channel of every element from number ``start`` (or the
        oldest retained one), then each new one as it is appended; it raises
        ``trio.EndOfChannel`` after the last element once the channel stopped.

        Raises ``ValueError`` for a ``start`` that is not an int >= 0.  Sends
        nothing until the first ``receive``.
        """
        if type(start) is not int or start < 0:
            raise ValueError(f"start must be an int >= 0, got {start!r}")
        return ChannelSubscription(self, start)

    async def _read(self, start: int, max_items: int, *, wait: bool) -> ChannelItems:
        try:
            return await self._session.request(
                ChannelRead(self.name, start, max_items, wait), ChannelItems, on_cancel="withdraw"
            )
        except trio.WouldBlock:  # nothing from ``start`` yet: an empty answer
            return ChannelItems([], start, start, False)

    # -- answers nobody awaited ---------------------------------------------------------------

    def _begin(self) -> None:
        """A request of this handle is in flight (``flush`` waits for it)."""
        if not self._in_flight:
            self._settled = trio.Event()  # waiters on the old one were already woken
        self._in_flight += 1

    def _end(self) -> None:
        self._in_flight -= 1
        if not self._in_flight:
            self._settled.set()

    def _on_opened(self, pending: Pending) -> None:
        try:
            if pending.op == 0:
                return  # the connection broke: every later call says so
            try:
                info = self._session.result(pending, ChannelInfo)
            except ValueError as exc:  # another maxlen: this handle's, never another's
                self._refused = exc
                return
            except Exception as exc:
                self._keep_error(exc)
                return
            self._maxlen, self._stopped, self._length = info.maxlen, info.stopped, info.length
        finally:
            self._end()
            if self._verdict is not None:
                self._verdict.set()

    def _on_appended(self, pending: Pending) -> None:
        if pending.op:
            try:
                self._length = self._session.result(pending, ChannelAppended).length
            except Exception as exc:
                self._keep_error(exc)
        self._end()

    def _keep_error(self, exc: BaseException) -> None:
        if self._error is None:
            self._error = exc

    def _raise_error(self) -> None:
        self._session.check_usable()
        if self._refused is not None:
            raise self._refused
        error, self._error = self._error, None
        if error is not None:
            raise error


class ChannelSubscription(trio.abc.ReceiveChannel[Any]):
    """One subscriber's reading position in a ``Channel`` (``channel.subscribe()``).

    ``receive`` returns the next element, waiting for one to be appended,
    and raises ``trio.EndOfChannel`` after the last one once the channel is
    stopped.  A cancelled ``receive`` leaves the position where it was.
    """

    def __init__(self, channel: Channel, start: int) -> None:
        self._channel = channel
        self._buffered: deque[bytes] = deque()
        self._closed = False
        self._broken: trio.BrokenResourceError | None = None  # the channel was deleted
        self._waiting = 0  # tasks in ``receive`` waiting for the scheduler
        self._peak = 0  # the largest backlog seen (elements not yet received here)
        #: The number of the next element to fetch from the scheduler.
        self.position = start

    async def receive(self) -> Any:
        """The next element, waiting for one to be appended.

        Raises ``trio.EndOfChannel`` once the channel is stopped and read to
        the end, ``trio.ClosedResourceError`` after ``aclose``,
        ``trio.BrokenResourceError`` once the channel was deleted (from then
        on, even if the name is opened again) or the connection broke,
        ``SerializationError`` for an element that cannot be deserialized
        here.  If cancelled, the position does not move: nothing is lost.
        """
        if self._closed:
            raise trio.ClosedResourceError("this subscription was closed")
        if self._broken is not None:
            await trio.lowlevel.checkpoint()
            raise trio.BrokenResourceError(*self._broken.args) from self._broken
        if not self._buffered:
            while not self._buffered:
                self._waiting += 1
                try:
                    reply = await self._channel._read(self.position, READ_BATCH, wait=True)
                except trio.BrokenResourceError as exc:
                    if self._channel._session.usable():  # the channel went, not the link
                        self._broken = exc
                    raise
                finally:
                    self._waiting -= 1
                self._peak = max(self._peak, reply.end - reply.first)
                if not reply.items and reply.stopped:
                    raise trio.EndOfChannel(f"channel {self._channel.name!r} was stopped")
                self._buffered.extend(reply.items)
                self.position = reply.first + len(reply.items)
        else:
            await trio.lowlevel.checkpoint()
        value = self._channel._session.serializer.loads(self._buffered[0])
        self._buffered.popleft()  # taken only once decoded: a bad element raises again
        return value

    async def statistics(self) -> ChannelStatistics:
        """This subscription's figures, in the shape of trio's memory channels.

        The buffer is its backlog: elements retained and not yet received
        here (``max_buffer_size``: the channel's ``maxlen``, ``math.inf``
        for none).  A channel has no send endpoints: ``open_send_channels``
        is 1 while it takes appends, 0 once stopped (then the backlog is
        what is left before ``EndOfChannel``).  ``open_receive_channels`` is
        1 until this subscription is closed, ``tasks_waiting_receive`` this
        process's tasks waiting in its ``receive``; appends never wait.
        ``peak_buffer_used`` is the largest backlog seen by its reads.  One
        round trip; raises what ``receive`` raises for a deleted channel.
        """
        reply = await self._channel._read(self.position, 1, wait=False)
        backlog = len(self._buffered) + reply.end - reply.first
        self._peak = max(self._peak, backlog)
        maxlen = self._channel.maxlen
        return ChannelStatistics(
            current_buffer_used=backlog,
            max_buffer_size=math.inf if maxlen is None else maxlen,
            open_send_channels=0 if reply.stopped else 1,
            open_receive_channels=0 if self._closed else 1,
            tasks_waiting_send=0,
            tasks_waiting_receive=self._waiting,
            peak_buffer_used=self._peak,
        )

    async def aclose(self) -> None:
        """Stop reading (the channel itself goes on); idempotent, raises nothing.

        Later ``receive`` calls raise ``trio.ClosedResourceError``.
        """
        self._closed = True
        self._buffered.clear()
        await trio.lowlevel.checkpoint()
