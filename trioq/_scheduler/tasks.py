"""Tasks and workers in the scheduler (sans-IO): submit, dispatch, finish, lose.

Rules:

* Every dispatch decision is the core ``PriorityScheduler``'s (pull policy
  by default: a worker gets a task only after asking with ``WorkerReady``;
  or push, with a prefetch window), so tasks start by priority, then
  submission order, and a task with a series runs only on a worker
  qualified for it.
* A task's payload and result are opaque bytes: the scheduler stores and
  forwards them and never unpickles.
* A worker that goes away hands its running tasks back; each is queued
  again in its original place.  A task whose workers died ``MAX_DEATHS``
  times ends as "lost" instead of killing more workers.  A task's own
  exception is retried only while its ``retries`` last.
* A task whose payload refers to other tasks' futures (read from its
  reference envelope) depends on them: it waits outside the core until they
  have all finished, then is dispatched with their results; if one ends
  otherwise (error, cancelled, lost), the task ends the same way without
  running.  Its dependencies are kept alive until it ends.
* ``Scatter`` stores data as a task that finished at once (a data future).
* A task still to run that loses its last reference from the cluster's
  state (an item, a value, a dependent) while no client holds it is
  cancelled: nobody could read its result (``settle``).  A client letting
  go never cancels: a submitted task runs even if its submitter leaves.
* A finished task's outcome is kept while something holds it: a
  connection (the submitter, or one that read a future of it, until it
  releases the task or goes away) or a stored item or value that refers to
  it (``add_refs``/``drop_refs``, counted).  Parked ``TaskResult`` readers
  are answered exactly once.
* A connection handed an item or value referring to a task that has ended
  is told how it ended (``TaskFinished``) ahead of the answer carrying it,
  so the future it reads knows its status at once (``hand_item``; ``settle``
  puts those notices first in ``out``).

Complexity: O(log n) per task through the core; O(tasks) per disconnect.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

from .._impl import core
from .._wire.messages import Message, Ok
from .._wire.serialize import references_of
from .._wire.task_messages import (
    Heartbeat,
    Scatter,
    Submit,
    TaskAbort,
    TaskAssign,
    TaskCancel,
    TaskDone,
    TaskFinished,
    TaskOutcome,
    TaskRelease,
    TaskResult,
    TaskWatch,
    WorkerHello,
    WorkerReady,
)
from .instructions import Notice, Out, Reply, StateError, UnknownKey

__all__ = ["TaskBoard", "MAX_DEATHS", "FINAL"]

MAX_DEATHS = 3
FINAL = frozenset({"finished", "error", "cancelled", "lost"})


_ENVELOPE_START = b"\xc9"  # the first byte of a reference envelope (and of big ext values)


@contextlib.contextmanager
def _refusing_bad_values() -> Iterator[None]:
    """The core's argument errors (a count out of range, say) refuse the request."""
    try:
        yield
    except (TypeError, ValueError) as exc:
        raise StateError("ValueError", str(exc)) from None


@dataclass(slots=True)
class _Task:
    key: str
    payload: bytes
    priority: int
    series: str | None
    retries: int
    status: str = "pending"  # pending, running, or one of FINAL
    data: bytes = b""
    deaths: int = 0
    holders: set[int] = field(default_factory=set)
    refs: int = 0  # stored items, values and waiting tasks referring to it
    deps: list[str] = field(default_factory=list)  # tasks it refers to (kept alive)
    waiting: int = 0  # dependencies not finished yet: not in the core meanwhile
    readers: dict[tuple[int, int], None] = field(default_factory=dict)


class TaskBoard:
    """The scheduler's tasks and workers.  ``SchedulerState`` feeds it requests."""

    MESSAGES: ClassVar[tuple[type[Message], ...]] = (
        WorkerHello,
        WorkerReady,
        TaskDone,
        Submit,
        Scatter,
        TaskResult,
        TaskCancel,
        TaskRelease,
        TaskWatch,
        Heartbeat,
    )

    def __init__(
        self,
        dispatch: str = "pull",
        prefetch: int = 1,
        answered: Callable[[int, int], None] = lambda conn, rid: None,
    ) -> None:
        #: "pull": a worker gets a task only when it asks, up to its free slots
        #: (load-balanced).  "push": tasks are dealt round-robin up to
        #: ``slots + prefetch`` per worker, ahead of asking (less waiting, may
        #: be uneven).  Either way the core scheduler decides.
        self.dispatch = dispatch
        self._core = core.PriorityScheduler(policy=dispatch, prefetch=prefetch)
        self._answered = answered  # a parked TaskResult was answered: it waits no more
        self._tasks: dict[str, _Task] = {}
        self._dependents: dict[str, list[_Task]] = {}  # key -> tasks waiting for it
        self._orphans: list[_Task] = []  # unfinished tasks that lost their last holder
        self._workers: dict[int, str] = {}  # conn -> worker name
        self._slots: dict[int, int] = {}  # conn -> tasks that worker runs at once
        #: Worker name -> times a worker of that name registered (a restarted
        #: or reconnected worker registers again under its name).
        self._joins: dict[str, int] = {}
        self._told: dict[tuple[int, str], str] = {}  # (conn, key) -> status, for settle

    # -- requests --------------------------------------------------------------

    def handle(self, conn: int, rid: int, message: Message, out: Out) -> str | None:
        """Apply a task request; returns a key if the request parked waiting for it."""
        if isinstance(message, Submit):
            self._submit(conn, message, out)
            out.append(Reply(conn, rid, Ok()))
        elif isinstance(message, Scatter):
            self._scatter(conn, message)
            out.append(Reply(conn, rid, Ok()))
        elif isinstance(message, TaskResult):
            return self._result(conn, rid, message, out)
        elif isinstance(message, TaskDone):
            self._done(conn, message, out)
            if message.ready:
                with _refusing_bad_values():
                    self._core.request_work(conn, message.ready)
        elif isinstance(message, WorkerReady):
            self._worker(conn)
            with _refusing_bad_values():
                self._core.request_work(conn, message.count)
        elif isinstance(message, WorkerHello):
            if conn in self._workers:
                raise StateError("ProtocolError", "this connection is a worker already")
            with _refusing_bad_values():
                self._core.add_worker(conn, message.slots, message.series)
            self._workers[conn] = message.name
            self._slots[conn] = message.slots
            self._joins[message.name] = self._joins.get(message.name, 0) + 1
            out.append(Reply(conn, rid, Ok()))
        elif isinstance(message, TaskCancel):
            self._cancel(message.key, out)
            out.append(Reply(conn, rid, Ok()))
        elif isinstance(message, Heartbeat):
            self._worker(conn)  # the shell notes when each connection was last heard
        elif isinstance(message, TaskRelease):
            task = self._tasks.get(message.key)
            if task is not None:
                task.holders.discard(conn)
                self._forget_if_unheld(task)
        elif isinstance(message, TaskWatch):
            self.hold(conn, [message.key])
            task = self._tasks.get(message.key)
            if task is not None and task.status in FINAL:
                out.append(Notice(conn, TaskFinished(task.key, task.status)))
        self._dispatch(out)
        return None

    def _submit(self, conn: int, msg: Submit, out: Out) -> None:
        if msg.key in self._tasks:
            raise StateError("ValueError", f"a task with key {msg.key!r} exists already")
        if msg.retries < 0:
            raise StateError("ValueError", f"retries must be >= 0, got {msg.retries}")
        deps = self._references(msg.payload)
        with _refusing_bad_values():
            self._core.add_task(msg.key, msg.priority, msg.series)  # checks the arguments
        task = _Task(msg.key, msg.payload, msg.priority, msg.series, msg.retries, deps=deps)
        task.holders.add(conn)
        self._tasks[msg.key] = task
        self.add_refs(deps)
        failed = None
        for key in deps:
            dep = self._tasks[key]
            if dep.status not in FINAL:
                task.waiting += 1
                self._dependents.setdefault(key, []).append(task)
            elif dep.status != "finished" and failed is None:
                failed = dep
        if task.waiting or failed is not None:
            # It was added above only to have its arguments checked before any
            # change; it waits (or fails) outside the core.
            self._core.cancel_task(task.key)
        if failed is not None:
            self._finish(task, failed.status, failed.data, out)

    def _scatter(self, conn: int, msg: Scatter) -> None:
        if msg.key in self._tasks:
            raise StateError("ValueError", f"a task with key {msg.key!r} exists already")
        deps = self._references(msg.data)
        task = _Task(msg.key, b"", 0, None, 0, status="finished", data=msg.data, deps=deps)
        task.holders.add(conn)
        self._tasks[msg.key] = task
        self.add_refs(deps)

    def _references(self, data: bytes) -> list[str]:
        """The tasks a payload refers to; each must be known."""
        try:
            keys = references_of(data) or []
        except ValueError as exc:
            raise StateError("ValueError", str(exc)) from None
        for key in keys:
            if key not in self._tasks:
                raise UnknownKey(key)
        return keys

    def _result(self, conn: int, rid: int, msg: TaskResult, out: Out) -> str | None:
        task = self._task(msg.key)
        if task.status in FINAL:
            out.append(Reply(conn, rid, TaskOutcome(task.status, task.data)))
            return None
        if not msg.wait:
            raise StateError("WouldBlock", f"task {msg.key!r} has not finished")
        task.readers[(conn, rid)] = None
        return task.key

    def _done(self, conn: int, msg: TaskDone, out: Out) -> None:
        self._worker(conn)
        task = self._tasks.get(msg.key)
        if task is None or msg.key not in self._core or self._core.task_worker(msg.key) != conn:
            return  # cancelled or handed elsewhere meanwhile: this result is unwanted
        self._core.task_done(msg.key)
        if not msg.ok and task.retries > 0:
            task.retries -= 1
            task.status = "pending"
            self._core.add_task(task.key, task.priority, task.series)
            return
        self._finish(task, "finished" if msg.ok else "error", msg.data, out)

    def _cancel(self, key: str, out: Out) -> None:
        task = self._tasks.get(key)
        if task is None:  # not worth a barrier (see ``barriers``): nothing waits on it
            raise StateError("LookupError", f"no task {key!r} (never submitted, or released)")
        if task.status in FINAL:
            return
        worker = None if task.waiting else self._core.cancel_task(key)
        if worker is not None:
            out.append(Notice(worker, TaskAbort(key)))
        self._finish(task, "cancelled", f"task {key!r} was cancelled".encode(), out)

    # -- references from stored items ------------------------------------------------

    def add_refs(self, keys: list[str]) -> None:
        """An item or value referring to ``keys`` (known tasks) is stored: keep them."""
        for key in keys:
            self._tasks[key].refs += 1

    def drop_refs(self, keys: list[str]) -> None:
        """A stored item or value referring to ``keys`` is gone."""
        for key in keys:
            task = self._tasks[key]  # kept while referred to (see check_items)
            task.refs -= 1
            self._forget_if_unheld(task, orphan=True)

    def check_items(self, items: list[bytes]) -> None:
        """Refuse items whose reference envelope is malformed or names a task
        that does not exist (any more): every reference stored is counted on
        the task it names, so dropping it later cannot touch another task."""
        for item in items:
            if item[:1] == _ENVELOPE_START:
                try:
                    keys = references_of(item)
                except ValueError as exc:
                    raise StateError("ValueError", str(exc)) from None
                for key in keys or ():
                    if key not in self._tasks:
                        raise UnknownKey(key)

    def keep_item(self, item: bytes) -> None:
        """An item or value is stored: keep the tasks it refers to."""
        if item[:1] == _ENVELOPE_START:  # cheap test first: most items hold none
            keys = references_of(item)
            if keys:
                self.add_refs(keys)

    def release_item(self, item: bytes) -> None:
        """A stored item or value is gone (consumed, trimmed, overwritten, deleted)."""
        if item[:1] == _ENVELOPE_START:
            keys = references_of(item)
            if keys:
                self.drop_refs(keys)

    def hand_item(self, conn: int, item: bytes) -> None:
        """An item or value is handed to ``conn``: it holds the tasks it refers to.

        Of those that have ended, ``conn`` is told how (by ``settle``, first).
        """
        if item[:1] == _ENVELOPE_START:
            keys = references_of(item)
            if keys:
                self.hold(conn, keys)
                for key in keys:
                    task = self._tasks.get(key)
                    if task is not None and task.status in FINAL:
                        self._told[(conn, key)] = task.status

    def hold(self, conn: int, keys: list[str]) -> None:
        """``conn`` was handed references to ``keys``: it holds them now."""
        for key in keys:
            task = self._tasks.get(key)
            if task is not None:
                task.holders.add(conn)

    # -- connections -------------------------------------------------------------

    def unwait(self, conn: int, rid: int, key: str) -> None:
        """A parked ``TaskResult`` was withdrawn (or its connection went)."""
        task = self._tasks.get(key)
        if task is not None:
            task.readers.pop((conn, rid), None)

    def workers(self) -> list[int]:
        """Connections that are workers."""
        return list(self._workers)

    def is_reader(self, conn: int, rid: int, key: str) -> bool:
        """Is request ``rid`` of ``conn`` waiting for the outcome of ``key``?"""
        task = self._tasks.get(key)
        return task is not None and (conn, rid) in task.readers

    def disconnect(self, conn: int, out: Out) -> None:
        """Forget a connection: a worker's running tasks go back to the queue."""
        if conn in self._workers:
            del self._workers[conn]
            del self._slots[conn]
            for key in self._core.remove_worker(conn, requeue=True):
                task = self._tasks[key]
                task.deaths += 1
                task.status = "pending"
                if task.deaths >= MAX_DEATHS:
                    self._core.cancel_task(key)
                    text = f"task {key!r} was running on {task.deaths} workers that died"
                    self._finish(task, "lost", text.encode(), out)
        for task in list(self._tasks.values()):
            if conn in task.holders:
                task.holders.discard(conn)
                self._forget_if_unheld(task)
        self._dispatch(out)

    # -- mechanics ------------------------------------------------------------------

    def _task(self, key: str) -> _Task:
        task = self._tasks.get(key)
        if task is None:
            raise UnknownKey(key)
        return task

    def _worker(self, conn: int) -> None:
        if conn not in self._workers:
            raise StateError("ProtocolError", "only a worker (after WorkerHello) may do this")

    def _dispatch(self, out: Out) -> None:
        for key, worker in self._core.assignments():
            task = self._tasks[key]
            task.status = "running"
            dep_data = [self._tasks[dep].data for dep in task.deps]
            out.append(Notice(worker, TaskAssign(key, task.payload, task.deps, dep_data)))

    def _finish(self, task: _Task, status: str, data: bytes, out: Out) -> None:
        task.status = status
        task.data = data
        task.payload = b""  # not needed any more
        task.waiting = 0
        for conn, rid in task.readers:
            out.append(Reply(conn, rid, TaskOutcome(status, data)))
            self._answered(conn, rid)
        task.readers.clear()
        for conn in task.holders:
            out.append(Notice(conn, TaskFinished(task.key, status)))
        for dependent in self._dependents.pop(task.key, ()):
            self._dependency_ended(dependent, task, out)
        deps, task.deps = task.deps, []
        self.drop_refs(deps)
        self._forget_if_unheld(task)

    def _dependency_ended(self, task: _Task, dep: _Task, out: Out) -> None:
        if task.status in FINAL:
            return  # cancelled, or failed through another dependency
        if dep.status != "finished":
            self._finish(task, dep.status, dep.data, out)
            return
        task.waiting -= 1
        if not task.waiting:
            self._core.add_task(task.key, task.priority, task.series)

    def _forget_if_unheld(self, task: _Task, orphan: bool = False) -> None:
        """Forget an ended task nothing holds.

        ``orphan``: its last reference from the cluster's state went (an item,
        a value, a dependent task); if it has not ended and no client holds
        it, nobody can ever read its result, so ``settle`` cancels it.  A
        client letting go (release, disconnect) never cancels: a submitted
        task runs even if its submitter leaves (fire and forget).
        """
        if task.holders or task.refs or task.readers or self._tasks.get(task.key) is not task:
            return  # wanted, or forgotten already (a nested finish)
        if task.status in FINAL:
            del self._tasks[task.key]
            deps, task.deps = task.deps, []  # a scattered value's references
            self.drop_refs(deps)
        elif orphan:
            self._orphans.append(task)

    def settle(self, out: Out) -> None:
        """Cancel the tasks nobody holds any more: nobody can read their results.

        Called after every request (a release, an acknowledged item, a
        disconnect may orphan a task); cancelling an orphan frees what it
        depended on, which may orphan more, until none is left.  First, it
        puts at the head of ``out`` a ``TaskFinished`` for each ended task a
        connection was handed a reference to: ahead of the answer carrying it.
        """
        if self._told:
            told, self._told = self._told, {}
            out[:0] = [
                Notice(conn, TaskFinished(key, status)) for (conn, key), status in told.items()
            ]
        while self._orphans:
            task = self._orphans.pop()
            wanted = task.holders or task.refs or task.readers
            if self._tasks.get(task.key) is task and task.status not in FINAL and not wanted:
                self._cancel(task.key, out)

    # -- introspection ----------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        counts: dict[str, int] = {}
        for task in self._tasks.values():
            counts[task.status] = counts.get(task.status, 0) + 1
        return {
            "tasks": counts,
            "workers": [
                {
                    "id": conn,
                    "name": name,
                    "slots": self._slots[conn],
                    "running": len(self._core.worker_tasks(conn)),
                    "restarts": self._joins.get(name, 1) - 1,
                }
                for conn, name in self._workers.items()
            ],
        }

    def validate(self) -> None:
        self._core.validate()
        assert set(self._slots) == set(self._workers), "slots of an unknown worker"
        assert not self._orphans, "orphaned tasks were not settled"
        assert not self._told, "task ends to tell were not sent"
        for key, task in self._tasks.items():
            if task.status in FINAL:
                assert key not in self._core, "a finished task is still scheduled"
                assert not task.readers, "a finished task has readers waiting"
            elif task.waiting:
                assert key not in self._core, "a task waiting for dependencies is scheduled"
                unfinished = [dep for dep in task.deps if self._tasks[dep].status not in FINAL]
                assert len(unfinished) == task.waiting, "dependency count is off"
            else:
                assert key in self._core, "an unfinished task is not scheduled"
                running = self._core.task_state(key) == "assigned"
                assert running == (task.status == "running"), "task status and core disagree"
