"""``connect()``: the public entry, a ``Client`` over a session that ``dial`` opens.

``connect`` returns an async context manager, not a coroutine: the common
mistake ``await trioq.connect(address)`` raises a ``TypeError`` that says
what to write instead.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Generator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from types import TracebackType
from typing import Any, NoReturn

from .._impl import core
from .._wire.heartbeat import HEARTBEAT_INTERVAL
from .client import Client
from .dial import open_session

__all__ = ["connect", "Connecting"]


def connect(
    address: str,
    *,
    token: str | None = None,
    name: str | None = None,
    max_frame_size: int = core.DEFAULT_MAX_FRAME_SIZE,
    heartbeat_interval: float = HEARTBEAT_INTERVAL,
) -> Connecting:
    """Connect and authenticate to the scheduler at ``address``: ``async with connect(...)``.

    It returns an async context manager, not a coroutine:
    ``async with trioq.connect("tcp://host:port") as client:``; leaving the
    block closes the connection (see ``Client.aclose``).  ``address`` is
    ``tcp://host:port``; a bare ``host:port`` is taken as tcp (the same
    cluster, the same token).  The token comes from ``token``, else from a
    cluster this process opened at that address, else from the
    ``TRIOQ_TOKEN`` environment variable.  ``name`` is how the scheduler's
    logs and ``python -m trioq status`` show this client (by default
    ``hostname:pid``).  ``max_frame_size`` bounds every frame sent or
    received on the connection, header included (64 MiB by default).
    ``heartbeat_interval`` is how often, in seconds, an idle connection
    shows it is alive; a scheduler silent for three of them counts as gone
    (the connection breaks).

    Raises ``TypeError`` when awaited instead of entered (the message says
    to use ``async with``), ``RuntimeError`` when the same ``connect(...)``
    is entered twice.  On entering, before anything is dialled:
    ``TypeError`` for an address that is not a str, ``ValueError`` for
    another scheme (``http://``, say) or a malformed address, when no
    token is found, or for a ``heartbeat_interval`` that is not a positive
    number.  Then ``OSError`` if the scheduler cannot be reached;
    ``ValueError`` for an empty token, ``TypeError`` or ``ValueError`` for
    a ``max_frame_size`` that is not an int from 10 to ``2**32 - 1``;
    ``AuthenticationError`` if the scheduler refuses the token, or the
    handshake fails or takes over 10 seconds.  If cancelled while
    connecting, the socket is closed and nothing is left behind.
    """
    return Connecting(
        address,
        token=token,
        name=name,
        max_frame_size=max_frame_size,
        heartbeat_interval=heartbeat_interval,
    )


class Connecting(AbstractAsyncContextManager["Client"]):
    """What ``connect()`` returns: enter it with ``async with`` (awaiting it is refused)."""

    def __init__(self, address: str, **options: Any) -> None:
        self._address = address
        self._options = options
        self._manager: AbstractAsyncContextManager[Client] | None = None

    async def __aenter__(self) -> Client:
        if self._manager is not None:
            raise RuntimeError("this connect() was entered already: call connect() again")
        self._manager = _connected(self._address, **self._options)
        return await self._manager.__aenter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool | None:
        assert self._manager is not None
        return await self._manager.__aexit__(exc_type, exc_value, traceback)

    def __await__(self) -> Generator[Any, None, NoReturn]:
        raise TypeError(
            "trioq.connect() is an async context manager, not a coroutine: write "
            f"`async with trioq.connect({self._address!r}) as client:` instead of awaiting it"
        )


@asynccontextmanager
async def _connected(address: str, **options: Any) -> AsyncIterator[Client]:
    async with open_session(address, **options) as session:
        yield Client(session)
