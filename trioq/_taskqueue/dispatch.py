"""How a ``TaskQueue``'s calls reach a worker and come back: the queue's dispatcher.

``_Dispatcher`` is ``TaskQueue``'s base class.  It owns the calls in flight,
the attached workers, the core scheduler and the runners between them;
``TaskQueue`` (in ``taskqueue``) adds the lifetime and the public methods,
which check their arguments and the queue's state before they come here.

Rules:

* Every dispatch decision is the core ``PriorityScheduler``'s, pull policy:
  a worker asks for one call per slot that is really free (a cancelled
  thread call keeps its slot until the thread returns), so no worker is
  ever oversubscribed.  Priorities come from ``FairTags`` (niceness, then
  start-time fair queueing across series).  An update is a call pinned to
  one worker (a private series only that worker is qualified for), ahead of
  every other call.
* One runner task per dispatched call, in the queue's nursery.  A call is
  answered exactly once (value, error, stream, cancelled, lost).  A caller
  that is cancelled (or times out) withdraws its call: a queued one leaves
  the core, a running one is cancelled on its worker.  The runner owns a
  dispatched call; anything that takes it away (detach, death, withdrawal)
  bumps ``attempt`` so a stale runner changes nothing.
* A worker that dies by itself is detached; its calls go back to the queue
  in their place, until ``MAX_DEATHS`` workers died running one (an update
  or a started stream cannot move: it fails at once).

Complexity: O(log n) per call in the core, plus O(1) bookkeeping here.
"""

from __future__ import annotations

import functools
from typing import Any

import trio

from .._exceptions import TaskCancelledError, WorkerLostError
from .._impl import core
from .logs import QueueLog, log
from .records import FairTags, TaskInfo, _Call, _Handle, describe
from .workers import CallStream, WorkerDied, _Sink

__all__ = ["MAX_DEATHS"]

# A call whose worker died under it goes back to the queue; once MAX_DEATHS
# workers died running it, it fails (as a cluster task does: see _scheduler.tasks).
MAX_DEATHS = 3


class _Dispatcher:
    """A queue's calls, its attached workers and the core that matches them.

    ``_submit`` queues a call in the core, ``_dispatch`` starts a runner for
    each assignment the core makes, and the runner answers the call and
    asks for more work once its worker is really free.
    """

    def __init__(self, log: QueueLog, return_failure: bool) -> None:
        self._log = log
        self._return_failure = return_failure
        self._sched = core.PriorityScheduler()
        self._calls: dict[int, _Call] = {}
        self._workers: dict[int, _Handle] = {}
        self._next_key = 0
        self._fair = FairTags()
        self._drained: trio.Event | None = None  # set when the last call leaves (shutdown)
        self._nursery: trio.Nursery | None = None  # the queue's service nursery, once running

    # -- calls in, runners out ----------------------------------------------------

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

    # -- workers that leave -----------------------------------------------------

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
