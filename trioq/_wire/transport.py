"""The trio shell around one connection: handshake, a frame reader, coalesced writes.

Rules:

* ``send`` never blocks: it appends a frame to the connection's encoder and
  wakes the writer.  The writer sends everything buffered in one
  ``send_all``, so frames issued together leave together (write
  coalescing).  ``wait_writable`` gives producers back pressure when the
  buffer passes its high-water mark.
* Gathering waits a few scheduling rounds for frames sent in a stream; a
  frame someone waits on alone (``urgent``: a lone request, its answer;
  the owner decides, see ``FLAG_AWAITED``) goes out with the next write.
* Over a plain TCP stream, an urgent frame after a quiet spell (20 us: a
  burst of requests issued together still leaves in one or two writes) is
  written by ``send`` itself, with one non-blocking system call, when the writer
  is not in the middle of a write: the round of the run loop that waking
  the writer costs is a good part of a round trip.  What the socket does
  not take is left to the writer, which sends it before anything newer.
* ``run_reader`` and ``run_writer`` are loops for the owner's nursery; the
  owner (scheduler or client) decides what a frame means.
* Nothing from the peer is decoded with the full frame limit before the
  handshake has succeeded; handshake frames are decoded with a tiny limit.
* A failed write or read marks the connection broken; later ``send`` calls
  raise ``trio.BrokenResourceError`` with the first failure as the cause.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable
from typing import Any

import trio

from .._exceptions import AuthenticationError, ProtocolError, RemoteProtocolError
from .._impl import core
from .auth import HANDSHAKE_MAX_FRAME, ClientHandshake, ServerHandshake
from .messages import ErrorReply, Op, encode_message

__all__ = ["FramedConnection", "HIGH_WATER"]

HIGH_WATER = 4 * 1024 * 1024  # bytes buffered before producers are made to wait
_RECEIVE_SIZE = 256 * 1024
_COALESCE_ROUNDS = 64  # scheduling rounds the writer may wait for more frames
_COALESCE_BYTES = 256 * 1024  # ... unless this much is already buffered
_IDLE_ROUNDS = 2  # rounds without a new frame that end the wait
_BUSY_WINDOW = 100e-6  # seconds: a write this soon after the last one starts gathering
_DIRECT_QUIET = 20e-6  # seconds since the last write before ``send`` may write directly
HANDSHAKE_TIMEOUT = 10.0


class FramedConnection:
    """Frames over a ``trio.abc.Stream``, with an authenticated start."""

    def __init__(
        self,
        stream: trio.abc.Stream,
        *,
        max_frame_size: int = core.DEFAULT_MAX_FRAME_SIZE,
        high_water: int = HIGH_WATER,
        busy_window: float = _BUSY_WINDOW,
    ) -> None:
        self.stream = stream
        self._max_frame_size = max_frame_size
        self._high_water = high_water
        self._busy_window = busy_window  # 0: only a burst of queued frames is gathered
        self._encoder = core.FrameEncoder(max_frame_size)
        self._decoder = core.FrameDecoder(HANDSHAKE_MAX_FRAME)
        self._has_data = trio.Event()
        self._drained = trio.Event()
        self._drained.set()
        self._closed = False
        self._closing = False
        self._broken: BaseException | None = None
        self.writer_done = trio.Event()
        self._last_flush = -math.inf
        self._urgent = False  # a frame someone waits on is buffered: write now
        self._sending = False  # the writer is inside send_all
        self._unsent = b""  # what a direct write left over; the writer sends it first
        # The socket, for direct writes: a plain TCP stream on a POSIX system
        # (os.write on a socket's descriptor); none over TLS or a test stream.
        posix = os.name == "posix"
        self._socket = stream.socket if isinstance(stream, trio.SocketStream) and posix else None
        self.last_received = trio.current_time()  # when bytes last came in
        #: The heartbeat interval the peer announced (see ``heartbeat``), once it has.
        self.peer_interval: float | None = None
        self.peer_interval_changed = trio.Event()
        #: The reader waits for the peer to take our answers (back pressure):
        #: meanwhile the peer's signs of life are the bytes it takes (``last_sent``).
        self.reading_paused = False
        #: Called by the writer just before it takes the buffer: the owner's
        #: chance to turn deferred work (acknowledgements, gathered puts) into frames.
        self.before_flush: Callable[[], None] | None = None
        #: Bytes of such deferred work, so gathering counts them as buffered.
        self.pending_bytes: Callable[[], int] = lambda: 0

    # -- sending ---------------------------------------------------------------

    @property
    def max_frame_size(self) -> int:
        return self._max_frame_size

    @property
    def last_sent(self) -> float:
        """When bytes were last handed to the socket (``-inf``: never)."""
        return self._last_flush

    @property
    def buffered(self) -> int:
        """Bytes waiting to be written."""
        return len(self._encoder) + len(self._unsent)

    @property
    def is_broken(self) -> bool:
        return self._broken is not None or self._closed or self._closing

    def check_usable(self) -> None:
        """Raise if frames can no longer be sent on this connection."""
        if self._broken is not None:
            raise trio.BrokenResourceError("the connection is broken") from self._broken
        if self._closed or self._closing:
            raise trio.ClosedResourceError("the connection was closed")

    def send(
        self,
        op: int,
        request_id: int,
        payload: bytes = b"",
        flags: int = 0,
        *,
        urgent: bool = False,
        wake: bool = True,
    ) -> None:
        """Queue one frame for the writer (never blocks).

        ``urgent``: someone waits on this frame (a request, a reply), so the
        writer sends it with the next write instead of gathering more first.
        ``wake=False``: the caller sends another frame at once, which wakes
        the writer (a non-urgent frame only).
        """
        self.check_usable()
        self._encoder.write(int(op), request_id, payload, flags)
        if urgent:
            self._urgent = True
            if (
                self._socket is not None
                and not self._sending
                and not self._unsent
                and trio.current_time() - self._last_flush >= _DIRECT_QUIET
                and self._write_now(self._socket.fileno())
            ):
                return
        elif not wake:
            return
        self.wake_writer()

    def _write_now(self, fd: int) -> bool:
        """Write the buffer with one non-blocking system call, from the caller's task.

        Only while the writer is not sending, so bytes never interleave; the
        writer sends whatever the socket did not take, first.  Errors are
        left to the writer too, which meets them again and marks the
        connection broken.  False (nothing done) if the socket was closed
        under us (its descriptor, -1, must not be reused by mistake).
        """
        if fd < 0:
            return False
        data = self._encoder.take()
        try:
            sent = os.write(fd, data)
        except OSError:  # full (BlockingIOError), reset, ...: the writer handles it
            sent = 0
        self._last_flush = trio.current_time()
        self._urgent = False
        if sent < len(data):
            self._unsent = data[sent:]
            self._urgent = True  # the rest is still awaited: the writer must not gather
            self.wake_writer()
        elif not self._drained.is_set():
            self._drained.set()
        return True

    def wake_writer(self) -> None:
        """Make the writer run soon (also used by ``before_flush`` users)."""
        self._has_data.set()
        if self.over_high_water() and self._drained.is_set():
            self._drained = trio.Event()

    def over_high_water(self) -> bool:
        return len(self._encoder) + len(self._unsent) >= self._high_water

    async def wait_writable(self) -> None:
        """Wait while the outgoing buffer is over its high-water mark."""
        while self.over_high_water():
            self.check_usable()
            await self._drained.wait()
        await trio.lowlevel.checkpoint()

    async def run_writer(self) -> None:
        """Send buffered frames, coalescing everything queued, until closing.

        After ``start_closing`` it writes what is left, half-closes the stream
        (so the peer reads a clean end of stream) and returns.
        """
        try:
            while True:
                await self._has_data.wait()
                if not self._urgent and self._busy():
                    await self._gather_more()
                self._has_data = trio.Event()
                self._urgent = False
                if self.before_flush is not None:
                    self.before_flush()
                    self._has_data = trio.Event()
                data = self._encoder.take()
                if self._unsent:
                    data, self._unsent = self._unsent + data, b""
                if not self._drained.is_set():
                    self._drained.set()
                if data:
                    self._sending = True
                    try:
                        await self.stream.send_all(data)
                    finally:
                        self._sending = False
                    self._last_flush = trio.current_time()
                if self._closing and not len(self._encoder):
                    send_eof = getattr(self.stream, "send_eof", None)
                    if send_eof is not None:
                        await send_eof()
                    return
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            self._mark_broken(exc)
        finally:
            self.writer_done.set()

    def _busy(self) -> bool:
        """Is a burst under way (a write soon after the last one)?

        Then the writer waits a few rounds for more frames, so a stream
        leaves in fewer, larger writes (throughput); after a quiet spell it
        writes at once (latency).  Urgent frames never wait.
        """
        return trio.current_time() - self._last_flush < self._busy_window

    def _buffered_and_pending(self) -> int:
        return len(self._encoder) + len(self._unsent) + self.pending_bytes()

    async def _gather_more(self) -> None:
        """Yield while other tasks keep adding frames, so they leave in one write.

        A lone request costs one extra scheduling round; a burst of small
        ones becomes one ``send_all`` instead of one system call per frame.
        """
        size = self._buffered_and_pending()
        idle = 0
        for _ in range(_COALESCE_ROUNDS):
            if size >= _COALESCE_BYTES or self._closing or self._urgent:
                return
            await trio.lowlevel.cancel_shielded_checkpoint()
            grown = self._buffered_and_pending()
            if grown == size:
                idle += 1
                if idle == _IDLE_ROUNDS:
                    return
            else:
                idle = 0
            size = grown

    def start_closing(self) -> None:
        """Refuse new frames; the writer sends what is buffered, then ends."""
        if not self._closing:
            self._closing = True
            self._has_data.set()

    # -- receiving -------------------------------------------------------------

    async def run_reader(
        self, on_frame: Callable[[Any], None], *, backpressure: bool = False
    ) -> None:
        """Feed received frames to ``on_frame`` until the peer closes.

        Returns at a clean end of stream; raises ``RemoteProtocolError`` for
        garbage or a stream cut mid-frame, ``trio.BrokenResourceError`` for a broken socket.
        """
        decoder = self._decoder
        try:
            while await self._receive_more():
                for frame in decoder:
                    on_frame(frame)
                if backpressure and self.over_high_water():
                    # A peer that sends requests but does not read the answers
                    # waits here, so our buffer for it stays bounded.
                    self.reading_paused = True
                    try:
                        await self.wait_writable()
                    finally:
                        self.reading_paused = False
        except BaseException as exc:
            self._mark_broken(exc)
            raise

    async def receive_frame(self) -> Any:
        """The next frame from the peer, or None at a clean end of stream.

        For owners that take frames at their own pace (a slow taker stops the
        reading, and TCP slows the peer).  Raises as ``run_reader`` does.
        """
        decoder = self._decoder
        try:
            while True:
                frame = decoder.next_frame()
                if frame is not None:
                    return frame
                if not await self._receive_more():
                    return None
        except trio.Cancelled:
            raise  # the owner stopped reading: the connection is not broken by it
        except BaseException as exc:
            self._mark_broken(exc)
            raise

    async def _receive_more(self) -> bool:
        """Feed the decoder the peer's next bytes; False at a clean end of stream
        (``RemoteProtocolError`` for one cut mid-frame)."""
        data = await self.stream.receive_some(_RECEIVE_SIZE)
        self.last_received = trio.current_time()
        if not data:
            if not self._decoder.at_boundary():
                raise RemoteProtocolError("the peer closed the connection mid-frame")
            self._mark_broken(trio.EndOfChannel("the peer closed the connection"))
            return False
        self._decoder.feed(data)
        return True

    async def _receive_handshake_frame(self) -> Any:
        while True:
            frame = self._decoder.next_frame()
            if frame is not None:
                return frame
            data = await self.stream.receive_some(HANDSHAKE_MAX_FRAME)
            if not data:
                raise AuthenticationError.cut_off(
                    "the peer closed the connection during the handshake"
                )
            self._decoder.feed(data)

    def _start_messages(self) -> None:
        if not self._decoder.at_boundary():
            raise AuthenticationError("the peer sent data before the handshake finished")
        self._decoder = core.FrameDecoder(self._max_frame_size)

    # -- handshake -------------------------------------------------------------

    async def server_handshake(self, token: str | bytes, client_id: int) -> str:
        """Authenticate the client; returns its display name.

        On failure the client is told why (an ``ERROR`` frame) and
        ``AuthenticationError`` is raised.
        """
        handshake = ServerHandshake(token, client_id)
        try:
            with trio.fail_after(HANDSHAKE_TIMEOUT):
                await self.stream.send_all(handshake.hello())
                reply = handshake.receive(await self._receive_handshake_frame())
                self._start_messages()
                await self.stream.send_all(reply)
        except trio.TooSlowError:
            raise AuthenticationError("the client did not finish the handshake in time") from None
        except AuthenticationError as exc:
            await self._refuse(str(exc))
            raise
        except ProtocolError as exc:
            await self._refuse("malformed handshake")
            raise AuthenticationError(f"malformed handshake: {exc}") from None
        except (trio.BrokenResourceError, OSError) as exc:
            raise AuthenticationError(f"connection lost during the handshake: {exc}") from None
        return handshake.peer_name

    async def client_handshake(self, token: str | bytes, name: str) -> int:
        """Authenticate to the scheduler; returns the client id it assigned."""
        handshake = ClientHandshake(token, name)
        try:
            with trio.fail_after(HANDSHAKE_TIMEOUT):
                answer = handshake.receive_hello(await self._receive_handshake_frame())
                await self.stream.send_all(answer)
                client_id = handshake.receive_welcome(await self._receive_handshake_frame())
                self._start_messages()
        except trio.TooSlowError:
            raise AuthenticationError.cut_off(
                "the scheduler did not finish the handshake in time"
            ) from None
        except ProtocolError as exc:
            raise AuthenticationError(f"malformed handshake from the scheduler: {exc}") from None
        except (trio.BrokenResourceError, OSError) as exc:
            raise AuthenticationError.cut_off(
                f"connection lost during the handshake: {exc}"
            ) from None
        return client_id

    async def _refuse(self, reason: str) -> None:
        frame = core.encode_frame(int(Op.ERROR), 0, encode_message(ErrorReply("auth", reason)))
        with (
            trio.move_on_after(1),
            contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError),
        ):
            await self.stream.send_all(frame)

    # -- closing ---------------------------------------------------------------

    def _mark_broken(self, exc: BaseException) -> None:
        if self._broken is None:
            self._broken = exc
        self._drained.set()

    async def aclose(self) -> None:
        """Close the stream; later ``send`` calls raise ``ClosedResourceError``."""
        self._closed = True
        self._drained.set()
        await self.stream.aclose()
