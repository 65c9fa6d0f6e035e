"""``connect()``: the public entry, a ``Client`` over a session that ``dial`` opens."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from .._impl import core
from .client import Client
from .dial import open_session

__all__ = ["connect"]


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
    async with open_session(
        address, token=token, name=name, max_frame_size=max_frame_size
    ) as session:
        yield Client(session)
