"""Dialling: find the token, open the TCP connection, authenticate, run a ``Session``.

Rules: the token comes from the caller, else from a cluster this process
opened at that address (``register_local_token``), else from the
``TRIOQ_TOKEN`` environment variable; never from anywhere else.  The
connection's reader and writer run in a nursery that ``open_session``
owns: leaving its block closes the session and joins them.  ``connect``
(the public entry) and a pipe end that binds itself both dial here.
"""

from __future__ import annotations

import os
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

from .._exceptions import collapse_single_groups
from .._impl import core
from .._wire.auth import TOKEN_ENV
from .._wire.heartbeat import HEARTBEAT_INTERVAL, check_interval
from .._wire.transport import FramedConnection
from .session import Session

__all__ = [
    "open_session",
    "parse_address",
    "format_address",
    "register_local_token",
    "resolve_token",
]

_LOCAL_TOKENS: dict[str, str] = {}


def register_local_token(address: str, token: str) -> None:
    """Let ``connect(address)`` in this process find the token of a local cluster."""
    _LOCAL_TOKENS[format_address(*parse_address(address))] = token


def parse_address(address: str) -> tuple[str, int]:
    """``"tcp://host:port"`` (or a bare ``"host:port"``, ``"[::1]:port"``) -> (host, port).

    Raises ``TypeError`` for an address that is not a str, ``ValueError`` for
    a scheme other than ``tcp`` (``"http://..."``, say) or a malformed one.
    """
    if not isinstance(address, str):
        raise TypeError(
            f"address must be a str like 'tcp://host:port', got {type(address).__name__}"
        )
    scheme, sep, rest = address.partition("://")
    if not sep:
        rest = address  # a bare host:port means tcp
    elif scheme != "tcp":
        raise ValueError(
            f"unsupported address scheme {scheme!r} in {address!r}: "
            "a trioq scheduler's address looks like tcp://host:port"
        )
    host, sep, port = rest.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ValueError(f"address must look like tcp://host:port, got {address!r}")
    return host.strip("[]"), int(port)


def format_address(host: str, port: int) -> str:
    """(host, port) -> ``"tcp://host:port"`` (an IPv6 host in brackets)."""
    return f"tcp://[{host}]:{port}" if ":" in host else f"tcp://{host}:{port}"


def resolve_token(address: str, token: str | None) -> str:
    """The token for ``address`` (see the module's rules); ``ValueError`` if none."""
    if token is not None:
        return token
    if address in _LOCAL_TOKENS:
        return _LOCAL_TOKENS[address]
    if os.environ.get(TOKEN_ENV):
        return os.environ[TOKEN_ENV]
    raise ValueError(
        f"no token for {address}: pass token=... (--token-file on the command line) "
        f"or set the {TOKEN_ENV} environment variable"
    )


@asynccontextmanager
async def open_session(
    address: str,
    *,
    token: str | None = None,
    name: str | None = None,
    max_frame_size: int = core.DEFAULT_MAX_FRAME_SIZE,
    heartbeat_interval: float = HEARTBEAT_INTERVAL,
) -> AsyncIterator[Session]:
    """Connect, authenticate and run a session; see ``trioq.connect`` for the errors.

    If cancelled while connecting, the socket is closed and nothing is left
    behind.  Leaving the block closes the session (see ``Session.aclose``).
    """
    check_interval(heartbeat_interval)
    host, port = parse_address(address)
    address = format_address(host, port)  # one spelling: tokens of local clusters match
    secret = resolve_token(address, token)
    stream = await trio.open_tcp_stream(host, port)
    try:
        connection = FramedConnection(stream, max_frame_size=max_frame_size)
        session_id = await connection.client_handshake(
            secret, name or f"{socket.gethostname()}:{os.getpid()}"
        )
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise
    session = Session(connection, session_id, address, heartbeat_interval=heartbeat_interval)
    with collapse_single_groups():
        async with trio.open_nursery() as nursery:
            session.nursery = nursery
            nursery.start_soon(session.run)
            try:
                yield session
            finally:
                await session.aclose()
                nursery.cancel_scope.cancel()
