"""The direct TCP link between the two ends of a pipe, arranged through the scheduler.

Rules:

* A pipe starts out carried by scheduler queues (see ``_pipe``): it works
  whatever the order in which its ends are used, and wherever they are.
  As soon as both ends are in use, they connect directly: end 0 listens
  on the address its client reaches the scheduler from and publishes that
  address with a fresh secret in a scheduler variable; end 1 reads it and
  connects.  The connection is authenticated with that secret (the same
  HMAC handshake as the scheduler's), so pickled data on it comes only
  from a peer that the scheduler's token holders let in.
* Switching keeps the order: a sender puts a switch marker on its queue,
  then sends over the link; a receiver reads its queue until the marker,
  then reads the link.  If the link cannot be made (no route between the
  machines, say), the pipe simply stays on the queues.
* The link's tasks (listener, connector, reader, writer) run in the bound
  client's nursery under one cancel scope that closing the end cancels.
  Received frames wait in a bounded buffer; a slow receiver stops the
  reading, and TCP slows the sender (``wait_writable``).
* Closing is tallied on the scheduler, so ends in different processes agree
  on when the pipe is finished: an end that closes appends its role (0 or
  1) to the pipe's ``PIPE/closed`` channel, and the close whose append
  first puts both roles in that channel's sequence (there is exactly one,
  since the scheduler orders the appends) reports it; that end then removes
  the pipe's queues, its link variable and the tally (``remove_pipe_state``).
"""

from __future__ import annotations

import contextlib
import secrets
from typing import TYPE_CHECKING, Any

import trio

from .._exceptions import AuthenticationError, ProtocolError
from .._impl import core
from .._wire.channel_messages import (
    ChannelAppend,
    ChannelAppended,
    ChannelDelete,
    ChannelItems,
    ChannelOpen,
    ChannelRead,
)
from .._wire.messages import Ok
from .._wire.transport import FramedConnection
from .variable import Variable

if TYPE_CHECKING:
    from .session import Session

__all__ = ["Link", "LinkMaker", "SWITCH", "is_switch", "record_close", "remove_pipe_state"]

SWITCH = "trioq-pipe-switch"  # with the pipe's name: the marker a sender puts on its queue
LINK_BUFFER = 64  # frames received and not yet taken
_ITEM = 1  # the op code of a frame carrying one value
_CONFIRM = 2  # end 1's first frame: it has the link too
ESTABLISH_TIMEOUT = 10.0  # seconds for a connect and its handshake


class Link:
    """An established direct connection: serialized values in and out."""

    def __init__(self, connection: FramedConnection) -> None:
        self._connection = connection
        self._incoming_send, self._incoming = trio.open_memory_channel[bytes](LINK_BUFFER)
        self._failure: BaseException | None = None  # why the peer's stream ended badly

    async def run(self) -> None:
        """Writer and reader; returns when the peer's stream ends (or is cancelled)."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._connection.run_writer)
            try:
                async with self._incoming_send:
                    while True:
                        frame = await self._connection.receive_frame()
                        if frame is None:
                            break
                        await self._incoming_send.send(frame.payload)
            except (trio.BrokenResourceError, ProtocolError, OSError) as exc:
                self._failure = exc
            await self._connection.writer_done.wait()  # our own end closes it

    async def send(self, payload: bytes) -> None:
        """Queue one value (waiting while the outgoing buffer is full)."""
        await self._connection.wait_writable()
        self._connection.send(_ITEM, 0, payload)

    async def receive(self) -> bytes:
        """The next value; ``trio.EndOfChannel`` once the peer closed, or
        ``trio.BrokenResourceError`` if its stream broke."""
        try:
            return await self._incoming.receive()
        except trio.EndOfChannel:
            if self._failure is not None:
                raise trio.BrokenResourceError("the pipe's other end was lost") from self._failure
            raise

    def close(self) -> None:
        """Send what is buffered, then the end of stream (the peer sees EndOfChannel)."""
        self._connection.start_closing()

    async def flushed(self) -> None:
        """Wait until the writer has sent everything and ended."""
        await self._connection.writer_done.wait()

    async def aclose(self) -> None:
        await self._connection.aclose()


class LinkMaker:
    """One end's attempt at a link: listen (end 0) or connect (end 1), in the background."""

    def __init__(self, session: Session, pipe: str, role: int) -> None:
        self._session = session
        self._pipe = pipe
        self._role = role
        self._scope = trio.CancelScope()
        self._stopping = trio.Event()
        self.ready = trio.Event()  # set once ``link`` is up
        self.settled = trio.Event()  # set once the link is up or has failed
        self.failed = False  # the link could not be made
        self.link: Link | None = None

    def start(self) -> None:
        """Begin in the client's nursery; failures leave the pipe on its queues."""
        self._session.stream_nursery().start_soon(self._run)

    def stop(self) -> None:
        """Close the link after what is buffered, then end the background work."""
        self._stopping.set()
        if self.link is None:
            self._scope.cancel()
        else:
            self.link.close()

    async def _run(self) -> None:
        with self._scope:
            try:
                if self._role == 0:
                    connection = await self._listen()
                else:
                    connection = await self._connect()
            except Exception:
                # No direct route (or the client went): the queues carry on.
                # A receiver that already saw the peer's switch learns it here.
                self.failed = True
                self.settled.set()
                return
            link = self.link = Link(connection)
            self.ready.set()
            self.settled.set()
            if self._stopping.is_set():
                link.close()
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._stop_when_flushed, link, nursery.cancel_scope)
                    await link.run()
                    nursery.cancel_scope.cancel()
            finally:
                with trio.CancelScope(shield=True):
                    await link.aclose()

    async def _stop_when_flushed(self, link: Link, scope: trio.CancelScope) -> None:
        """Once stopped and flushed, stop reading too (the peer may never close)."""
        await self._stopping.wait()
        with trio.move_on_after(ESTABLISH_TIMEOUT):
            await link.flushed()
        scope.cancel()

    def _variable(self) -> Variable:
        return Variable(self._session, f"{self._pipe}/link")

    async def _listen(self) -> FramedConnection:
        """End 0: publish an address and a secret; take the first peer that proves it."""
        host = _local_host(self._session)
        listeners = await trio.open_tcp_listeners(0, host=host)
        secret = secrets.token_hex(32)
        try:
            port = listeners[0].socket.getsockname()[1]
            await self._variable().set([f"{host}:{port}", secret])
            while True:
                stream = await listeners[0].accept()
                connection = FramedConnection(stream, busy_window=0)
                try:
                    await connection.server_handshake(secret, 0)
                except AuthenticationError:
                    await trio.aclose_forcefully(stream)
                    continue  # not our peer: wait for the one that knows the secret
                except BaseException:
                    await trio.aclose_forcefully(stream)
                    raise
                try:  # our peer: it counts the link as made once it has sent this
                    with trio.fail_after(ESTABLISH_TIMEOUT):
                        confirm = await connection.receive_frame()
                    if confirm is None or confirm.op != _CONFIRM:
                        raise AuthenticationError("the pipe's other end did not confirm the link")
                except BaseException:
                    await trio.aclose_forcefully(stream)
                    raise  # it tried and failed: no second attempt, the queues carry on
                try:
                    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                        await self._variable().delete()  # one peer per pipe
                except BaseException:
                    await trio.aclose_forcefully(stream)
                    raise
                return connection
        finally:
            # Shielded: a cancellation here must not lose the connection returned above.
            with trio.CancelScope(shield=True):
                for listener in listeners:
                    await listener.aclose()

    async def _connect(self) -> FramedConnection:
        """End 1: wait for end 0's address, connect, prove the secret, confirm."""
        return await self._connect_to_peer(confirm=True)

    async def _connect_to_peer(self, *, confirm: bool) -> FramedConnection:
        """``_connect``; a test leaves out the confirmation to fail halfway."""
        address, secret = await self._variable().get()
        host, _, port = address.rpartition(":")
        with trio.fail_after(ESTABLISH_TIMEOUT):
            stream = await trio.open_tcp_stream(host, int(port))
            connection = FramedConnection(stream, busy_window=0)
            try:
                await connection.client_handshake(secret, f"{self._pipe}/1")
                # Both ends count the link as made only once end 0 has this frame:
                # an end that failed halfway never sends (or waits for) a switch.
                if confirm:
                    await connection.stream.send_all(core.encode_frame(_CONFIRM, 0, b""))
            except BaseException:
                await trio.aclose_forcefully(stream)
                raise
        return connection


def _local_host(session: Session) -> str:
    """The address this client reaches its scheduler from: reachable by its peers too."""
    sockname = session.connection.stream.socket.getsockname()  # type: ignore[attr-defined]
    return str(sockname[0])


def is_switch(value: Any, pipe: str) -> bool:
    """Is ``value`` the marker a sender of this pipe puts on its queue?"""
    return type(value) is tuple and len(value) == 2 and value == (SWITCH, pipe)


# -- the close tally ------------------------------------------------------------------------


def _tally(pipe: str) -> str:
    return f"{pipe}/closed"


def _ignore(pending: Any) -> None:
    pass


async def record_close(session: Session, pipe: str, role: int) -> bool:
    """Tell the scheduler end ``role`` of ``pipe`` closed; True for the one close
    that finds both ends closed (the caller then removes the pipe's state).

    Two round trips at most (the append, then a read of the tally once it
    holds two entries).  Raises ``trio.BrokenResourceError`` if the
    connection broke or the tally was removed meanwhile.
    """
    name = _tally(pipe)
    session.send_request(ChannelOpen(name, 0), late=_ignore)  # creates it, in order
    data = session.serializer.dumps_item(role)
    appended = await session.request(ChannelAppend(name, [data]), ChannelAppended)
    if appended.end < 2:
        return False  # the first close: the other end is still open
    reply = await session.request(ChannelRead(name, 0, appended.end, False), ChannelItems)
    roles = [session.serializer.loads(item) for item in reply.items[: appended.end - reply.first]]
    both = {0, 1}
    return both <= set(roles) and not both <= set(roles[:-1])  # ours is the last one


async def remove_pipe_state(session: Session, pipe: str) -> None:
    """Delete the pipe's link variable and its close tally (its queues are the end's)."""
    await Variable(session, f"{pipe}/link").delete()
    await session.request(ChannelDelete(_tally(pipe)), Ok)
