"""``RemoteWorker``: a TaskQueue worker whose calls run as tasks on a trioq cluster.

Rules: it keeps the worker protocol of ``workers`` (``_open``, ``_run``,
``_ready``, ``_close``).  It owns one connection, opened when attached;
each call is one task, and a streamed call's items come back through a
queue of its own.  Clean-up never waits on a peer: cancelling a task or
deleting a queue is sent one way, so a cluster that hangs cannot hold up a
cancelled call or a closing queue; only closing the connection itself
waits, as ``Client.aclose`` bounds it.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Iterable
from typing import Any

import trio

from .._client.session import session_of
from .._exceptions import collapse_single_groups
from .._wire.messages import Message, QueueDelete
from .._wire.task_messages import TaskCancel
from .child import DONE, FAILED, STREAM_WINDOW, STREAMED, remote_call, remote_error
from .workers import _CLOSED, WorkerDied, _Sink, _Worker

__all__ = ["RemoteWorker"]


class RemoteWorker(_Worker):
    """Runs calls as tasks on a trioq cluster (``slots`` of them at once).

    It connects with ``trioq.connect(address, token=token)`` when attached
    and submits each call as a task; cancelling a call cancels its task, and
    stopping the worker (crash or not) cancels the tasks still running.
    Neither waits for the cluster to confirm: the cancel is sent, and only
    closing the connection waits (see ``Client.aclose``).
    Raises ``TypeError`` for a ``series`` given as one string instead of an
    iterable of names, ``ValueError`` for ``slots`` that is not a positive
    int; attaching it raises what ``trioq.connect`` raises.
    """

    def __init__(
        self,
        address: str,
        *,
        token: str | None = None,
        slots: int = 1,
        series: Iterable[str] = (),
    ) -> None:
        super().__init__(series=series, slots=slots)
        #: The cluster's address, ``tcp://host:port``.
        self.address = address
        self._token = token
        self._client: Any = None
        self._scope = trio.CancelScope()
        self._done: trio.Event | None = None

    def _reset(self) -> None:
        self._control = f"taskqueue-control-{uuid.uuid4().hex}"
        self._waits: dict[str, trio.CancelScope] = {}  # calls waiting for a result
        self._futures: dict[str, Any] = {}
        self._dead = False
        self._closing = False
        self._reading = trio.CancelScope()  # cancelled to stop gracefully
        self._scope = trio.CancelScope()  # cancelled to drop the connection at once
        self._done = trio.Event()

    async def _open(self, nursery: trio.Nursery, on_died: Callable[[], None]) -> None:
        self._reset()
        await nursery.start(self._serve, on_died)

    async def _serve(
        self, on_died: Callable[[], None], *, task_status: trio.TaskStatus[None]
    ) -> None:
        """Owns the connection; reads the control queue (which calls stream).

        On the way out (cancelled or not), while the connection still works,
        it asks the cluster to cancel the tasks still running for it and to
        delete its control queue; it does not wait for the answers.
        """
        from .._client.connect import connect

        assert self._done is not None
        try:
            with self._scope:
                async with connect(self.address, token=self._token) as client:
                    self._client = client
                    control = client.queue(self._control)
                    task_status.started()
                    try:
                        with self._reading:
                            try:
                                while True:
                                    waiting = self._waits.get(await control.get())
                                    if waiting is not None:
                                        waiting.cancel()  # stop waiting for the value: read items
                            except (*_CLOSED, trio.EndOfChannel):
                                self._dead = True
                                if not self._closing:
                                    on_died()
                    finally:
                        for key in self._futures:  # still running there: stop them
                            self._tell(TaskCancel(key))
                        self._tell(QueueDelete(self._control))
        finally:
            self._dead = True
            self._done.set()

    async def _run(
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], sink: _Sink
    ) -> Any:
        client = self._client
        if client is None or self._dead:
            raise WorkerDied("the worker's connection is closed")
        key = f"taskqueue-{uuid.uuid4().hex}"
        try:
            future = await client.submit(remote_call, fn, args, kwargs, self._control, key, key=key)
        except _CLOSED as exc:
            raise WorkerDied("the worker's connection broke") from exc
        self._futures[key] = future
        try:
            with trio.CancelScope() as waiting:
                self._waits[key] = waiting
                value = await future.result()
            del self._waits[key]
            if waiting.cancelled_caught or value is STREAMED:
                await self._pump(client, key, future, sink)
                return None
            return value
        except _CLOSED as exc:
            raise WorkerDied("the worker's connection broke") from exc
        except Exception:
            raise  # the task ended (its error, or its stream's)
        except BaseException:
            self._tell(TaskCancel(key))  # cancelled: stop the task there
            raise
        finally:
            self._waits.pop(key, None)
            del self._futures[key]
            # The cluster may forget its outcome now.  ``release`` sends one way and
            # only checkpoints: shielded, it cannot be held up.
            with trio.CancelScope(shield=True), contextlib.suppress(Exception):
                await future.release()

    def _tell(self, request: Message) -> None:
        """Send a clean-up request one way: its answer would change nothing here."""
        if self._client is not None and not self._dead:
            with contextlib.suppress(*_CLOSED):
                session_of(self._client).send_oneway(request)

    async def _pump(self, client: Any, key: str, future: Any, sink: _Sink) -> None:
        """Move a streamed call's items from its queue into the sink."""
        sink.open(0)  # the queue's maxsize is the read-ahead
        items = client.queue(f"{key}-items", maxsize=STREAM_WINDOW, prefetch=1)
        failed: list[BaseException] = []  # the task's own end, if it came first
        error: BaseException | None = None  # the generator's error
        stopped = False  # the reader closed the stream

        async def watch(scope: trio.CancelScope) -> None:
            try:
                await future.result()
            except Exception as exc:  # the task failed or was lost before its end marker
                failed.append(exc)
                scope.cancel()

        try:
            with collapse_single_groups():  # a broken connection raises as itself
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(watch, nursery.cancel_scope)
                    while True:
                        kind, value = await items.get()
                        if kind == FAILED:
                            error = remote_error(value)
                            break
                        if kind == DONE:
                            break
                        try:
                            await sink.send(value)
                        except _CLOSED:  # the reader closed the stream: stop the task
                            stopped = True
                            self._tell(TaskCancel(key))
                            break
                    nursery.cancel_scope.cancel()
        finally:
            self._tell(QueueDelete(items.name))
        if error is not None:
            raise error
        if failed and not stopped:
            raise failed[0]

    async def _close(self, *, crash: bool) -> None:
        """Stop reading; ``_serve`` then cancels the tasks still running there and closes.

        Crash or not the same: the cancels are sent one way, nothing waits for
        the cluster's answers, and closing the connection is bounded by
        ``Client.aclose``.  (Cancelling the connection's scope at once would
        lose the cancels: its writer would never send them.)  If this is
        cancelled, the connection is cancelled too.
        """
        if self._done is None:
            return
        self._closing = True
        self._reading.cancel()
        try:
            await self._done.wait()
        finally:
            self._scope.cancel()
