"""``TaskQueue``: a local priority task queue over attachable workers (AsynQueue's, for trio).

Rules:

* ``TaskQueue`` is the queue's face and lifetime: its public methods check
  their arguments and the queue's state, then hand calls and workers to
  its base ``_Dispatcher`` (in ``dispatch``), which owns every dispatch
  decision and runs the calls.  A worker being attached runs the
  remembered updates before the core knows it.
* Everything the queue starts (one runner task per dispatched call, every
  worker's own tasks and child processes) lives in one nursery held by a
  service task.  ``shutdown`` cancels it and joins it, shielded, even when
  its caller is cancelled: nothing outlives the queue.
* ``call``'s overloads give type checkers each kind of result (a value, an
  ``async def``'s awaited value, a generator's channel of items).

Complexity: O(log n) per call in the core, plus O(1) bookkeeping here.
"""

from __future__ import annotations

import contextlib
import enum
import functools
import math
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from typing import Any, ParamSpec, TypedDict, TypeVar, TypeVarTuple, Unpack, cast, overload

import trio

from .._exceptions import TaskCancelledError, WorkerLostError, collapse_single_groups
from .dispatch import MAX_DEATHS, _Dispatcher
from .logs import QueueLog, log
from .records import TaskInfo, _Handle, describe, fold_update
from .remote import RemoteWorker
from .workers import ProcessWorker, ThreadWorker, WorkerDied, _Sink, _Worker

__all__ = ["TaskQueue", "TaskInfo", "MAX_DEATHS"]

CLOSE_TIMEOUT = 10.0  # seconds shutdown gives the workers to stop before cancelling them

AnyWorker = ThreadWorker | ProcessWorker | RemoteWorker

# Typing ``call``: ParamSpec checks fn's arguments but cannot sit beside the
# options, so these come with positional arguments only (TypeVarTuple).
P = ParamSpec("P")
R = TypeVar("R")
Y = TypeVar("Y")
Ts = TypeVarTuple("Ts")
_Coro = Coroutine[Any, Any, R]  # an ``async def`` function's call: its result is awaited
_Items = Iterator[Y] | AsyncIterator[Y]  # a generator's call: its items are streamed
_Chan = trio.abc.ReceiveChannel


class CallOptions(TypedDict, total=False):
    """``TaskQueue.call``'s own keyword arguments (for type checkers)."""

    niceness: int
    series: str | None
    timeout: float | None


class _Default(enum.Enum):
    TIMEOUT = "the TaskQueue's timeout"


_NEW, _RUNNING, _CLOSING, _CLOSED = range(4)


class TaskQueue(_Dispatcher):
    """A priority queue of calls, run by attached thread, process and remote workers.

    Use it as ``async with TaskQueue(*workers) as tq:``; ``await tq.call(fn,
    *args)`` runs ``fn`` on a worker and returns its result.  ``timeout`` is
    ``shutdown``'s default grace period.  ``warn``/``verbose``/``spew`` log
    this queue's failures (WARNING), attach/detach/update/shutdown (INFO) and
    every call (DEBUG) on the logger ``"trioq.taskqueue"``, whatever other
    queues' flags are: no queue changes the logger's level, and a level you
    set on it still applies.  With ``return_failure`` False a failed call is
    logged (ERROR) and returns None instead of raising.
    ``len(tq)`` is the number of attached workers, ``tq.pending()`` the number
    of calls not yet finished, and ``bool(tq)`` is True while it is running
    with at least one worker.
    """

    def __init__(
        self,
        *workers: AnyWorker,
        timeout: float | None = 10.0,
        warn: bool = False,
        verbose: bool = False,
        spew: bool = False,
        return_failure: bool = True,
    ) -> None:
        super().__init__(QueueLog(warn=warn, verbose=verbose, spew=spew), return_failure)
        self._initial = workers
        self._timeout = timeout
        self._state = _NEW
        self._updates: list[tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]] = []
        self._next_worker = 1
        self._joined = trio.Event()  # set when the service nursery has ended
        self._service: trio.CancelScope | None = None
        self._outer: Any = None  # the nursery manager around the service task

    # -- lifetime --------------------------------------------------------------

    async def __aenter__(self) -> TaskQueue:
        """Open the queue's nursery and attach the constructor's workers.

        Raises ``RuntimeError`` if entered twice, or what attaching raised.
        """
        if self._state != _NEW:
            raise RuntimeError("a TaskQueue can be entered only once")
        self._outer = trio.open_nursery()
        outer = await self._outer.__aenter__()
        try:
            self._nursery = await outer.start(self._serve)
            self._state = _RUNNING
            for worker in self._initial:
                await self.attach_worker(worker)
        except BaseException:
            try:
                await self.shutdown(0)
            finally:
                with collapse_single_groups():
                    await self._outer.__aexit__(None, None, None)
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        """``await self.shutdown()``, then close the nursery.

        If cancelled, the grace period ends at once and the shutdown still
        completes (see ``shutdown``).
        """
        try:
            await self.shutdown()
        finally:
            with collapse_single_groups():
                await self._outer.__aexit__(None, None, None)

    async def _serve(self, *, task_status: trio.TaskStatus[trio.Nursery]) -> None:
        try:
            async with trio.open_nursery() as nursery:
                self._service = nursery.cancel_scope
                task_status.started(nursery)
                await trio.sleep_forever()
        finally:
            self._joined.set()

    def is_running(self) -> bool:
        """True between ``__aenter__`` and the start of ``shutdown``."""
        return self._state == _RUNNING

    def __bool__(self) -> bool:
        """True while running with at least one attached worker (a call could start)."""
        return self.is_running() and bool(self._workers)

    def __len__(self) -> int:
        """The number of attached workers (AsynQueue's ``len``); see ``pending`` for calls."""
        return len(self._workers)

    def pending(self) -> int:
        """Calls not finished yet, queued or running: each worker's run of an update
        counts, a streamed call counts until its generator ends."""
        return len(self._calls)

    def __repr__(self) -> str:
        state = ("new", "running", "closing", "closed")[self._state]
        return f"<trioq.TaskQueue {state} workers={list(self._workers)} calls={self.pending()}>"

    async def shutdown(
        self,
        timeout: float | _Default | None = _Default.TIMEOUT,  # noqa: ASYNC109 (AsynQueue's API)
    ) -> None:
        """Stop the queue; idempotent.

        ``is_running()`` turns False and new ``call``/``update``/``attach_worker``
        raise ``trio.ClosedResourceError``.  Queued and running calls get
        ``timeout`` seconds (the constructor's by default, None: no limit)
        to finish; the rest are cancelled (their callers get
        ``TaskCancelledError``), every worker is crashed (children killed)
        and the nursery is joined.  If cancelled, the grace period ends at
        once but the stopping and joining still happen.
        """
        if self._state == _NEW:
            self._state = _CLOSED
            self._joined.set()
        if self._state != _RUNNING:
            await self._joined.wait()
            return
        self._state = _CLOSING
        grace = self._timeout if isinstance(timeout, _Default) else timeout
        self._log.info("shutting down: %d calls, %d workers", len(self._calls), len(self._workers))
        try:
            if self._calls:
                self._drained = trio.Event()
                with trio.move_on_after(math.inf if grace is None else grace):
                    await self._drained.wait()
        finally:
            with trio.CancelScope(shield=True):
                await self._abort_all()
                await self._joined.wait()
                self._state = _CLOSED
        self._log.info("shut down")

    async def _abort_all(self) -> None:
        """Cancel every call, crash every worker (remote ones cancel their tasks), then
        cancel the nursery."""
        for call in list(self._calls.values()):
            self._give_up(call, TaskCancelledError("the TaskQueue shut down before the call ended"))
        handles = list(self._workers.values())
        for handle in handles:
            handle.detached = True
            self._sched.remove_worker(handle.id, requeue=False)
        self._workers.clear()
        with trio.move_on_after(CLOSE_TIMEOUT):
            async with trio.open_nursery() as nursery:
                for handle in handles:
                    nursery.start_soon(functools.partial(handle.worker._close, crash=True))
        assert self._service is not None
        self._service.cancel()

    def _check_open(self) -> trio.Nursery:
        if self._state == _NEW:
            raise RuntimeError("enter the TaskQueue ('async with') before using it")
        if self._state != _RUNNING:
            raise trio.ClosedResourceError("the TaskQueue is shut down")
        assert self._nursery is not None
        return self._nursery

    # -- workers --------------------------------------------------------------

    async def attach_worker(self, worker: AnyWorker) -> int:
        """Start ``worker``, run the remembered updates on it, then give it calls.

        Returns its id (1, 2, 3, ... in attach order, never reused), which
        ``workers(id)``, ``detach_worker`` and ``qualify_worker`` take.
        Raises ``TypeError`` for a non-worker, ``ValueError`` if it is
        attached already, ``RuntimeError`` before ``__aenter__``,
        ``trio.ClosedResourceError`` after ``shutdown``, ``WorkerLostError``
        if it died during its updates, or what starting it or an update
        raised.  If it fails or is cancelled, the worker is stopped and not
        attached.
        """
        if not isinstance(worker, _Worker):
            raise TypeError(
                f"expected a ThreadWorker, ProcessWorker or RemoteWorker, got {worker!r}"
            )
        nursery = self._check_open()
        if worker._attached:
            raise ValueError(f"{worker!r} is attached to a TaskQueue already")
        worker._attached = True
        handle = _Handle(self._next_worker, worker)
        self._next_worker += 1
        attached = False
        try:
            await worker._open(nursery, functools.partial(self._worker_died, handle))
            index = 0
            while index < len(self._updates):  # updates added meanwhile are run too
                fn, args, kwargs = self._updates[index]
                try:
                    await worker._run(fn, args, kwargs, _Sink())
                except WorkerDied as exc:
                    raise WorkerLostError(f"{worker!r} died while running updates") from exc
                index += 1
            self._check_open()
            attached = True
        finally:
            if not attached:
                worker._attached = False
                with trio.CancelScope(shield=True):
                    await worker._close(crash=True)
        self._workers[handle.id] = handle
        self._sched.add_worker(handle.id, worker.slots, {*worker.series, handle.pin})
        self._sched.request_work(handle.id, worker.slots)
        self._log.info("attached worker %d: %r", handle.id, worker)
        self._dispatch()
        return handle.id

    async def detach_worker(
        self, worker_id: int, *, reassign: bool = False, crash: bool = False
    ) -> list[TaskInfo]:
        """Take worker ``worker_id`` out of service.

        It gets no new calls.  ``crash`` False: wait for its running calls,
        stop it, return ``[]``.  ``crash`` True: stop it at once; its
        unfinished calls go back to the queue in their place (``reassign``,
        returns ``[]``), or are returned as a list of ``TaskInfo`` while their
        callers get ``WorkerLostError``.  Raises ``KeyError`` for an unknown id,
        ``RuntimeError`` before ``__aenter__``.  If cancelled while waiting,
        the worker is still detached and is stopped once its calls end.
        """
        if self._state == _NEW:
            raise RuntimeError("enter the TaskQueue ('async with') before using it")
        handle = self._workers.pop(worker_id, None)
        if handle is None:
            raise KeyError(f"no attached worker has id {worker_id!r}")
        assert self._nursery is not None
        handle.detached = True
        self._log.info("detaching worker %d (reassign=%s, crash=%s)", worker_id, reassign, crash)
        self._drop_pinned(handle, running=crash)
        if not crash:
            self._sched.remove_worker(worker_id, requeue=False)  # its calls go on, outside
            self._nursery.start_soon(handle.drain_and_close)
            await handle.closed.wait()
            return []
        lost = []
        for key in self._sched.remove_worker(worker_id, requeue=reassign):
            call = self._calls[key]
            call.disown()
            if reassign and not call.settled:
                continue  # queued again, in its original place
            if not reassign:
                lost.append(call.info)
            self._give_up(call, WorkerLostError(f"worker {worker_id} was detached (crash=True)"))
        self._dispatch()
        with trio.CancelScope(shield=True):
            await handle.crash()
        return lost

    def qualify_worker(self, worker_or_id: AnyWorker | int, series: str) -> None:
        """Let a worker (object or id) run calls of ``series`` from now on.

        Raises ``KeyError`` if it is not attached.
        """
        for handle in self._workers.values():
            if handle.id == worker_or_id or handle.worker is worker_or_id:
                self._sched.qualify_worker(handle.id, series)
                handle.worker.series = handle.worker.series | {series}
                self._dispatch()
                return
        raise KeyError(f"no attached worker is {worker_or_id!r}")

    @overload
    def workers(self, id: None = None) -> list[AnyWorker]: ...
    @overload
    def workers(self, id: int) -> AnyWorker | None: ...
    def workers(self, id: int | None = None) -> list[AnyWorker] | AnyWorker | None:
        """Without ``id``: the attached worker objects, in attach order; else that worker or None.

        Ids are what ``attach_worker`` returned (1, 2, 3, ... in attach order).
        """
        if id is None:
            return [cast(AnyWorker, handle.worker) for handle in self._workers.values()]
        handle = self._workers.get(id)
        return None if handle is None else cast(AnyWorker, handle.worker)

    # -- calls ------------------------------------------------------------------

    # Most specific first: a coroutine's result, then a generator's stream.
    @overload
    async def call(self, fn: Callable[P, _Coro[R]], *args: P.args, **kw: P.kwargs) -> R: ...
    @overload
    async def call(
        self, fn: Callable[[*Ts], _Coro[R]], *args: *Ts, **kw: Unpack[CallOptions]
    ) -> R: ...
    @overload
    async def call(self, fn: Callable[P, _Items[Y]], *args: P.args, **kw: P.kwargs) -> _Chan[Y]: ...
    @overload
    async def call(
        self, fn: Callable[[*Ts], _Items[Y]], *args: *Ts, **kw: Unpack[CallOptions]
    ) -> _Chan[Y]: ...
    @overload
    async def call(self, fn: Callable[P, R], *args: P.args, **kw: P.kwargs) -> R: ...
    @overload
    async def call(self, fn: Callable[[*Ts], R], *args: *Ts, **kw: Unpack[CallOptions]) -> R: ...

    async def call(  # type: ignore[misc]  # mypy can't match *Ts overloads to *args: Any
        self,
        fn: Callable[..., Any],
        *args: Any,
        niceness: Any = 0,
        series: Any = None,
        timeout: Any = None,  # noqa: ASYNC109 (AsynQueue's API)
        **kwargs: Any,
    ) -> Any:
        """Run ``fn(*args, **kwargs)`` on a worker; return its result.

        Lower ``niceness`` (-20..20) runs sooner; a ``series`` call runs only on
        workers qualified for it (waiting until one is).  Among calls of equal
        niceness, series take turns (fair queueing): calls without a series
        count as one more series, so a plain call submitted after a burst of
        series calls runs in its turn, not after the whole burst.  If ``fn``
        returns an iterator or generator, the result is a
        ``trio.abc.ReceiveChannel`` of its items.  Type checkers see that result
        type (an ``async def``'s awaited result) and check the arguments against
        ``fn``; the options go with positional arguments only (pass keywords
        with ``functools.partial``), and the None of a failure under
        ``return_failure`` False is not in the type.  Raises ``fn``'s exception
        (unless ``return_failure`` is False), ``TypeError``/``ValueError`` for
        bad arguments, ``RuntimeError`` before ``__aenter__``,
        ``trio.ClosedResourceError`` after ``shutdown``, ``trio.TooSlowError``
        after ``timeout`` seconds, ``TaskCancelledError`` if the queue shut down
        before the call ended (queued, or still running when ``shutdown``'s
        grace period ran out), ``WorkerLostError`` if its worker was crashed or
        kept dying.  If cancelled (or timed out), a queued call is withdrawn and
        a running one cancelled on its worker.
        """
        if not callable(fn):
            raise TypeError(f"fn must be callable, got {type(fn).__name__}")
        if type(niceness) is not int or not -20 <= niceness <= 20:
            raise ValueError(f"niceness must be an int in -20..20, got {niceness!r}")
        self._check_open()
        call = self._submit(TaskInfo(fn, args, kwargs, niceness, series))
        self._dispatch()
        with trio.fail_after(timeout) if timeout is not None else contextlib.nullcontext():
            try:
                await call.event.wait()
            except BaseException:
                self._withdraw(call)
                raise
        if call.error is None:
            return call.value
        if call.queue_error or self._return_failure:
            if not call.queue_error:
                self._log.warn("call %s failed", describe(fn), exc_info=call.error)
            raise call.error
        log.error("call %s failed", describe(fn), exc_info=call.error)
        return None

    async def update(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> list[Any]:
        """Run ``fn(*args, **kwargs)`` once on every attached worker, and remember it.

        Returns the results of the workers attached when it was called, in
        attach order (a generator's items are not read: it is stopped, its
        entry is None).  On each worker it waits for a free slot, as a call
        does (no worker is oversubscribed), but goes ahead of every queued
        call.  Every worker attached later runs the remembered updates, in
        order, before its first call (a ``RemoteWorker`` runs it once, as one
        task).  A worker that is detached or dies before its run ends is
        skipped (logged at WARNING) and has no entry: it is gone, and a None
        would look like a result.  Raises ``TypeError`` for a non-callable,
        ``RuntimeError`` before ``__aenter__``, ``trio.ClosedResourceError``
        after ``shutdown``, ``TaskCancelledError`` if the queue shut down
        before the runs ended, and the first exception ``fn`` raised (unless
        ``return_failure`` is False: each failure is logged and its entry is
        None).  If cancelled, the runs are withdrawn or cancelled on their
        workers; it stays remembered.
        """
        if not callable(fn):
            raise TypeError(f"fn must be callable, got {type(fn).__name__}")
        self._check_open()
        self._updates.append((fn, args, kwargs))
        self._log.info("update %s on %d workers", describe(fn), len(self._workers))
        info = TaskInfo(fn, args, kwargs, -20, None)
        calls = [self._submit(info, pinned=handle) for handle in self._workers.values()]
        self._dispatch()
        try:
            for call in calls:
                await call.event.wait()
            await trio.lowlevel.checkpoint()
        except BaseException:
            for call in calls:
                self._withdraw(call)
            raise
        results, failures, skipped = fold_update(calls)
        for error in skipped:
            log.warning("update %s did not run to its end: %s", describe(fn), error)
        if failures and self._return_failure:
            raise failures[0]
        for error in failures:
            log.error("update %s failed", describe(fn), exc_info=error)
        return results
