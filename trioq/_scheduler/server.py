"""The scheduler process's trio shell: accept, authenticate, apply, answer.

Rules:

* ``Scheduler.serve`` runs in the caller's nursery (``nursery.start``
  reports the bound address).  Every connection is one handler task in the
  scheduler's own nursery: a reader applying requests to the shared
  ``SchedulerState`` synchronously (so all clients' requests are applied in
  one order) and a writer that sends coalesced answers.  A slow or broken
  client only ever blocks its own writer.
* Nothing a client sends is decoded beyond the handshake until it has
  proven it holds the token.  A malformed frame or message gets an
  ``ERROR`` answer where possible and closes that connection only.
* The scheduler never unpickles: item payloads are opaque ``bytes`` to it
  (this module's import closure holds no pickle; a test checks it).
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
from typing import Any

import trio

from .._exceptions import (
    AuthenticationError,
    LocalProtocolError,
    ProtocolError,
    RemoteProtocolError,
)
from .._impl import core
from .._wire.auth import generate_token, token_bytes
from .._wire.heartbeat import (
    HEARTBEAT_INTERVAL,
    announce,
    check_interval,
    keep_alive,
    on_ping,
)
from .._wire.messages import (
    FLAG_AWAITED,
    REPLY_OVERHEAD,
    ErrorReply,
    Op,
    decode_request,
    encode_message,
)
from .._wire.transport import FramedConnection
from .state import Fail, Notice, Reply, SchedulerState

__all__ = ["Scheduler", "is_loopback"]

log = logging.getLogger("trioq.scheduler")

WORKER_TIMEOUT = 10.0  # seconds of silence after which a worker counts as dead


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and "localhost"."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Scheduler:
    """Owns all named state and serves it over TCP.

    ``token`` authenticates every connection.  When omitted, one is generated
    (``self.token``) for a loopback ``host``; for any other host a missing
    token raises ``ValueError``: a cluster reachable from other machines
    must have a token its operator chose and distributed.  ``dispatch`` is
    the task policy, "pull" (load-balanced, the default) or "push" (dealt
    round-robin ahead of demand, ``prefetch`` tasks beyond each worker's
    slots: lower overhead, possibly uneven).  Raises ``ValueError`` for a
    missing token on a non-loopback host, an empty token, a
    ``max_frame_size`` too small for an answer, a ``dispatch`` other than
    "pull" or "push", or a negative ``prefetch`` (``TypeError`` for one
    that is not an int), or a ``heartbeat_interval`` that is not a positive
    number.  ``heartbeat_interval``: an idle connection gets a ping that
    often, and a connection silent for three of them is closed (a frozen
    client or link; what it held returns to its queues); ``worker_timeout``
    is the silence after which a worker's tasks go elsewhere.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        token: str | None = None,
        max_frame_size: int = core.DEFAULT_MAX_FRAME_SIZE,
        dispatch: str = "pull",
        prefetch: int = 1,
        worker_timeout: float = WORKER_TIMEOUT,
        heartbeat_interval: float = HEARTBEAT_INTERVAL,
    ) -> None:
        if token is None and not is_loopback(host):
            raise ValueError(
                f"refusing to listen on non-loopback address {host!r} without a token; "
                "pass one with --token-file or the TRIOQ_TOKEN environment variable"
            )
        if token is not None:
            token_bytes(token)  # an empty token is refused here, not per connection
        self.host = host
        self.port = port
        self.token = token if token is not None else generate_token()
        if max_frame_size < 2 * REPLY_OVERHEAD:
            raise ValueError(f"max_frame_size must be at least {2 * REPLY_OVERHEAD} bytes")
        self.max_frame_size = max_frame_size
        self.worker_timeout = worker_timeout
        #: Seconds between signs of life on an idle connection; a client silent
        #: for ``MISSED_BEATS`` of them is closed (its leases return to their queues).
        self.heartbeat_interval = check_interval(heartbeat_interval)
        self.state = SchedulerState(
            max_item_bytes=max_frame_size - REPLY_OVERHEAD, dispatch=dispatch, prefetch=prefetch
        )
        self.address: str | None = None
        self._connections: dict[int, FramedConnection] = {}
        #: Per connection: its requests flagged FLAG_AWAITED not yet answered.
        self._awaited: dict[int, set[int]] = {}
        self._next_conn = 1

    async def serve(self, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen and serve until cancelled; reports ``tcp://host:port`` when ready.

        Raises ``OSError`` if it cannot listen (the port is taken, say).  A
        client that fails the handshake or breaks the protocol is closed,
        alone.  Cancelling it closes every connection and ends it.
        """
        listeners = await trio.open_tcp_listeners(self.port, host=self.host)
        sockname = listeners[0].socket.getsockname()
        host = f"[{sockname[0]}]" if ":" in sockname[0] else sockname[0]
        self.address = f"tcp://{host}:{sockname[1]}"
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._watch_workers)
            task_status.started(self.address)
            # trio's accept loop: it sleeps and retries when out of file descriptors.
            await trio.serve_listeners(self._handle_connection, listeners)

    async def _watch_workers(self) -> None:
        """Close workers not heard from for ``worker_timeout`` (they send heartbeats).

        Closing the connection makes its handler run the usual disconnect,
        which hands the worker's tasks to others.
        """
        while True:
            await trio.sleep(self.worker_timeout / 4)
            silent_since = trio.current_time() - self.worker_timeout
            for conn in self.state.tasks.workers():
                connection = self._connections.get(conn)
                if connection is not None and connection.last_received < silent_since:
                    log.warning(
                        "worker %d silent for %.1f s: treated as dead", conn, self.worker_timeout
                    )
                    await trio.aclose_forcefully(connection.stream)

    async def _handle_connection(self, stream: trio.SocketStream) -> None:
        conn_id = self._next_conn
        self._next_conn += 1
        try:
            host, port = stream.socket.getpeername()[:2]
            peer = f"{host}:{port}"
        except OSError:
            peer = "?"
        connection = FramedConnection(stream, max_frame_size=self.max_frame_size)
        try:
            name = await connection.server_handshake(self.token, conn_id)
        except AuthenticationError as exc:
            log.warning("refused connection from %s: %s", peer, exc)
            await stream.aclose()
            return
        self.state.connect(conn_id, name, peer)
        self._connections[conn_id] = connection
        self._awaited[conn_id] = set()
        log.info("client %d (%s) connected from %s", conn_id, name, peer)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(connection.run_writer)

                async def silent(seconds: float) -> None:
                    log.warning(
                        "client %d (%s) silent for %.1f s: closing it", conn_id, name, seconds
                    )
                    await trio.aclose_forcefully(connection.stream)

                nursery.start_soon(keep_alive, connection, self.heartbeat_interval, silent)
                try:
                    await connection.run_reader(
                        lambda frame: self._on_frame(conn_id, frame), backpressure=True
                    )
                except (
                    ProtocolError,
                    trio.BrokenResourceError,
                    trio.ClosedResourceError,
                    OSError,
                ) as exc:
                    log.warning("closing client %d (%s): %s", conn_id, name, exc)
                except Exception:
                    # A bug while serving one client closes that client, not the scheduler.
                    log.exception(
                        "internal error serving client %d (%s); closing it", conn_id, name
                    )
                finally:
                    # Let the writer deliver what is queued (an error answer, say).
                    connection.start_closing()
                    with trio.move_on_after(1):
                        await connection.writer_done.wait()
                    nursery.cancel_scope.cancel()
        finally:
            del self._connections[conn_id]
            del self._awaited[conn_id]
            try:
                self._execute(self.state.disconnect(conn_id))
            except Exception:  # a bug here must not stop the scheduler either
                log.exception("internal error returning client %d's state", conn_id)
            with trio.CancelScope(shield=True):
                await connection.aclose()
            log.info("client %d (%s) disconnected", conn_id, name)

    def _on_frame(self, conn_id: int, frame: Any) -> None:
        try:
            if frame.op == Op.PING:  # a sign of life, and the client's beat
                connection = self._connections[conn_id]
                if on_ping(connection, frame.payload):
                    announce(connection, self.heartbeat_interval)  # the scheduler's, in answer
                return
            message = decode_request(frame.op, frame.payload)
        except RemoteProtocolError as exc:
            # Tell the client what was wrong, then close this connection only.
            self._send(Fail(conn_id, frame.request_id, "ProtocolError", str(exc)))
            raise
        if frame.flags & FLAG_AWAITED and frame.request_id:
            self._awaited[conn_id].add(frame.request_id)
        self._execute(self.state.handle(conn_id, frame.request_id, message))

    def _execute(self, out: list[Reply | Fail | Notice]) -> None:
        for instruction in out:
            self._send(instruction)

    def _send(self, instruction: Reply | Fail | Notice) -> None:
        connection = self._connections.get(instruction.conn)
        if connection is None or connection.is_broken:
            return  # its disconnect returns whatever was leased to it
        request_id = 0
        if isinstance(instruction, Reply):
            op, payload = Op.REPLY, encode_message(instruction.message)
            request_id = instruction.request_id
        elif isinstance(instruction, Fail):
            op, payload = Op.ERROR, encode_message(ErrorReply(instruction.kind, instruction.text))
            request_id = instruction.request_id
        else:
            op, payload = instruction.message.OP, encode_message(instruction.message)
        # The answer to a request flagged FLAG_AWAITED goes out at once; the rest
        # (notices, answers in a stream) may be gathered.
        urgent = False
        awaited = self._awaited.get(instruction.conn)
        if awaited is not None and request_id in awaited:
            awaited.discard(request_id)
            urgent = True
        try:
            connection.send(op, request_id, payload, urgent=urgent)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # its disconnect returns whatever was leased to it
        except LocalProtocolError as exc:  # an answer too big for a frame: say so instead
            log.error("answer to client %d does not fit in a frame: %s", instruction.conn, exc)
            error = encode_message(ErrorReply("ProtocolError", f"answer too large: {exc}"))
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                connection.send(Op.ERROR, request_id, error, urgent=urgent)
