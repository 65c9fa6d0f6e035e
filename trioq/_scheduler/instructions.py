"""What the scheduler's sans-IO state tells its shell to send, and how it refuses.

Rules: every state module (queues, variables, channels, tasks) answers a
request by appending instructions to an ``Out`` list: ``Reply`` (the
answer), ``Fail`` (an error of a ``kind`` the client maps to an exception)
or ``Notice`` (an unsolicited message).  A request it refuses raises
``StateError`` before changing anything.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Protocol

from .._wire.messages import Message

__all__ = ["Reply", "Fail", "Notice", "Out", "StateError", "UnknownKey", "Board", "check_sizes"]


@dataclass(frozen=True, slots=True)
class Reply:
    """Send ``message`` as the answer to ``request_id`` on ``conn``."""

    conn: int
    request_id: int
    message: Message


@dataclass(frozen=True, slots=True)
class Fail:
    """Answer ``request_id`` on ``conn`` with an error of ``kind``."""

    conn: int
    request_id: int
    kind: str
    text: str


@dataclass(frozen=True, slots=True)
class Notice:
    """Send ``message`` unsolicited (its own op code) on ``conn``."""

    conn: int
    message: Message


Out = list[Reply | Fail | Notice]


class StateError(Exception):
    """A request the state refuses: becomes a ``Fail`` of ``kind``."""

    def __init__(self, kind: str, text: str) -> None:
        super().__init__(text)
        self.kind = kind


class UnknownKey(StateError):
    """A reference to a task the scheduler does not know: never submitted,
    released, or submitted by a connection whose frames are not all in yet."""

    def __init__(self, key: str) -> None:
        super().__init__("LookupError", f"no task {key!r} (never submitted, or released)")


def check_sizes(what: str, items: list[bytes], limit: int) -> None:
    """Refuse items larger than ``limit`` bytes (an answer must fit in a frame)."""
    largest = max(map(len, items), default=0)
    if largest > limit:
        raise StateError(
            "ValueError",
            f"{what} of {largest} bytes is over this scheduler's limit of {limit} bytes",
        )


class Board(Protocol):
    """What ``SchedulerState`` expects of a part of the state it feeds requests to.

    ``TaskBoard``, ``ChannelBoard`` and ``VariableBoard`` are boards: each
    takes the ``MESSAGES`` it owns, answers through ``out``, and returns a
    name when a request parked waiting (the state then tracks it per
    connection, and calls ``unwait`` when it is withdrawn or its connection
    goes).
    """

    MESSAGES: ClassVar[tuple[type[Message], ...]]

    def handle(self, conn: int, rid: int, message: Message, out: Out) -> str | None:
        """Apply a request; the name it parked on, or None."""
        ...

    def unwait(self, conn: int, rid: int, name: str) -> None:
        """A parked request was withdrawn (or its connection went)."""
        ...

    def is_reader(self, conn: int, rid: int, name: str) -> bool:
        """Is request ``rid`` of ``conn`` parked on ``name``?"""
        ...

    def validate(self) -> None:
        """Assert the board's invariants (tests call it after every step)."""
        ...
