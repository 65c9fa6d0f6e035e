"""What the scheduler's sans-IO state tells its shell to send, and how it refuses.

Rules: every state module (queues, variables, channels, tasks) answers a
request by appending instructions to an ``Out`` list: ``Reply`` (the
answer), ``Fail`` (an error of a ``kind`` the client maps to an exception)
or ``Notice`` (an unsolicited message).  A request it refuses raises
``StateError`` before changing anything.
"""

from __future__ import annotations

from dataclasses import dataclass

from ._messages import Message

__all__ = ["Reply", "Fail", "Notice", "Out", "StateError"]


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
