"""``TaskQueue``: a local priority task queue over attachable workers (AsynQueue's, for trio).

Rules:

* Every dispatch decision is the core ``PriorityScheduler``'s, pull policy:
  a worker asks for one call per slot that is really free (a cancelled
  thread call keeps its slot until the thread returns), so no worker is
  ever oversubscribed.  Priorities come from ``FairTags`` (niceness, then
  start-time fair queueing across series).  An update is a call pinned to
  one worker (a private series only that worker is qualified for), ahead of
  every other call; a worker being attached runs the remembered updates
  before the core knows it.
* Everything the queue starts (one runner task per dispatched call, every
  worker's own tasks and child processes) lives in one nursery held by a
  service task.  ``shutdown`` cancels it and joins it, shielded, even when
  its caller is cancelled: nothing outlives the queue.
* A call is answered exactly once (value, error, stream, cancelled, lost).
  A caller that is cancelled (or times out) withdraws its call: a queued
  one leaves the core, a running one is cancelled on its worker.  The
  runner owns a dispatched call; anything that takes it away (detach,
  death, withdrawal) bumps ``attempt`` so a stale runner changes nothing.

Complexity: O(log n) per call in the core, plus O(1) bookkeeping here.
"""

from __future__ import annotations

import contextlib
import enum
import functools
import math
from collections.abc import Callable
from typing import Any, cast, overload

import trio

from .._exceptions import TaskCancelledError, WorkerLostError, collapse_single_groups
from .._impl import core
from .logs import QueueLog, log
from .records import FairTags, TaskInfo, _Call, _Handle, describe, fold_update
from .remote import RemoteWorker
from .workers import (
    CallStream,
    ProcessWorker,
    ThreadWorker,
    WorkerDied,
    _Sink,
    _Worker,
)

__all__ = ["TaskQueue", "TaskInfo", "MAX_DEATHS"]

# A call whose worker died under it goes back to the queue; once MAX_DEATHS
# workers died running it, it fails (as a cluster task does: see _tasks).
MAX_DEATHS = 3
CLOSE_TIMEOUT = 10.0  # seconds shutdown gives the workers to stop before cancelling them

AnyWorker = ThreadWorker | ProcessWorker | RemoteWorker


class _Default(enum.Enum):
    TIMEOUT = "the TaskQueue's timeout"


_NEW, _RUNNING, _CLOSING, _CLOSED = range(4)


class TaskQueue:
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
        self._initial = workers
        self._timeout = timeout
        self._log = QueueLog(warn=warn, verbose=verbose, spew=spew)
        self._return_failure = return_failure
        self._sched = core.PriorityScheduler()
        self._state = _NEW
        self._calls: dict[int, _Call] = {}
        self._workers: dict[int, _Handle] = {}
        self._updates: list[tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]] = []
        self._next_key = 0
        self._next_worker = 1
        self._fair = FairTags()
        self._drained: trio.Event | None = None  # set when the last call leaves (shutdown)
        self._joined = trio.Event()  # set when the service nursery has ended
        self._nursery: trio.Nursery | None = None
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
        returns ``[]``), or are returned as ``TaskInfo``s while their callers
        get ``WorkerLostError``.  Raises ``KeyError`` for an unknown id,
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

    def _worker_died(self, handle: _Handle) -> None:
        """A worker went away by itself: requeue its calls (up to a limit), detach it."""
        if self._workers.get(handle.id) is not handle:
            return  # detached already, or not attached yet (attach_worker reports it)
        del self._workers[handle.id]
        handle.detached = True
        log.warning("worker %d (%r) died; it is detached", handle.id, handle.worker)
        self._drop_pinned(handle, running=True)
        for key in self._sched.remove_worker(handle.id, requeue=True):
            self._lost(self._calls[key], queued=True)
        assert self._nursery is not None
        self._nursery.start_soon(handle.crash)
        self._dispatch()

    def _drop_pinned(self, handle: _Handle, *, running: bool) -> None:
        """``handle`` is leaving: its queued updates (and running ones if ``running``) end."""
        for call in list(handle.pinned):
            if running or call.scope is None:
                error = WorkerLostError(f"worker {handle.id} left before the update ended")
                self._give_up(call, error)

    def _lost(self, call: _Call, *, queued: bool) -> None:
        """``call``'s worker died under it: run it again elsewhere, or give up."""
        call.disown()
        call.deaths += 1
        if call.pinned is not None:  # an update runs on its worker or nowhere
            self._give_up(call, WorkerLostError(f"worker {call.pinned.id} died running it"))
        elif call.settled or call.deaths >= MAX_DEATHS:  # a stream cannot start over
            error = WorkerLostError(f"the call's worker died under it ({call.deaths} times)")
            self._give_up(call, error)
        elif not queued:
            self._sched.add_task(call.key, call.priority, call.info.series)

    # -- calls ------------------------------------------------------------------

    async def call(
        self,
        fn: Callable[..., Any],
        *args: Any,
        niceness: int = 0,
        series: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 (AsynQueue's API)
        **kwargs: Any,
    ) -> Any:
        """Run ``fn(*args, **kwargs)`` on a worker; return its result.

        Lower ``niceness`` (-20..20) runs sooner; a ``series`` call runs only
        on workers qualified for it (waiting until one is).  Among calls of
        equal niceness, series take turns (fair queueing): calls without a
        series count as one more series, so a plain call submitted after a
        burst of series calls runs in its turn, not after the whole burst.
        If ``fn`` returns
        an iterator or generator, the result is a ``trio.abc.ReceiveChannel``
        of its items.  Raises ``fn``'s exception (unless ``return_failure`` is
        False), ``TypeError``/``ValueError`` for bad arguments, ``RuntimeError``
        before ``__aenter__``, ``trio.ClosedResourceError`` after ``shutdown``,
        ``trio.TooSlowError`` after ``timeout`` seconds, ``TaskCancelledError``
        if the queue shut down before the call ended (queued, or still running
        when ``shutdown``'s grace period ran out), ``WorkerLostError`` if its
        worker was crashed or kept dying.  If cancelled (or timed out), a
        queued call is withdrawn and a running one cancelled on its worker.
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

    def _submit(self, info: TaskInfo, pinned: _Handle | None = None) -> _Call:
        """Queue a call in the core (an update if ``pinned``); ``_dispatch`` starts it."""
        if pinned is None:
            tag, priority = self._fair.submit(info.niceness, info.series)
            series: Any = info.series
        else:
            tag, priority, series = 0, FairTags.UPDATE, pinned.pin
        call = _Call(self._next_key, info, tag, priority, pinned=pinned)
        self._sched.add_task(call.key, priority, series)
        self._next_key += 1
        self._calls[call.key] = call
        if pinned is not None:
            pinned.pinned.add(call)
        return call

    # -- dispatch and runners ---------------------------------------------------------

    def _dispatch(self) -> None:
        """Start a runner for every assignment the core makes now."""
        for key, worker_id in self._sched.assignments():
            call = self._calls[key]
            handle = self._workers[worker_id]
            self._fair.dispatched(call.tag)
            call.attempt += 1
            call.scope = trio.CancelScope()
            handle.running.add(call)
            self._log.debug(
                "call %d (%s) -> worker %d", call.key, describe(call.info.fn), handle.id
            )
            assert self._nursery is not None
            self._nursery.start_soon(self._run_call, call, handle, call.attempt, call.scope)

    async def _run_call(
        self, call: _Call, handle: _Handle, attempt: int, scope: trio.CancelScope
    ) -> None:
        """Run one dispatched call; then ask for more work once the worker is really free."""
        sink = call.sink = _Sink(
            functools.partial(self._stream_opened, call, attempt), self._stream_failed
        )
        info = call.info
        try:
            with scope:
                try:
                    await trio.lowlevel.checkpoint_if_cancelled()  # withdrawn before it started
                    value = await handle.worker._run(info.fn, info.args, info.kwargs, sink)
                except WorkerDied:
                    if call.attempt == attempt:
                        if self._workers.get(handle.id) is handle:
                            self._worker_died(handle)  # which requeues this call too
                        else:
                            self._lost(call, queued=False)
                except Exception as exc:
                    if sink.stream is not None:
                        sink.fail(exc)  # the generator failed: the stream raises it
                    elif call.attempt == attempt:
                        call.settle(error=exc)
                else:
                    if call.attempt == attempt and sink.stream is None:
                        call.settle(value=value)
                finally:
                    sink.close()
        finally:
            handle.running.discard(call)
            if not handle.running:
                handle.idle.set()
            if call.attempt == attempt:
                if not call.settled:  # only if cancelled from outside: the queue is stopping
                    call.settle(error=TaskCancelledError("the call was cancelled"), queue=True)
                self._forget(call)
        self._log.debug("call %d (%s) ended on worker %d", call.key, describe(info.fn), handle.id)
        if not handle.detached:
            await handle.worker._ready()
            if not handle.detached:
                self._sched.request_work(handle.id, 1)
                self._dispatch()

    def _stream_opened(self, call: _Call, attempt: int, stream: CallStream) -> bool:
        if call.attempt != attempt or call.settled:
            return False  # nobody will read it: the generator stops
        if call.pinned is not None:
            call.settle(value=None)  # an update: nobody reads its items either
            return False
        call.settle(value=stream)
        return True

    def _stream_failed(self, error: BaseException) -> bool:
        """A generator raised: raise it from the stream, or log it (``return_failure``)."""
        if self._return_failure:
            self._log.warn("streamed call failed", exc_info=error)
            return True
        log.error("streamed call failed", exc_info=error)
        return False

    def _give_up(self, call: _Call, error: BaseException) -> None:
        """End ``call`` with ``error`` (its caller's, or its stream's), and forget it."""
        if call.settled:
            if call.sink is not None:
                call.sink.fail(error)  # a stream in progress: its reader gets the error
        else:
            call.settle(error=error, queue=True)
        if call.scope is not None:
            call.scope.cancel()
        self._forget(call)

    def _withdraw(self, call: _Call) -> None:
        """The caller gave up waiting (cancelled or timed out)."""
        if call.settled:
            if isinstance(call.value, CallStream):
                call.value.close()  # answered in the same instant: nobody will read it
            return
        call.settled = True
        if call.scope is not None:
            call.scope.cancel()  # running: stop it on its worker
        self._forget(call)

    def _forget(self, call: _Call) -> None:
        """``call`` is over: out of the core (its slot freed) and out of ``pending``."""
        if self._calls.pop(call.key, None) is None:
            return
        if call.pinned is not None:
            call.pinned.pinned.discard(call)
        if call.key in self._sched:
            self._sched.cancel_task(call.key)
        if not self._calls and self._drained is not None:
            self._drained.set()
