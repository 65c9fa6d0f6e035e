"""``connect()``: find the token, open the TCP connection, authenticate, run a ``Client``.

Rules: the token comes from the caller, else from a cluster this process
opened at that address (``register_local_token``), else from the
``TRIOQ_TOKEN`` environment variable; never from anywhere else.  The
connection's reader and writer run in a nursery that ``connect`` owns:
leaving its block closes the client and joins them.
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
from .._wire.transport import FramedConnection
from .client import Client

__all__ = ["connect", "parse_address", "register_local_token", "resolve_token"]

_LOCAL_TOKENS: dict[str, str] = {}


def register_local_token(address: str, token: str) -> None:
    """Let ``connect(address)`` in this process find the token of a local cluster."""
    _LOCAL_TOKENS[address] = token


def parse_address(address: str) -> tuple[str, int]:
    """``"tcp://host:port"`` (or ``"host:port"``, ``"[::1]:port"``) -> (host, port)."""
    rest = address.removeprefix("tcp://")
    host, sep, port = rest.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ValueError(f"address must look like tcp://host:port, got {address!r}")
    return host.strip("[]"), int(port)


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
async def connect(
    address: str,
    *,
    token: str | None = None,
    name: str | None = None,
    max_frame_size: int = core.DEFAULT_MAX_FRAME_SIZE,
) -> AsyncIterator[Client]:
    """Connect and authenticate to the scheduler at ``address``.

    The token comes from ``token``, else from a cluster this process opened
    at that address, else from the ``TRIOQ_TOKEN`` environment variable.
    Leaving the block closes the connection (see ``Client.aclose``).

    Raises ``ValueError`` for an address not of the form ``tcp://host:port``,
    when no token is found, or for an empty token; ``OSError`` if the
    scheduler cannot be reached; ``AuthenticationError`` if it refuses the
    token, or the handshake fails or takes over 10 seconds.  If cancelled
    while connecting, the socket is closed and nothing is left behind.
    """
    secret = resolve_token(address, token)
    host, port = parse_address(address)
    stream = await trio.open_tcp_stream(host, port)
    connection = FramedConnection(stream, max_frame_size=max_frame_size)
    try:
        client_id = await connection.client_handshake(
            secret, name or f"{socket.gethostname()}:{os.getpid()}"
        )
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise
    client = Client(connection, client_id, address)
    with collapse_single_groups():
        async with trio.open_nursery() as nursery:
            client._nursery = nursery
            nursery.start_soon(client._run)
            try:
                yield client
            finally:
                await client.aclose()
                nursery.cancel_scope.cancel()
