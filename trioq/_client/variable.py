"""Named variables shared through the scheduler (dask ``Variable`` semantics).

Rules: a variable holds one serialized value; ``get`` waits until one is
set.  A cancelled ``get`` has no effect (its parked read is withdrawn).
Deadlines come from cancel scopes; ``get(timeout=...)`` is a thin
``trio.fail_after`` wrapper kept for dask familiarity.  A handle pickles as
its name and attaches, unpickled, to the client that reads it (see
``current.attaching_session``), as dask's does by name.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import trio

from .._wire.messages import Ok, Value, VariableDelete, VariableGet, VariableSet
from .current import attaching_session, client_of

if TYPE_CHECKING:
    from .client import Client
    from .session import Session

__all__ = ["Variable"]


class Variable:
    """A named value every client can set and read.  Create it with ``client.variable(name)``.

    Raises ``TypeError`` for a name that is not a str.  It pickles (in an
    item, a value, a task's arguments, with ``pickle``) as its name; the
    copy attaches to the client that unpickles it (see ``__reduce__``).
    """

    def __init__(self, session: Session, name: str) -> None:
        if type(name) is not str:
            raise TypeError(f"variable name must be a str, got {type(name).__name__}")
        self._session = session
        self.name = name

    def __repr__(self) -> str:
        return f"<trioq.Variable {self.name!r}>"

    @property
    def client(self) -> Client:
        """The ``trioq.Client`` whose connection this handle uses."""
        return client_of(self._session)

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        """Pickled, a variable is its name.

        Unpickled by a trioq client (read from a queue or variable, as a
        task's argument or result) it attaches to that client; by plain
        ``pickle.loads`` to the client of the trioq task running it; with
        neither, unpickling raises ``RuntimeError``.
        """
        return Variable._unpickle, (self.name,)

    @staticmethod
    def _unpickle(name: str) -> Variable:
        return Variable(attaching_session(f"trioq.Variable {name!r}"), name)

    async def set(self, value: Any) -> None:
        """Set the value; readers waiting for one get it.

        Raises ``SerializationError`` for a value that cannot be serialized,
        ``ValueError`` (or ``LocalProtocolError``, beyond a frame) for one over
        the scheduler's size limit, ``LookupError`` for one holding a released
        future.  If cancelled, it either was set or was not, and the call
        tells (like ``Queue.put``).
        """
        data = self._session.serializer.dumps_item(value)
        await self._session.request(VariableSet(self.name, data), Ok, on_cancel="outcome")

    async def get(self, timeout: float | None = None) -> Any:  # noqa: ASYNC109 (dask's API)
        """The current value, waiting until one is set.

        ``timeout`` (seconds) raises ``trio.TooSlowError`` (naming the variable)
        when it runs out;
        a thin ``trio.fail_after`` kept for dask familiarity: prefer cancel
        scopes.  A cancelled ``get`` (or one that timed out) leaves nothing
        behind: its waiting read is withdrawn.
        """
        if timeout is None:
            return await self._get()
        with trio.move_on_after(timeout) as waited:
            return await self._get()
        assert waited.cancelled_caught
        raise trio.TooSlowError(f"variable {self.name!r} was not set within {timeout} s")

    async def get_nowait(self) -> Any:
        """The current value; raises ``LookupError`` if it is not set.

        Never waits for a value (one round trip); a cancelled call changes nothing.
        """
        reply = await self._session.request(VariableGet(self.name, False), Value)
        return self._session.serializer.loads(reply.value)

    async def _get(self) -> Any:
        reply = await self._session.request(
            VariableGet(self.name, True), Value, on_cancel="withdraw"
        )
        return self._session.serializer.loads(reply.value)

    async def delete(self) -> None:
        """Forget the value (no error if it was not set).

        If cancelled, it may or may not have been forgotten; repeating it is safe.
        """
        await self._session.request(VariableDelete(self.name), Ok)
