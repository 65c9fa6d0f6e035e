"""A worker's thread lanes: plain-function tasks in ``nthreads`` worker threads.

Rules:

* Each lane is a trio task that hands a batch of queued calls to one worker
  thread (``trio.to_thread.run_sync``), so tasks that queue up (a push
  scheduler deals ahead) cost one thread hop per batch, not per task.  At
  most ``nthreads`` calls run at once, and the calls of a lane run in the
  order they were queued.
* Each call's outcome is reported as soon as it returns, from the thread
  with ``TrioToken.run_sync_soon``, not at the end of its batch: a long
  call never holds back the result of the one before it.
* A call cannot be interrupted: an abort before it starts skips it; one
  during it lets it run and discards its result.  Either way the lane stays
  busy until the call has returned, so no more than ``nthreads`` threads
  ever run calls (no oversubscription behind the scheduler's back).
"""

from __future__ import annotations

import contextvars
import math
from collections import deque
from collections.abc import Callable
from typing import Any

import trio

__all__ = ["ThreadCall", "ThreadLanes", "LANE_BATCH"]

LANE_BATCH = 64  # most calls one thread hop takes


class ThreadCall:
    """One plain-function task waiting for, or running in, a lane."""

    __slots__ = ("key", "fn", "args", "kwargs", "aborted")

    def __init__(self, key: str, fn: Callable[..., Any], args: Any, kwargs: Any) -> None:
        self.key = key
        self.fn = fn
        self.args = args
        self.kwargs = kwargs
        self.aborted = False  # read by the thread: a plain bool, set once

    def cancel(self) -> None:
        """Abort: skipped if not started, result discarded if running."""
        self.aborted = True


# What a lane reports: the call, and (ok, value or exception) or None if skipped.
Report = Callable[[ThreadCall, "tuple[bool, Any] | None"], None]


class ThreadLanes:
    """``nthreads`` lanes fed by ``submit``; outcomes go to ``report`` in the trio thread."""

    def __init__(self, nthreads: int, report: Report) -> None:
        self._nthreads = nthreads
        self._report = report
        self._queue: deque[ThreadCall] = deque()
        self._idle = trio.lowlevel.ParkingLot()  # lanes with nothing to do wait here
        self._limiter = trio.CapacityLimiter(nthreads)

    def busy(self) -> int:
        """Calls running in a thread now (an abandoned one holds its lane until it returns)."""
        return int(self._limiter.borrowed_tokens)

    def drop_queued(self) -> list[ThreadCall]:
        """Forget the calls not started yet (their connection is gone); they never report."""
        dropped, self._queue = list(self._queue), deque()
        return dropped

    def submit(self, call: ThreadCall) -> None:
        """Queue a call for the next free lane (never blocks)."""
        self._queue.append(call)
        self._idle.unpark_all()  # every idle lane takes its share of what is queued

    async def run(self) -> None:
        """The lanes; run in the worker's nursery until it is cancelled."""
        token = trio.lowlevel.current_trio_token()
        async with trio.open_nursery() as nursery:
            for _ in range(self._nthreads):
                nursery.start_soon(self._lane, token)

    async def _lane(self, token: trio.lowlevel.TrioToken) -> None:
        while True:
            while not self._queue:
                await self._idle.park()
            # Share what is queued among the lanes, so none idles while calls wait.
            size = min(LANE_BATCH, max(1, math.ceil(len(self._queue) / self._nthreads)))
            batch = [self._queue.popleft() for _ in range(min(size, len(self._queue)))]
            await trio.to_thread.run_sync(
                self._run_batch, batch, token, limiter=self._limiter, abandon_on_cancel=True
            )

    def _run_batch(self, batch: list[ThreadCall], token: trio.lowlevel.TrioToken) -> None:
        """In a worker thread: run the calls in order, reporting each one's outcome."""
        for call in batch:
            outcome: tuple[bool, Any] | None = None
            if not call.aborted:
                try:  # each call in a context of its own, as a task of its own would be
                    context = contextvars.copy_context()
                    outcome = (True, context.run(call.fn, *call.args, **call.kwargs))
                except Exception as exc:
                    outcome = (False, exc)
            try:
                token.run_sync_soon(self._report, call, outcome)
            except trio.RunFinishedError:
                return  # the worker is gone: nobody to tell
