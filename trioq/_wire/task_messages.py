"""Typed messages of the tasks layer: submitting, running and awaiting tasks.

Rules: as in ``_messages`` (one frozen class per message, fields checked
on decoding).  Task payloads (the pickled function and arguments) and
results are opaque ``bytes`` to the scheduler, made and read by clients
and workers only.
"""

from __future__ import annotations

import dataclasses

from .messages import Message, Op, _message, _notice, _request

__all__ = [
    "WorkerHello",
    "WorkerReady",
    "TaskAssign",
    "TaskAbort",
    "TaskDone",
    "Submit",
    "Scatter",
    "TaskResult",
    "TaskOutcome",
    "TaskCancel",
    "TaskRelease",
    "TaskFinished",
    "TaskWatch",
    "Heartbeat",
]


@_request
@dataclasses.dataclass(frozen=True, slots=True)
class WorkerHello(Message):
    """This connection is a worker with ``slots`` concurrent tasks and these series."""

    OP = Op.WORKER_HELLO
    name: str
    slots: int
    series: list[str]


@_request
@dataclasses.dataclass(frozen=True, slots=True)
class WorkerReady(Message):
    """One-way: the worker asks for ``count`` more tasks (pull dispatch)."""

    OP = Op.WORKER_READY
    count: int


@_notice
@dataclasses.dataclass(frozen=True, slots=True)
class TaskAssign(Message):
    """Unsolicited, to a worker: run this task (``payload`` from the submitter).

    ``deps`` are the tasks whose futures the payload holds, ``dep_data``
    their results: the worker passes the results in place of the futures.
    """

    OP = Op.TASK_ASSIGN
    key: str
    payload: bytes
    deps: list[str] = dataclasses.field(default_factory=list)
    dep_data: list[bytes] = dataclasses.field(default_factory=list)


@_notice
@dataclasses.dataclass(frozen=True, slots=True)
class TaskAbort(Message):
    """Unsolicited, to a worker: stop task ``key`` if it can; its result is unwanted."""

    OP = Op.TASK_ABORT
    key: str


@_request
@dataclasses.dataclass(frozen=True, slots=True)
class TaskDone(Message):
    """One-way, from a worker: ``key`` finished; ``data`` is its result or error.

    ``ready``: and send this many more tasks (the slot it freed), as a
    ``WorkerReady`` would; one message instead of two per task.
    """

    OP = Op.TASK_DONE
    key: str
    ok: bool
    data: bytes
    ready: int = 0


@_request
@dataclasses.dataclass(frozen=True, slots=True)
class Submit(Message):
    """Queue a task; the submitting connection holds a reference to its result."""

    OP = Op.SUBMIT
    key: str
    payload: bytes
    priority: int
    series: str | None
    retries: int


@_request
@dataclasses.dataclass(frozen=True, slots=True)
class Scatter(Message):
    """Store ``data`` as the result of a finished task ``key`` (a data future);
    the connection holds it, as it would a task it submitted."""

    OP = Op.SCATTER
    key: str
    data: bytes


@_request
@dataclasses.dataclass(frozen=True, slots=True)
class TaskResult(Message):
    """The outcome of ``key``; park until it is finished if ``wait``."""

    OP = Op.TASK_RESULT
    key: str
    wait: bool

    def may_park(self) -> bool:
        return self.wait


@_message
@dataclasses.dataclass(frozen=True, slots=True)
class TaskOutcome(Message):
    """Reply to ``TaskResult``: ``status`` "finished" (``data``: the result), or
    "error" (``data``: the error, as the worker serialized it), or "cancelled"
    or "lost" (``data``: a message)."""

    status: str
    data: bytes


@_request
@dataclasses.dataclass(frozen=True, slots=True)
class TaskCancel(Message):
    """Cancel ``key``: dropped if pending, aborted on its worker if running."""

    OP = Op.TASK_CANCEL
    key: str


@_request
@dataclasses.dataclass(frozen=True, slots=True)
class TaskRelease(Message):
    """One-way: this connection no longer needs the result of ``key``."""

    OP = Op.TASK_RELEASE
    key: str


@_request
@dataclasses.dataclass(frozen=True, slots=True)
class TaskWatch(Message):
    """One-way: this connection holds ``key`` now (it read a future of it from
    a queue, a variable or a task) and wants its ``TaskFinished``, at once if
    it has ended."""

    OP = Op.TASK_WATCH
    key: str


@_notice
@dataclasses.dataclass(frozen=True, slots=True)
class TaskFinished(Message):
    """Unsolicited, to connections holding ``key``: it ended with ``status``."""

    OP = Op.TASK_FINISHED
    key: str
    status: str


@_request
@dataclasses.dataclass(frozen=True, slots=True)
class Heartbeat(Message):
    """One-way, from a worker: still alive (sent every few seconds)."""

    OP = Op.HEARTBEAT
