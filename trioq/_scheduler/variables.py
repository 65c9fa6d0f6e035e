"""Named variables in the scheduler (sans-IO): set, get (waiting until set), delete.

Rules: a value is opaque bytes; a set answers every read parked waiting
for the variable.  A value that refers to futures keeps their tasks alive
until it is overwritten or deleted; a reader holds them from then on (see
``TaskBoard.keep_item``).

Complexity: O(1) per request, plus O(waiters) for a set that wakes them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

from .._wire.messages import Message, Ok, Value, VariableDelete, VariableGet, VariableSet
from .instructions import Out, Reply, StateError, check_sizes
from .tasks import TaskBoard

__all__ = ["VariableBoard"]


class VariableBoard:
    """The scheduler's variables.  ``SchedulerState`` feeds it requests."""

    MESSAGES: ClassVar[tuple[type[Message], ...]] = (VariableSet, VariableGet, VariableDelete)

    def __init__(
        self,
        tasks: TaskBoard,
        max_item_bytes: int,
        answered: Callable[[int, int], None] = lambda conn, rid: None,
    ) -> None:
        self._tasks = tasks  # keeps the futures values refer to
        self._max_item_bytes = max_item_bytes
        self._answered = answered  # a parked read was answered: it waits no more
        self._values: dict[str, bytes] = {}
        self._waiters: dict[str, dict[tuple[int, int], None]] = {}

    def handle(self, conn: int, rid: int, message: Message, out: Out) -> str | None:
        """Apply a request; returns the variable's name if the request parked."""
        if isinstance(message, VariableSet):
            self._set(conn, rid, message, out)
        elif isinstance(message, VariableGet):
            return self._get(conn, rid, message, out)
        elif isinstance(message, VariableDelete):
            old = self._values.pop(message.name, None)
            if old is not None:
                self._tasks.release_item(old)
            out.append(Reply(conn, rid, Ok()))
        return None

    def _set(self, conn: int, rid: int, msg: VariableSet, out: Out) -> None:
        check_sizes("a value", [msg.value], self._max_item_bytes)
        self._tasks.check_items([msg.value])
        old = self._values.get(msg.name)
        self._values[msg.name] = msg.value
        self._tasks.keep_item(msg.value)
        if old is not None:
            self._tasks.release_item(old)
        for owner, request in self._waiters.pop(msg.name, {}):
            self._answered(owner, request)
            self._tasks.hand_item(owner, msg.value)
            out.append(Reply(owner, request, Value(msg.value)))
        out.append(Reply(conn, rid, Ok()))

    def _get(self, conn: int, rid: int, msg: VariableGet, out: Out) -> str | None:
        value = self._values.get(msg.name)
        if value is not None:
            self._tasks.hand_item(conn, value)
            out.append(Reply(conn, rid, Value(value)))
            return None
        if not msg.wait:
            raise StateError("LookupError", f"variable {msg.name!r} is not set")
        self._waiters.setdefault(msg.name, {})[(conn, rid)] = None
        return msg.name

    def unwait(self, conn: int, rid: int, name: str) -> None:
        """A parked read was withdrawn (or its connection went)."""
        waiters = self._waiters.get(name)
        if waiters is not None:
            waiters.pop((conn, rid), None)
            if not waiters:
                del self._waiters[name]

    def is_reader(self, conn: int, rid: int, name: str) -> bool:
        return (conn, rid) in self._waiters.get(name, {})

    def status(self) -> list[str]:
        return sorted(self._values)

    def validate(self) -> None:
        for name, waiters in self._waiters.items():
            assert waiters, "an empty waiter list is kept"
            assert name not in self._values, "a read waits for a variable that is set"
