"""Workers: processes (or tasks) that run submitted callables.

Rules:

* A worker is a client connection that said ``WorkerHello``.  It asks for
  work (``WorkerReady``) as its slots free up, so dispatch is pull: a slow
  worker is never sent more than it can run.
* Plain functions run in worker threads (``trio.to_thread``, at most
  ``nthreads`` at once, in thread lanes that take the tasks queued behind
  each other in one thread hop: see ``threads``); ``async def``
  functions run as trio tasks in the worker's nursery, at most ``nthreads``
  at once.  An abort from the scheduler cancels a trio task's scope; a
  thread cannot be interrupted, so its result is discarded.
* Payloads are unpickled here: a worker trusts its scheduler, which it
  authenticated with the shared token.
* Leaving ``run`` (cancellation, or the scheduler going away) closes the
  connection; the scheduler then reschedules what was running.  The
  session's heartbeat (``_wire.heartbeat``) tells the scheduler the worker
  is alive while its tasks run long; a silent worker counts as dead.
"""

from __future__ import annotations

import inspect
import logging
import os
import socket
import traceback
from collections.abc import Iterable
from typing import Any

import trio

from .._client.client import Client
from .._client.connect import connect
from .._client.current import task_client
from .._client.session import Session, session_of
from .._exceptions import AuthenticationError
from .._wire.heartbeat import HEARTBEAT_INTERVAL, check_interval
from .._wire.messages import Message, Ok
from .._wire.task_messages import (
    TaskAbort,
    TaskAssign,
    TaskDone,
    WorkerHello,
    WorkerReady,
)
from .threads import ThreadCall, ThreadLanes

__all__ = ["Worker", "HEARTBEAT_INTERVAL", "RECONNECT_TIMEOUT"]

logger = logging.getLogger("trioq.worker")

RECONNECT_TIMEOUT = 60.0  # seconds a worker keeps trying to reach a lost scheduler
RECONNECT_DELAY = 0.1  # first pause before it tries again; doubles ...
MAX_RECONNECT_DELAY = 5.0  # ... up to this


def _is_async(fn: Any) -> bool:
    """Does calling ``fn`` give a coroutine (an ``async def``, or an object whose
    ``__call__`` is one)?  Those run in the worker's trio thread."""
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None)  # noqa: B004 -- an object with an async __call__
    )


class Worker:
    """Runs tasks for the scheduler at ``address`` until cancelled.

    Start it with ``await nursery.start(worker.run)``, or from the command
    line with ``python -m trioq worker ADDRESS``.  ``nthreads`` tasks run at
    once; ``series`` names the task series it is qualified for.  Raises
    ``ValueError`` for an ``nthreads`` that is not a positive int.
    """

    def __init__(
        self,
        address: str,
        *,
        token: str | None = None,
        name: str | None = None,
        nthreads: int = 1,
        series: Iterable[str] = (),
        heartbeat_interval: float = HEARTBEAT_INTERVAL,
        reconnect_timeout: float = RECONNECT_TIMEOUT,
    ) -> None:
        if type(nthreads) is not int or nthreads < 1:
            raise ValueError(f"nthreads must be a positive int, got {nthreads!r}")
        self.address = address
        self.name = name or f"worker-{socket.gethostname()}-{os.getpid()}"
        self.nthreads = nthreads
        if isinstance(series, (str, bytes)):
            raise TypeError("series must be an iterable of series names, not one string")
        self.series = [str(s) for s in series]
        self._token = token
        self._heartbeat_interval = check_interval(heartbeat_interval)
        if not isinstance(reconnect_timeout, int | float) or reconnect_timeout < 0:
            raise ValueError(f"reconnect_timeout must be a number >= 0, got {reconnect_timeout!r}")
        #: Seconds it keeps trying to reconnect after losing the scheduler (0: never).
        self.reconnect_timeout = float(reconnect_timeout)
        self._slots = trio.Semaphore(nthreads)  # async tasks running at once
        self._lanes = ThreadLanes(nthreads, self._thread_call_ended)  # plain functions
        self._running: dict[str, trio.CancelScope | ThreadCall] = {}  # abortable by key
        self._client: Client | None = None  # what worker_client() gives its tasks
        self._session: Session | None = None
        self._nursery: trio.Nursery | None = None
        #: Why ``run`` returned: the scheduler closed the connection, it broke, or
        #: it went silent (None while running, or when ``run`` was cancelled).
        self.lost: BaseException | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Connect, announce the slots, run tasks until cancelled or the scheduler is gone.

        Reports started once the scheduler has accepted it as a worker.  When
        the connection ends, it connects again, with a pause that doubles
        from ``RECONNECT_DELAY`` up to ``MAX_RECONNECT_DELAY``, for up to
        ``reconnect_timeout`` seconds, and registers afresh: the scheduler
        has given the tasks that were running here to other workers, so
        their results are dropped here, never reported twice.  It returns
        once that time has passed without a connection (``lost`` says why)
        or the token is refused.  The first connection raises what
        ``trioq.connect`` raises: ``ValueError`` for a malformed address or
        no token, ``OSError`` if the scheduler cannot be reached,
        ``AuthenticationError`` if it refuses the token.  Cancelling it
        closes the connection: the scheduler gives the tasks that were
        running here to other workers (a thread's call runs on to its end,
        its result discarded).
        """
        cause = await self._serve(task_status)
        lost_at, delay = trio.current_time(), RECONNECT_DELAY
        while self.reconnect_timeout > 0:
            remaining = lost_at + self.reconnect_timeout - trio.current_time()
            if remaining <= 0:
                break
            await trio.sleep(min(delay, remaining))
            delay = min(delay * 2, MAX_RECONNECT_DELAY)
            try:
                cause = await self._serve(trio.TASK_STATUS_IGNORED)
            except AuthenticationError as exc:
                cause = exc
                if exc.refused:
                    break  # the token is refused: trying again cannot help
            except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                cause = exc  # not back yet
            else:
                lost_at, delay = trio.current_time(), RECONNECT_DELAY  # it was back a while
        self.lost = cause

    async def _serve(self, task_status: trio.TaskStatus[None]) -> BaseException | None:
        """One connection: register, run tasks until it ends; why it ended."""
        async with (
            connect(
                self.address,
                token=self._token,
                name=self.name,
                heartbeat_interval=self._heartbeat_interval,
            ) as client,
            trio.open_nursery() as nursery,
        ):
            # Ready for tasks before saying hello: a push scheduler deals at once.
            self._client = client
            self._session = session = session_of(client)
            self._nursery = nursery
            session.task_handler = self._on_task_message
            await session.request(WorkerHello(self.name, self.nthreads, self.series), Ok)
            # Threads still running calls of a lost connection hold their lanes.
            free = self.nthreads - self._lanes.busy()
            if free > 0:
                session.send_oneway(WorkerReady(free))
            token = task_client.set(client)  # the lanes' threads see it too
            nursery.start_soon(self._lanes.run)
            task_client.reset(token)
            task_status.started()
            try:
                await session.done.wait()  # the connection ended
            finally:
                self._forget_running()
            nursery.cancel_scope.cancel()
        return session.broken

    def _forget_running(self) -> None:
        """The connection is gone: the scheduler reruns these elsewhere; drop their results."""
        for call in self._lanes.drop_queued():
            self._running.pop(call.key, None)
        for running in self._running.values():
            running.cancel()  # a thread's call runs on; its end only frees its lane

    @property
    def running(self) -> int:
        """Tasks running now."""
        return len(self._running)

    def _on_task_message(self, message: Message) -> None:
        """Called by the connection's reader: start or abort a task."""
        if isinstance(message, TaskAssign):
            assert self._nursery is not None
            scope = trio.CancelScope()
            self._running[message.key] = scope
            self._nursery.start_soon(self._run_task, message, scope)
        elif isinstance(message, TaskAbort):
            running = self._running.get(message.key)
            if running is not None:
                running.cancel()

    async def _run_task(self, message: TaskAssign, scope: trio.CancelScope) -> None:
        client, session = self._client, self._session
        assert client is not None and session is not None
        key = message.key
        ok, data = True, b""
        with scope:
            try:
                task_client.set(client)  # this task's context (and its threads')
                fn, args, kwargs = self._load_task(session, message)
                if scope.cancel_called:
                    pass  # aborted before it started: it never runs
                elif not _is_async(fn):
                    call = ThreadCall(key, fn, args, kwargs)
                    self._running[key] = call  # an abort now reaches the lane's call
                    self._lanes.submit(call)
                    return  # the lane reports (see _thread_call_ended)
                else:
                    async with self._slots:  # pushed tasks beyond the slots wait here
                        result = await fn(*args, **kwargs)
                    data = session.serializer.dumps_item(result)
            except Exception as exc:
                ok, data = False, self._describe_failure(exc)
        del self._running[key]
        self._report(key, None if scope.cancel_called else (ok, data))

    def _thread_call_ended(self, call: ThreadCall, outcome: tuple[bool, Any] | None) -> None:
        """In the trio thread, from a lane: a plain-function task returned (or was skipped)."""
        try:
            if self._running.get(call.key) is call:  # not a call of the key given again
                del self._running[call.key]
            report: tuple[bool, bytes] | None = None
            if outcome is not None and not call.aborted:
                assert self._session is not None
                ok, value = outcome
                try:
                    report = (True, self._session.serializer.dumps_item(value)) if ok else None
                except Exception as exc:
                    ok, value = False, exc
                if not ok:
                    report = (False, self._describe_failure(value))
            self._report(call.key, report)
        except Exception:  # a callback from a thread must not take the run down
            logger.exception("trioq worker: reporting task %r failed", call.key)

    def _report(self, key: str, outcome: tuple[bool, bytes] | None) -> None:
        """Tell the scheduler a task ended (None: aborted, its result unwanted)."""
        session = self._session
        if session is None or session.closed or session.broken is not None:
            return  # the scheduler reschedules it elsewhere
        if outcome is None:
            session.send_oneway(WorkerReady(1))
        else:
            session.send_oneway(TaskDone(key, *outcome, ready=1))

    @staticmethod
    def _load_task(session: Session, message: TaskAssign) -> Any:
        """The task's function and arguments, with its dependencies' results
        in place of their futures (as dask does)."""
        serializer = session.serializer
        if not message.deps:
            return serializer.loads(message.payload)
        results = {
            key: serializer.loads(data)
            for key, data in zip(message.deps, message.dep_data, strict=True)
        }
        adopt = serializer.resolver
        assert adopt is not None

        def resolve(key: str) -> Any:
            return results[key] if key in results else adopt(key)

        serializer.resolver = resolve  # no checkpoint until it is restored
        try:
            return serializer.loads(message.payload)
        finally:
            serializer.resolver = adopt

    def _describe_failure(self, exc: Exception) -> bytes:
        """The task's exception, as itself if it pickles, with its traceback text."""
        assert self._session is not None
        serializer = self._session.serializer
        remote_traceback = "".join(traceback.format_exception(exc))
        described: Any = (type(exc).__qualname__, str(exc), remote_traceback)
        try:
            return serializer.dumps((exc, *described))
        except Exception:
            return serializer.dumps((None, *described))
