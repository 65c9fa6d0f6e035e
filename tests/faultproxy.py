"""A small TCP proxy on 127.0.0.1 that can freeze, cut and throttle the links through it.

Fault tests put it between a client (or worker) and the scheduler:

* ``freeze()`` stops forwarding in both directions and keeps every socket
  open, as a stalled network or a hung middlebox does; ``thaw()`` resumes.
* ``cut()`` closes both sides of every link at once, wherever the bytes
  are (usually mid-frame).
* ``throttle(rate)`` forwards at most ``rate`` bytes per second per
  direction (``None``: as fast as it can).

Run it in the test's nursery (``await nursery.start(proxy.serve)``); the
address to dial is ``proxy.address``.
"""

from __future__ import annotations

import contextlib
from typing import Any

import trio

__all__ = ["FaultProxy"]

CHUNK = 16 * 1024


class FaultProxy:
    """Forwards connections from ``address`` to ``target_host:target_port``."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.address = ""
        self._flowing = trio.Event()
        self._flowing.set()
        self._rate: float | None = None
        self._links: set[tuple[trio.SocketStream, trio.SocketStream]] = set()
        self.connections = 0  # links accepted so far

    @classmethod
    def to(cls, address: str) -> FaultProxy:
        """A proxy in front of ``tcp://host:port``."""
        host, port = address.removeprefix("tcp://").rsplit(":", 1)
        return cls(host, int(port))

    async def serve(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        port = listeners[0].socket.getsockname()[1]
        self.address = f"tcp://127.0.0.1:{port}"
        task_status.started(self.address)
        await trio.serve_listeners(self._link, listeners)

    @property
    def live(self) -> int:
        """Links forwarding now (accepted, and connected to the target)."""
        return len(self._links)

    # -- faults ------------------------------------------------------------------

    def freeze(self) -> None:
        self._flowing = trio.Event()

    def thaw(self) -> None:
        self._flowing.set()

    def cut(self) -> None:
        """Close every current link on both sides (new ones are accepted)."""
        for inner, outer in list(self._links):
            for stream in (inner, outer):
                _abort(stream)
        self._links.clear()

    def throttle(self, rate: float | None) -> None:
        self._rate = rate

    # -- forwarding ----------------------------------------------------------------

    async def _link(self, inner: trio.SocketStream) -> None:
        self.connections += 1
        try:
            outer = await trio.open_tcp_stream(*self.target)
        except OSError:
            await inner.aclose()
            return
        pair = (inner, outer)
        self._links.add(pair)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._pump, inner, outer, nursery.cancel_scope)
                nursery.start_soon(self._pump, outer, inner, nursery.cancel_scope)
        finally:
            self._links.discard(pair)
            for stream in pair:
                _abort(stream)

    async def _pump(
        self, source: trio.SocketStream, sink: trio.SocketStream, scope: trio.CancelScope
    ) -> None:
        try:
            while True:
                await self._flowing.wait()
                data = await source.receive_some(CHUNK)
                if not data:
                    break
                await self._flowing.wait()  # frozen while the bytes were on their way in
                if self._rate:
                    await trio.sleep(len(data) / self._rate)
                await sink.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        finally:
            scope.cancel()


def _abort(stream: trio.SocketStream) -> None:
    """Close at once, without waiting (a reset if unsent data remains)."""
    with contextlib.suppress(OSError):
        stream.socket.close()
