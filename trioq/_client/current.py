"""The client of the code running now: ``worker_client()``, and where unpickled handles attach.

A worker sets ``task_client`` for each task it runs (and the task's
threads inherit it), so code inside a task reaches the cluster through the
worker's own connection.  It belongs to the client side: a pipe end or a
TaskQueue child finds its client here without importing the worker.

``client_of`` maps a session back to its public ``Client`` (a handle's
``.client``): ``client.py`` makes the handles, so they cannot import it, and
every ``Client`` registers itself here instead.

A handle (``Queue``, ``Variable``, a queue endpoint) pickles as names only,
never as a connection.  Unpickled, it attaches to ``attaching_session()``:
the session whose serializer is decoding it (an item read from a queue or
variable, a task's arguments, a result), else the client of the trioq task
running now, else nothing, and unpickling raises ``RuntimeError``.
"""

from __future__ import annotations

import contextvars
import weakref
from typing import TYPE_CHECKING

import trio

from .._wire.serialize import decoding_owner
from .session import Session, session_of

if TYPE_CHECKING:
    from .client import Client

__all__ = [
    "worker_client",
    "current_session",
    "task_client",
    "attaching_session",
    "register_client",
    "client_of",
]

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


def attaching_session(what: str) -> Session:
    """The session a handle being unpickled now attaches to (``what`` names it).

    The session decoding it, else the current task's worker client.  Raises
    ``RuntimeError`` when there is neither (plain ``pickle.loads`` outside a
    trioq task), or outside trio's thread (a handle sends as it is made: a
    worker thread unpickles through ``trio.from_thread.run_sync``).
    """
    owner = decoding_owner()
    session = owner if isinstance(owner, Session) else current_session()
    if session is None:
        raise RuntimeError(
            f"cannot unpickle {what} here: no trioq client to attach it to; read it "
            "through a client (from a queue, a variable, a task's arguments) or "
            "unpickle it inside a trioq task"
        )
    if not trio.lowlevel.in_trio_run():
        raise RuntimeError(
            f"cannot unpickle {what} outside trio's thread: use "
            "trio.from_thread.run_sync(pickle.loads, data)"
        )
    return session


class _Faces:
    """The live public client over each session (by the session's id), and the
    class of those clients, to make a new face over a session whose one went."""

    def __init__(self) -> None:
        self.by_session: weakref.WeakValueDictionary[int, Client] = weakref.WeakValueDictionary()
        self.client_type: type[Client] | None = None


_FACES = _Faces()


def register_client(client: Client, session: Session) -> None:
    """Called by each ``Client`` as it is made over ``session``."""
    _FACES.by_session[id(session)] = client
    _FACES.client_type = type(client)


def client_of(session: Session) -> Client:
    """The public ``trioq.Client`` over ``session``: what a handle's ``.client`` gives.

    The one ``trioq.connect`` made (on a worker's connection, the client
    ``worker_client()`` gives) while it lives, else a new one over the same
    session (a ``Client`` is a thin face: every face of a session is the
    same connection).  Raises ``RuntimeError`` for a connection no client
    was ever made for in this process (a pipe end's own, in ``async with``).
    """
    client = _FACES.by_session.get(id(session))
    if client is not None and session_of(client) is session:
        return client
    if _FACES.client_type is None:
        raise RuntimeError("this connection has no trioq.Client (a pipe end's own connection)")
    return _FACES.client_type(session)  # it registers itself
