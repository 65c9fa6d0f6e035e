"""The TaskQueue's records (sans-IO): fair-queueing tags, calls, attached workers.

Rules: these are plain records and arithmetic, no I/O.  ``FairTags`` turns
a call's niceness and series into the core scheduler's integer priority;
``_Call`` follows one call from submission to its answer; ``fold_update``
turns an update's answered runs into what ``update`` returns; ``_Handle`` is
one attached worker, the calls its runners hold, and how it stops.
``TaskQueue`` (in ``taskqueue``, through its base ``_Dispatcher`` in ``dispatch``)
drives them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import trio

from .._exceptions import WorkerLostError

if TYPE_CHECKING:
    from .workers import _Sink, _Worker

__all__ = ["FairTags", "TaskInfo", "describe", "fold_update"]

_PINNED = object()  # with a worker id: the private series of that worker's updates


class FairTags:
    """Core priorities for calls, sans-IO: niceness first, then fair queueing by series.

    Rule (start-time fair queueing): a call of series ``s`` gets the tag
    ``max(last tag given to s + 1, vtime)``, where ``vtime`` is the tag of the
    call dispatched last; calls without a series count as one more series.
    So series take turns, and one that was idle gets no credit for it: a
    long series cannot starve one submitted later.  The core priority is
    ``-((niceness + 20) << 48) - tag`` (the core runs the highest first, FIFO
    among equals); ``UPDATE`` is above every call.  O(1) per call.
    """

    UPDATE = 1
    _TAG_BITS = 48

    def __init__(self) -> None:
        self.vtime = 0
        self._last: dict[str | None, int] = {}

    def submit(self, niceness: int, series: str | None) -> tuple[int, int]:
        """Tag a new call; returns ``(tag, core priority)``."""
        tag = max(self._last.get(series, -1) + 1, self.vtime)
        self._last[series] = tag
        return tag, -((niceness + 20) << self._TAG_BITS) - tag

    def dispatched(self, tag: int) -> None:
        """A call with ``tag`` went to a worker: virtual time moves on."""
        self.vtime = max(self.vtime, tag)


@dataclass(frozen=True)
class TaskInfo:
    """A call that ``detach_worker(crash=True)`` took back unfinished.

    A frozen record of what was passed to ``TaskQueue.call``; the caller of
    that call got ``WorkerLostError``.  ``await tq.call(info.fn, *info.args,
    niceness=info.niceness, series=info.series, **info.kwargs)`` runs it
    again.

    .. attribute:: fn

       The function given to ``call``.

    .. attribute:: args

       Its positional arguments, a tuple.

    .. attribute:: kwargs

       Its keyword arguments, a dict (without ``call``'s own ``niceness``,
       ``series`` and ``timeout``).

    .. attribute:: niceness

       The call's niceness, -20 (runs soonest) to 20.

    .. attribute:: series

       The series it runs in (only on workers qualified for it), or None
       for any worker.
    """

    fn: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    niceness: int
    series: str | None


@dataclass(eq=False)
class _Call:
    """One ``call`` from submission to its answer (and, for a stream, its end)."""

    key: int
    info: TaskInfo
    tag: int  # start-time fair queueing tag
    priority: int  # in the core
    attempt: int = 0  # bumped on each dispatch and each time a runner is disowned
    deaths: int = 0  # workers that died running it
    scope: trio.CancelScope | None = None  # the current runner's
    sink: _Sink | None = None  # the current runner's
    event: trio.Event = field(default_factory=trio.Event)  # set once answered
    settled: bool = False
    value: Any = None
    error: BaseException | None = None
    queue_error: bool = False  # cancelled/lost: raised even if return_failure is False
    pinned: _Handle | None = None  # an update's: the one worker it runs on

    def settle(
        self, *, value: Any = None, error: BaseException | None = None, queue: bool = False
    ) -> None:
        """Answer the caller (once; later answers change nothing)."""
        if not self.settled:
            self.settled = True
            self.value, self.error, self.queue_error = value, error, queue
            self.event.set()

    def disown(self) -> None:
        """Take the call from its runner: the runner stops it and changes nothing."""
        self.attempt += 1
        if self.scope is not None:
            self.scope.cancel()


def fold_update(
    calls: list[_Call],
) -> tuple[list[Any], list[BaseException], list[BaseException]]:
    """An update's answered runs, in attach order, as ``(results, failures, skipped)``.

    Each run that ended on its worker has an entry in ``results``: its value,
    or None if it failed (its exception is then in ``failures``, in order).
    A run whose worker left first (``WorkerLostError``) has no entry, its
    error is in ``skipped``.  Raises the queue's own error (the queue shut
    down before the run ended).  O(len(calls)).
    """
    results: list[Any] = []
    failures: list[BaseException] = []
    skipped: list[BaseException] = []
    for call in calls:
        if isinstance(call.error, WorkerLostError):
            skipped.append(call.error)
        elif call.queue_error:
            assert call.error is not None
            raise call.error
        else:
            results.append(call.value)
            if call.error is not None:
                failures.append(call.error)
    return results, failures, skipped


@dataclass(eq=False)
class _Handle:
    """An attached worker."""

    id: int
    worker: _Worker
    running: set[_Call] = field(default_factory=set)  # calls whose runner has not ended
    idle: trio.Event = field(default_factory=trio.Event)  # set when ``running`` empties
    detached: bool = False
    closed: trio.Event = field(default_factory=trio.Event)  # set once detached gracefully
    pinned: set[_Call] = field(default_factory=set)  # its updates not yet over

    @property
    def pin(self) -> tuple[object, int]:
        """The private series of this worker's updates."""
        return (_PINNED, self.id)

    async def drain_and_close(self) -> None:
        """Wait for the calls still running, then stop the worker gracefully; sets ``closed``."""
        try:
            while self.running:
                self.idle = trio.Event()
                await self.idle.wait()
            await self.worker._close(crash=False)
            self.worker._attached = False
        finally:
            self.closed.set()

    async def crash(self) -> None:
        """Stop the worker at once (its child killed, its remote tasks cancelled)."""
        await self.worker._close(crash=True)
        self.worker._attached = False


def describe(fn: Callable[..., Any]) -> str:
    """A function's name for the log."""
    return getattr(fn, "__qualname__", None) or repr(fn)
