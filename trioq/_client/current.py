"""The client of the task running now: ``worker_client()`` and its context variable.

A worker sets it for each task it runs (and the task's threads inherit
it), so code inside a task reaches the cluster through the worker's own
connection.  It belongs to the client side: a pipe end or a TaskQueue
child finds its client here without importing the worker.
"""

from __future__ import annotations

import contextvars
from typing import TYPE_CHECKING

from .session import Session, session_of

if TYPE_CHECKING:
    from .client import Client

__all__ = ["worker_client", "current_session", "task_client"]

#: Set by a worker for each task it runs (see ``_worker.worker``).
task_client: contextvars.ContextVar[Client] = contextvars.ContextVar("trioq_worker_client")


def worker_client() -> Client:
    """The connection of the worker running the current task.

    A task uses it to reach the cluster (queues, variables, more tasks)
    without a connection of its own.  A task running in a worker thread
    must go through trio for it: ``trio.from_thread.run_sync`` to make a
    handle (``client.queue(...)``), ``trio.from_thread.run`` to await.  Raises
    ``RuntimeError`` outside a task.
    """
    try:
        return task_client.get()
    except LookupError:
        raise RuntimeError("worker_client() is only available inside a task") from None


def current_session() -> Session | None:
    """The session of the trioq task running now, or None outside one."""
    client = task_client.get(None)
    return None if client is None else session_of(client)
