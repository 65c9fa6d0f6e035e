"""Fiber's ``Pipe(duplex)``: two connected ends, first over queues, then direct.

Rules:

* A pipe starts on one or two uniquely named queues: a duplex pipe's first
  end sends on one and receives on the other, the second end the reverse.
  A simplex pipe is one queue: the first end receives, the second sends
  (multiprocessing's order).  The wrong direction raises ``TypeError`` (a
  programming error, like calling ``send`` on a ``trio.abc.ReceiveChannel``).
* Once both ends are in use they connect directly (``_pipe_link``): a
  round trip then costs one TCP hop each way instead of two via the
  scheduler.  The switch keeps the order of every value; a pipe whose ends
  cannot reach each other stays on its queues.  Either way the semantics
  below hold.
* An end opens its queue endpoints lazily, on its first send or receive, so
  a copy that is pickled away and never used where it was made does not
  keep the peer from seeing ``trio.EndOfChannel``.  Closing an end closes
  what it opened: the peer drains what was sent, then gets ``EndOfChannel``.
  Closing an end that never sent (and was never pickled, so it is the only
  copy) opens and closes a send endpoint, so the peer sees the end anyway.
* An end is passed on (pickled: through a queue, as a task argument) before
  it is used; a used end refuses to pickle.  A pickled end is its
  scheduler's address and the pipe's name: never a token or a connection.
  Unpickled, it is unbound and binds on first use to the client given to
  ``bind``, else to ``trioq.worker_client()`` inside a task, else to a
  connection that ``async with end:`` opens (token from the environment or
  this process's clusters) and closes on the way out, in the same task: no
  connection outlives the block, no task runs outside it.
* Cancellation: a cancelled receive loses nothing (a value already taken
  stays with this end's next receive), a cancelled send either sent or not.
* Once both ends are closed, wherever they are, the pipe leaves nothing on
  the scheduler: its queues, its link variable and its close tally are
  deleted by the end that closed last (``pipe_link.record_close`` tells it
  which end that is).  An end counts as closed when a copy that was used
  closes, or when the only copy closes unused; a copy closed after that
  finds the pipe gone.  An end that is never closed (its process died, or
  it was dropped) leaves the pipe in place.
* An end read back by a trioq client (a queue's ``get``, a variable, a
  channel, a task's result or argument) is bound to that client, as a
  future read back is, when the client is connected to the end's scheduler
  address; ``bind`` is for the other cases (``pickle.loads``, a client of
  another address).

Every operation is O(1) beyond the queue or link operation it makes.
"""

from __future__ import annotations

import contextlib
import uuid
from contextlib import AsyncExitStack
from types import TracebackType
from typing import TYPE_CHECKING, Any

import trio

from .._wire.serialize import decoding_owner
from .current import current_session
from .dial import open_session
from .pipe_link import SWITCH, LinkMaker, is_switch, record_close, remove_pipe_state
from .queue import Queue
from .session import Session, session_of

if TYPE_CHECKING:
    from .client import Client
    from .queue import QueueReceiveChannel, QueueSendChannel

__all__ = ["PipeEnd", "Pipe", "open_pipe"]

#: Seconds a closing end may spend, even when cancelled, telling the scheduler it
#: closed (and, if it closed last, deleting the pipe's state there).
CLOSE_BOOKKEEPING = 2.0


class PipeEnd(trio.abc.Channel[Any]):
    """One end of a pipe made by ``client.pipe()`` (or ``trioq.Pipe``).

    A ``trio.abc.Channel``: ``send``, ``receive`` (and Fiber's ``recv``),
    ``aclose``, ``async with``, and ``async for`` until ``trio.EndOfChannel``.
    It pickles (through a queue, as a task argument, with ``pickle``) until
    it is first used, as the scheduler's address and the pipe's name; the
    copy binds to a client on first use (see ``bind`` and ``__aenter__``).
    A simplex end supports one direction only: the other raises ``TypeError``.  Close every end that
    was used (``aclose`` or ``async with``): its endpoints stay open, and the
    peer sees no ``EndOfChannel``, until then or until its client goes away.
    """

    def __init__(
        self,
        address: str,
        send_queue: str | None,
        receive_queue: str | None,
        session: Session | None = None,
    ) -> None:
        self._address = address
        self._send_name = send_queue
        self._receive_name = receive_queue
        self._session = session
        self._queues: dict[str, Queue] = {}  # handles, made on first use
        self._sender: QueueSendChannel | None = None
        self._receiver: QueueReceiveChannel | None = None
        self._closed = False
        self._pickled = False  # a copy may be in use elsewhere
        self._stack: AsyncExitStack | None = None  # the connection ``async with`` opened
        # The direct link (see _pipe_link): which end this is, and how far it got.
        if send_queue is not None and receive_queue is not None:
            self._pipe, self._role = send_queue[:-2], int(send_queue[-1])
        else:  # simplex: the receiving end listens
            self._pipe = receive_queue or send_queue or ""
            self._role = 0 if receive_queue is not None else 1
        self._maker: LinkMaker | None = None  # started on first use
        self._switched_out = False  # sends go over the link now (marker queued)
        self._switched_in = False  # receives come from the link now (marker seen)

    # -- what it is ----------------------------------------------------------------------

    @property
    def address(self) -> str:
        """The address of the scheduler through which the pipe's ends meet."""
        return self._address

    @property
    def readable(self) -> bool:
        """Whether this end can receive (False for the send-only end of a simplex pipe)."""
        return self._receive_name is not None

    @property
    def writable(self) -> bool:
        """Whether this end can send (False for the receive-only end of a simplex pipe)."""
        return self._send_name is not None

    @property
    def closed(self) -> bool:
        """Whether ``aclose`` was called on this end."""
        return self._closed

    def __repr__(self) -> str:
        kind = {(True, True): "duplex", (True, False): "receive-only"}.get(
            (self.readable, self.writable), "send-only"
        )
        state = "closed" if self._closed else "bound" if self._session else "unbound"
        return f"<trioq.PipeEnd {kind} {state} {self._address}>"

    def __reduce__(self) -> tuple[Any, tuple[str, str | None, str | None]]:
        """Pickled, an end is its address and the pipe's name; the copy is unbound.

        Raises ``trio.ClosedResourceError`` for a closed end (its copy could
        only fail), ``RuntimeError`` for an end already used (pass ends on
        before using them); a trioq put or submit reports either as
        ``SerializationError``.
        Once pickled, this object no longer counts as the only copy: closing
        it unused no longer ends the peer's stream.
        """
        if self._closed:
            raise trio.ClosedResourceError("a closed pipe end cannot be pickled")
        if self._maker is not None:
            raise RuntimeError("a pipe end that was used cannot be pickled: pass it on first")
        self._pickled = True
        return _unpickle_end, (self._address, self._send_name, self._receive_name)

    # -- binding ----------------------------------------------------------------------------

    def bind(self, client: Client) -> PipeEnd:
        """Use ``client``'s connection for this end; returns the end.

        For an end unpickled in a process that has its own ``trioq.connect``
        client.  Binding again to the same client is a no-op; raises
        ``RuntimeError`` if the end is already bound to another client,
        ``TypeError`` for anything that is not a ``trioq.Client``.
        """
        session = session_of(client)
        if self._session is not None and self._session is not session:
            raise RuntimeError(f"{self!r} is already bound to another client")
        self._session = session
        return self

    def _bound(self) -> Session:
        """The client for this end's next operation, binding it if possible."""
        if self._session is None:
            session = current_session()
            if session is None:
                raise RuntimeError(
                    "this pipe end is not bound to a client (it was unpickled): call "
                    "end.bind(client), use it inside a trioq task, or enter it with "
                    f"`async with end:` to connect to {self._address} for the block"
                )
            self._session = session
        return self._session

    async def __aenter__(self) -> PipeEnd:
        """Bind if needed and return the end; leaving the block closes it.

        An unbound end outside a trioq task connects to its scheduler here
        (``trioq.connect(address)``: the token comes from this process's
        clusters or ``TRIOQ_TOKEN``) and leaves that connection when the
        block ends.  Raises what ``trioq.connect`` raises.
        """
        if self._session is None and not self._closed and current_session() is None:
            async with AsyncExitStack() as stack:
                self._session = await stack.enter_async_context(open_session(self._address))
                stack.push_async_callback(self.aclose)  # the end closes first
                self._stack = stack.pop_all()
        return self

    async def __aexit__(  # type: ignore[override]  # may swallow, as its connection does
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool | None:
        """Close the end, then the connection ``__aenter__`` opened, if any."""
        stack, self._stack = self._stack, None
        if stack is None:
            await self.aclose()
            return False
        # The block's exception goes through the connection's context: its
        # nursery may be what cancelled the block.
        return await stack.__aexit__(exc_type, exc_value, traceback)

    # -- the channel ------------------------------------------------------------------------

    async def send(self, value: Any) -> None:
        """Send ``value`` to the other end.

        Raises ``TypeError`` on a receive-only end, ``trio.ClosedResourceError``
        after this end's ``aclose``, ``trio.BrokenResourceError`` once the
        other end closed its receiving side, ``RuntimeError`` if the end is
        unbound (see ``bind``), ``SerializationError`` for a value that cannot
        be serialized.  If cancelled, the value was not sent.  Once the
        client's connection is broken or closed, raises
        ``trio.BrokenResourceError`` (see ``trioq.Client``).
        """
        if self._send_name is None:
            raise TypeError("this pipe end is receive-only")
        if self._closed:
            raise trio.ClosedResourceError("this pipe end was closed")
        session = self._bound()
        maker = self._start_link(session)
        if self._sender is None:
            self._sender = self._queue(session, self._send_name).open_send_channel()
        if maker.link is not None and not self._switched_out:
            await self._sender.send((SWITCH, self._pipe))  # the receiver turns to the link
            self._switched_out = True
        if self._switched_out:
            assert maker.link is not None
            await maker.link.send(session.serializer.dumps_item(value))
        else:
            await self._sender.send(value)

    async def receive(self) -> Any:
        """The next value sent by the other end, waiting for one.

        Raises ``trio.EndOfChannel`` once the other end closed and everything
        it sent was received, ``TypeError`` on a send-only end,
        ``trio.ClosedResourceError`` after this end's ``aclose``,
        ``RuntimeError`` if the end is unbound (see ``bind``),
        ``trio.BrokenResourceError`` if the direct link to the other end
        broke or the client's connection did.  If cancelled, nothing is
        lost: a value already taken is kept for the next receive.
        """
        if self._receive_name is None:
            raise TypeError("this pipe end is send-only")
        if self._closed:
            raise trio.ClosedResourceError("this pipe end was closed")
        session = self._bound()
        maker = self._start_link(session)
        if self._receiver is None:
            self._receiver = self._queue(session, self._receive_name).open_receive_channel()
        if not self._switched_in:
            value = await self._receiver.receive()
            if not is_switch(value, self._pipe):
                return value
            self._switched_in = True  # the sender sends over the link from now on
        await maker.settled.wait()  # the peer had it up: ours is (or failed) at once
        if maker.link is None:
            raise trio.BrokenResourceError("the pipe's direct link failed as it was made")
        return session.serializer.loads(await maker.link.receive())

    def _start_link(self, session: Session) -> LinkMaker:
        """The first use of the end starts making the direct link, in the background."""
        if self._maker is None:
            self._maker = LinkMaker(session, self._pipe, self._role)
            self._maker.start()
        return self._maker

    async def recv(self) -> Any:
        """Fiber's (and multiprocessing's) name for ``receive``; the same in every way."""
        return await self.receive()

    async def aclose(self) -> None:
        """Close this end (idempotent).

        The other end drains what was sent, then gets ``trio.EndOfChannel``;
        its sends raise ``trio.BrokenResourceError``.  An end that never sent,
        and was never pickled, still ends the other side's stream (this needs
        its client: an unbound end outside a task closes only locally).
        Closing tells the scheduler (one round trip); the end that closes
        last deletes the pipe's queues, link variable and close tally (a few
        more).  If cancelled (an ``async with end:`` left by a cancellation,
        say), the end is closed all the same and that bookkeeping still runs,
        shielded, for at most ``CLOSE_BOOKKEEPING`` seconds.
        """
        if self._closed:
            await trio.lowlevel.checkpoint()
            return
        self._closed = True
        if self._maker is not None:
            self._maker.stop()  # the peer reads what was sent, then the end of stream
        session = self._session if self._session is not None else current_session()
        if session is None or session.closed or session.broken is not None:
            session = None  # nothing to tell the scheduler (or no way to)
        sole = not self._pickled
        # This close counts for the pipe if this copy was used, or is the only one.
        counts = session is not None and (self._maker is not None or sole)
        # Every endpoint closes without a checkpoint: a cancelled aclose closes them all.
        if self._sender is not None:
            self._sender.close()
        elif self._send_name is not None and sole and session is not None:
            self._queue(session, self._send_name).open_send_channel().close()
        if self._receiver is not None:
            self._receiver.close()
        elif self._receive_name is not None and sole and session is not None:
            self._queue(session, self._receive_name).open_receive_channel().close()
        if counts:
            assert session is not None
            with (
                trio.CancelScope(shield=True),
                trio.move_on_after(CLOSE_BOOKKEEPING),  # a scheduler that does not answer
                contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError),
            ):
                if await record_close(session, self._pipe, self._role):
                    for name in (self._send_name, self._receive_name):
                        if name is not None:
                            await self._queue(session, name).delete()
                    await remove_pipe_state(session, self._pipe)
        await trio.lowlevel.checkpoint()

    def _queue(self, session: Session, name: str) -> Queue:
        queue = self._queues.get(name)
        if queue is None:
            queue = self._queues[name] = Queue(session, name)
        return queue


def _unpickle_end(address: str, send_queue: str | None, receive_queue: str | None) -> PipeEnd:
    """The copy: bound to the client whose serializer reads it, if that client is
    connected to the end's scheduler (see ``_reading_session``); else unbound."""
    return PipeEnd(address, send_queue, receive_queue, _reading_session(address))


def _reading_session(address: str) -> Session | None:
    """The session whose serializer is reading the end now, if it is usable and
    connected to ``address`` (an end of another scheduler stays unbound)."""
    owner = decoding_owner()
    if isinstance(owner, Session) and owner.address == address and owner.usable():
        return owner
    return None


async def open_pipe(session: Session, duplex: bool = True) -> tuple[PipeEnd, PipeEnd]:
    """Two connected ends bound to ``client`` (the body of ``Client.pipe``).

    Duplex: each end sends to the other.  Simplex (``duplex=False``): the
    first end only receives, the second only sends.  Nothing reaches the
    scheduler until an end is used.  Raises ``trio.ClosedResourceError`` or
    ``trio.BrokenResourceError`` if the client cannot be used.
    """
    if type(duplex) is not bool:
        raise TypeError(f"duplex must be a bool, got {type(duplex).__name__}")
    session.check_usable()
    base = f"pipe-{uuid.uuid4().hex}"
    if duplex:
        forward, backward = f"{base}-0", f"{base}-1"
        ends = (
            PipeEnd(session.address, forward, backward, session),
            PipeEnd(session.address, backward, forward, session),
        )
    else:
        ends = (
            PipeEnd(session.address, None, base, session),
            PipeEnd(session.address, base, None, session),
        )
    await trio.lowlevel.checkpoint()
    return ends


async def Pipe(client: Client, duplex: bool = True) -> tuple[PipeEnd, PipeEnd]:
    """Fiber's ``Pipe(duplex)`` with the client made explicit: ``client.pipe(duplex)``.

    Two connected ends bound to ``client``; with ``duplex`` False the first
    only receives and the second only sends.  Raises ``TypeError`` for a
    ``duplex`` that is not a bool, ``trio.BrokenResourceError`` if the
    client's connection is broken or it was closed.
    """
    return await open_pipe(session_of(client), duplex)
