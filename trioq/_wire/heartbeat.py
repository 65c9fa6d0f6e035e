"""Heartbeats: each side of a connection proves it is alive, and notices a silent peer.

Rules:

* The client sends a ``PING`` frame (request id 0) once its handshake is
  done, carrying its own interval, and the scheduler answers the first one
  with its own (never before: the client's handshake reads nothing else).
  From then on both beat at the shorter of the two intervals, so a
  scheduler that wants quick detection gets it from clients set slower,
  and the other way round.
* A side that has written nothing for that interval sends a ``PING``; any
  frame counts as a sign of life, so a busy connection carries no pings.
* A side that has received nothing for ``MISSED_BEATS`` intervals treats
  the peer as gone: a frozen process and a frozen link look the same from
  here, and both are detected within that bound plus half an interval (the
  loop looks twice per interval).
* The owner decides what gone means (the client breaks its session, the
  scheduler closes the connection and returns what it held).

Why on both sides: TCP alone notices nothing while a peer is stopped or a
link is frozen with its sockets open; a get would wait for ever.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Awaitable, Callable

import trio

from .._exceptions import RemoteProtocolError
from .messages import Message, Op, _message, decode_reply, encode_message
from .transport import FramedConnection

__all__ = [
    "HEARTBEAT_INTERVAL",
    "MISSED_BEATS",
    "keep_alive",
    "check_interval",
    "on_ping",
    "announce",
]

HEARTBEAT_INTERVAL = 2.0  # seconds between signs of life on an idle connection
MISSED_BEATS = 3  # intervals of silence after which the peer counts as gone


@_message
@dataclasses.dataclass(frozen=True, slots=True)
class Ping(Message):
    """A sign of life, with the interval its sender beats at."""

    OP = Op.PING
    interval: float


def on_ping(connection: FramedConnection, payload: bytes) -> bool:
    """A ``PING`` came: note the peer's interval (a malformed one is a protocol error).

    True for the peer's first: the scheduler answers it with ``announce``.
    """
    interval = decode_reply(Ping, payload).interval
    if not interval > 0:
        raise RemoteProtocolError(f"the peer announced a heartbeat interval of {interval!r}")
    first = connection.peer_interval is None
    if interval != connection.peer_interval:
        connection.peer_interval = interval
        connection.peer_interval_changed.set()  # keep_alive beats to the new interval now
    return first


def announce(connection: FramedConnection, interval: float) -> None:
    """Send a ``PING`` now, telling the peer this side's interval."""
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
        _send_ping(connection, interval)


def _send_ping(connection: FramedConnection, interval: float) -> None:
    connection.send(Op.PING, 0, encode_message(Ping(float(interval))))


def check_interval(interval: float) -> float:
    """``interval`` if it is a positive number, else ``ValueError``."""
    if not isinstance(interval, int | float) or isinstance(interval, bool) or not interval > 0:
        raise ValueError(f"heartbeat_interval must be a positive number, got {interval!r}")
    return float(interval)


async def keep_alive(
    connection: FramedConnection,
    interval: float,
    on_silent: Callable[[float], Awaitable[None]],
    *,
    first: bool = False,
) -> None:
    """Ping an idle ``connection``; once the peer is silent, await ``on_silent(seconds)``.

    ``first``: announce this side's interval at once (the client does).
    """
    try:
        if first:
            _send_ping(connection, interval)
        while True:
            beat = min(interval, connection.peer_interval or interval)
            with trio.move_on_after(beat / 2):
                await connection.peer_interval_changed.wait()
                connection.peer_interval_changed = trio.Event()
                continue
            if connection.is_broken:
                return
            now = trio.current_time()
            # Reading paused for back pressure: the peer lives if it takes our bytes.
            seen = connection.last_sent if connection.reading_paused else connection.last_received
            silent = now - seen
            if silent > MISSED_BEATS * beat:
                await on_silent(silent)
                return
            if now - connection.last_sent >= beat:
                _send_ping(connection, interval)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        return
