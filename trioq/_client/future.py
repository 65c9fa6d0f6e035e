"""Futures: references to tasks running on workers, and the calls that make them.

Rules:

* ``submit`` pickles the callable and its arguments in the client; the
  scheduler forwards the bytes to a worker and never unpickles them.
* ``submit`` does not wait for the scheduler: it queues the request on the
  ordered connection and returns the future; a refusal is raised by
  awaiting it.  Awaiting parks a ``TaskResult`` read in the scheduler; a
  cancelled wait is withdrawn and leaves the task running.
* A task's own exception is re-raised here as itself when it could be
  pickled (``RemoteTaskError`` otherwise), with the remote traceback as a
  note.  A cancelled task raises ``TaskCancelledError``; one whose workers
  kept dying raises ``WorkerLostError``.
* ``Future[T]`` is generic for type checkers only: ``T`` is the task's result
  type, ``Any`` when left out (``Future`` alone is ``Future[Any]``).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Generator, Iterable
from typing import TYPE_CHECKING, Any, Generic

import trio

from .._exceptions import (
    RemoteTaskError,
    SerializationError,
    TaskCancelledError,
    WorkerLostError,
)
from .._wire.messages import Ok
from .._wire.pickling import pickle_dumps
from .._wire.serialize import Pickled, Serializer, note_reference, resolve_reference
from .._wire.task_messages import Scatter, Submit, TaskCancel, TaskOutcome, TaskRelease, TaskResult

if TYPE_CHECKING:
    from typing_extensions import TypeVar

    from .session import Pending, Session

    # A default (PEP 696) keeps a bare ``Future`` valid under ``--strict``.
    T = TypeVar("T", default=Any)
else:
    from typing import TypeVar

    T = TypeVar("T")  # typing.TypeVar takes a default only from Python 3.13

__all__ = ["Future", "submit", "scatter_value", "map_tasks", "gather", "as_completed"]


class Future(Generic[T]):
    """A task's eventual result.  ``await fut`` (or ``await fut.result()``) gets it.

    Made by ``Client.submit``, ``map`` and ``scatter``, or by reading one back
    from an item, a value or a task argument; never directly.  For type
    checkers it is ``Future[T]``, ``T`` being what the task returns (what an
    ``async def`` task's coroutine returns), so ``await fut`` is a ``T``.
    """

    def __init__(self, session: Session, key: str) -> None:
        self._session = session
        self._refused: BaseException | None = None  # the scheduler refused the submit
        self._reads: set[int] = set()  # request ids of reads waiting for the outcome
        self._watchers: set[Callable[[BaseException], None]] = set()  # gathers to tell
        self._shares = 1  # stream stages sharing it (see streams.multiplex)
        #: The task's key in the cluster.
        self.key = key
        #: "pending" until the scheduler says it ended ("finished", "error",
        #: "cancelled" or "lost").
        self.status = "pending"

    def __repr__(self) -> str:
        return f"<trioq.Future {self.key!r} {self.status}>"

    def done(self) -> bool:
        """True once the task has ended (as far as this client has heard); raises nothing."""
        return self.status != "pending"

    async def result(self) -> T:
        """The task's return value, waiting for it.

        Raises the task's exception (``RemoteTaskError`` if it could not be
        pickled), ``TaskCancelledError``, ``WorkerLostError``, the refusal of
        its submit (see ``Client.submit``), ``LookupError`` once the task was
        released by every client holding it, ``SerializationError`` for a
        result that cannot be unpickled here.  If cancelled, the read is
        withdrawn and the task itself goes on.
        """
        return self._unpack(await self._outcome())

    async def exception(self) -> BaseException | None:
        """Wait for the task to end; the exception it failed with, or None if it succeeded.

        The exception is the one ``result`` would raise for a task that
        failed: the task's own (``RemoteTaskError`` if it could not be
        pickled, with the remote traceback as a note), or ``WorkerLostError``
        if its workers kept dying.  A success is not unpickled.  Everything
        that is not an outcome of running the task is raised, as ``result``
        raises it: ``TaskCancelledError`` for a cancelled task (as
        ``concurrent.futures`` raises ``CancelledError``), the refusal of its
        submit, ``LookupError`` once it was released by every client holding
        it, ``trio.BrokenResourceError`` for a broken connection.  If
        cancelled, the read is withdrawn and the task itself goes on.
        """
        reply = await self._outcome()
        self.status = reply.status
        if reply.status == "finished":
            return None
        if reply.status == "cancelled":
            raise self._failure(reply)
        return self._failure(reply)

    async def _outcome(self) -> TaskOutcome:
        """Wait for the task's ``TaskOutcome`` (raises a refusal or a lost connection)."""
        session = self._session
        if self._refused is not None:
            await trio.lowlevel.checkpoint()
            raise self._refused
        await trio.lowlevel.checkpoint_if_cancelled()
        request_id = session.send_request(TaskResult(self.key, True))
        pending = session.pending[request_id]
        self._reads.add(request_id)
        try:
            await pending.event.wait()
        except trio.Cancelled:
            if not pending.event.is_set():
                pending.late = _forget
                session.withdraw(request_id)
            raise
        finally:
            self._reads.discard(request_id)
        if self._refused is not None:  # the submit was refused: the read was withdrawn
            raise self._refused
        return session.result(pending, TaskOutcome)

    def _on_submitted(self, pending: Pending) -> None:
        """The scheduler's answer to the submit, which nobody awaited."""
        if pending.op == 0:
            return  # connection lost: awaiting the future says so
        try:
            self._session.result(pending, Ok)
        except Exception as exc:
            self._refused = exc
            self.status = "error"
            for request_id in self._reads:  # they would wait for another client's task
                self._session.withdraw(request_id)
            for refused in list(self._watchers):
                refused(exc)
            self._session.task_ended()

    def __await__(self) -> Generator[Any, None, T]:
        return self.result().__await__()

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        """Pickled, a future is its key; a trioq client or worker reading it
        back gets a live future bound to its own connection."""
        note_reference(self.key)
        return resolve_reference, (self.key,)

    async def cancel(self) -> None:
        """Cancel the task: dropped if pending, stopped on its worker if running.

        A task running in a worker thread cannot be interrupted: it runs to
        its end and its result is discarded.  Readers of the future then get
        ``TaskCancelledError``; a task that had ended already is left as it
        is.  Raises ``LookupError`` once the task has ended and been released
        by every client holding it.  If this call is cancelled after the request
        left, the task is cancelled all the same.
        """
        if self._refused is not None:  # never ours: the key is another client's task
            await trio.lowlevel.checkpoint()
            raise self._refused
        await self._session.request(TaskCancel(self.key), Ok)

    async def release(self) -> None:
        """Tell the scheduler this client no longer needs the result (the key is free).

        Does not cancel the task: one still running runs to its end.  Once it
        has ended and no client, item or task holds it, the scheduler forgets
        it, and ``result`` and ``cancel`` on it raise ``LookupError``.  Idempotent;
        does not wait for the scheduler, so a cancelled call has released it.
        """
        self._session.send_oneway(TaskRelease(self.key))
        if self._session.futures.get(self.key) is self:
            del self._session.futures[self.key]
        await trio.lowlevel.checkpoint()

    def _unpack(self, reply: TaskOutcome) -> T:
        self.status = reply.status
        if reply.status == "finished":
            value: T = self._session.serializer.loads(reply.data)
            return value
        raise self._failure(reply)

    def _failure(self, reply: TaskOutcome) -> BaseException:
        """The exception an outcome other than "finished" stands for."""
        if reply.status == "error":
            try:
                error, type_name, text, remote_traceback = self._session.serializer.loads(
                    reply.data
                )
            except SerializationError:  # the exception itself does not unpickle here
                _, type_name, text, remote_traceback = Serializer().loads(reply.data)
                error = None
            failure = (
                error
                if isinstance(error, BaseException)
                else RemoteTaskError(f"{type_name}: {text}")
            )
            failure.add_note(f"remote traceback:\n{remote_traceback}")
            return failure
        message = reply.data.decode(errors="replace")
        if reply.status == "cancelled":
            return TaskCancelledError(message)
        return WorkerLostError(message)


async def submit(
    session: Session,
    fn: Callable[..., Any],
    *args: Any,
    priority: int = 0,
    series: str | None = None,
    retries: int = 0,
    key: str | None = None,
    _pickled_fn: Pickled | None = None,
    **kwargs: Any,
) -> Future[Any]:
    """Run ``fn(*args, **kwargs)`` on a worker; see ``Client.submit``.

    ``_pickled_fn`` is ``fn`` already pickled (``map`` pickles it once).
    """
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}")
    _check_options(priority, series, retries, key)
    if key is None:
        key = f"{getattr(fn, '__name__', 'task')}-{uuid.uuid4().hex}"
    if key in session.futures:
        raise ValueError(f"this client has a task with key {key!r} already")
    pickled = _pickled_fn if _pickled_fn is not None else _pickle_function(fn)
    payload = session.serializer.dumps_item((pickled, args, kwargs))
    await trio.lowlevel.checkpoint_if_cancelled()
    future = Future(session, key)
    # Sent without waiting: requests on a connection are applied in order, so
    # the scheduler knows the task before any later request about it, and a
    # refusal (a key another client uses) is raised by awaiting the future.
    session.send_request(Submit(key, payload, priority, series, retries), late=future._on_submitted)
    session.futures[key] = future
    await trio.lowlevel.cancel_shielded_checkpoint()
    return future


_PRIORITY_RANGE = range(-(2**63), 2**63)


def _check_options(priority: Any, series: Any, retries: Any, key: Any) -> None:
    """Refuse bad task options here, with a clear error, not on the scheduler."""
    if type(priority) is not int:
        raise TypeError(f"priority must be an int, got {type(priority).__name__}")
    if priority not in _PRIORITY_RANGE:
        raise ValueError(f"priority must fit in 64 bits, got {priority}")
    if series is not None and type(series) is not str:
        raise TypeError(f"series must be a str or None, got {type(series).__name__}")
    if type(retries) is not int:
        raise TypeError(f"retries must be an int, got {type(retries).__name__}")
    if retries < 0:
        raise ValueError(f"retries must be >= 0, got {retries}")
    if key is not None and type(key) is not str:
        raise TypeError(f"key must be a str or None, got {type(key).__name__}")


def _pickle_function(fn: Callable[..., Any]) -> Pickled:
    """``fn`` pickled once (by reference where importable); ``SerializationError`` if not."""
    try:
        return Pickled(pickle_dumps(fn))
    except Exception as exc:
        raise SerializationError(f"cannot pickle the function {fn!r}: {exc}") from exc


async def scatter_value(session: Session, value: Any, key: str | None = None) -> Future[Any]:
    """Store ``value`` in the cluster as a finished future (a data future).

    Tasks given the future as an argument receive ``value``.  Like
    ``submit``, it does not wait for the scheduler; a refusal (a key in use)
    is raised by awaiting the future.
    """
    if key is None:
        key = f"data-{uuid.uuid4().hex}"
    if key in session.futures:
        raise ValueError(f"this client has a task with key {key!r} already")
    data = session.serializer.dumps_item(value)
    await trio.lowlevel.checkpoint_if_cancelled()
    future = Future(session, key)
    future.status = "finished"
    session.send_request(Scatter(key, data), late=future._on_submitted)
    session.futures[key] = future
    await trio.lowlevel.cancel_shielded_checkpoint()
    return future


async def map_tasks(
    session: Session, fn: Callable[..., Any], *iterables: Iterable[Any], **options: Any
) -> list[Future[Any]]:
    """One task per item (``zip`` of ``iterables``), in order; see ``Client.map``.

    The function is pickled once for the whole call (its arguments per task).
    """
    pickled = _pickle_function(fn)
    return [
        await submit(session, fn, *args, _pickled_fn=pickled, **options)
        for args in zip(*iterables, strict=False)
    ]


async def gather(futures: Iterable[Future[T]]) -> list[T]:
    """The results of ``futures``, in order (raises the first error met).

    Every read is sent at once and the answers are taken in order, so N
    futures cost one round trip, not N.  A refused submit among them is
    raised as soon as it is known.  If cancelled (or on the first error),
    the reads still waiting are withdrawn; the tasks go on.
    """
    futures = list(futures)
    if not futures:
        await trio.lowlevel.checkpoint()
        return []
    for future in futures:
        if not isinstance(future, Future):
            raise TypeError(f"gather expects futures, got {type(future).__name__}")
    session = futures[0]._session
    if any(future._session is not session for future in futures):
        raise ValueError("gather takes the futures of one client")
    await trio.lowlevel.checkpoint_if_cancelled()
    changed = _Changed()
    reads = []
    for future in futures:
        if future._refused is not None:
            raise future._refused
        request_id = session.send_request(TaskResult(future.key, True), late=changed.answered)
        reads.append((request_id, session.pending[request_id]))
        future._reads.add(request_id)  # a refusal arriving later withdraws it
        future._watchers.add(changed.refused)
    results: list[T] = []
    try:
        while len(results) < len(futures):
            if changed.error is not None:
                raise changed.error
            future, (_, pending) = futures[len(results)], reads[len(results)]
            if pending.op:  # answered
                results.append(future._unpack(session.result(pending, TaskOutcome)))
            else:
                await changed.wait()
    except BaseException:
        for request_id, pending in reads:
            if not pending.op:
                pending.late = _forget
                session.withdraw(request_id)
        raise
    finally:
        for future, (request_id, _) in zip(futures, reads, strict=False):
            future._reads.discard(request_id)
            future._watchers.discard(changed.refused)
    return results


class _Changed:
    """Wakes a ``gather`` when one of its reads is answered or a submit refused."""

    def __init__(self) -> None:
        self._event = trio.Event()
        self.error: BaseException | None = None  # a refused submit among the futures

    def refused(self, error: BaseException) -> None:
        if self.error is None:
            self.error = error
        self._event.set()

    def answered(self, pending: Pending) -> None:
        if not pending.op:  # the connection broke: make the answer an error
            pending.op = -1
        self._event.set()

    async def wait(self) -> None:
        await self._event.wait()
        self._event = trio.Event()


def _forget(pending: Pending) -> None:
    """The answer to a withdrawn read: nobody wants it."""


async def as_completed(futures: Iterable[Future[T]]) -> AsyncIterator[Future[T]]:
    """Yield ``futures`` as they end, fastest first (all from one client).

    It follows the scheduler's "finished" notices, so it starts no tasks of
    its own and can be left early without leaking anything.
    """
    remaining = list(futures)
    while remaining:
        session = remaining[0]._session
        session.check_usable()  # a broken connection ends the wait (BrokenResourceError)
        change = session.task_change  # taken before looking: no lost wake-up
        ready = [future for future in remaining if future.done()]
        if not ready:
            await change.wait()
            continue
        for future in ready:
            remaining.remove(future)
            yield future
