"""trioq's own exceptions, all in one place.

Rules: where trio already has an exception for a condition (``WouldBlock``,
``EndOfChannel``, ``ClosedResourceError``, ``BrokenResourceError``,
``TooSlowError``) trioq raises trio's.  The classes here are only for
conditions trio has no word for.  Protocol errors are split the h11 way:
``LocalProtocolError`` means *we* were asked to do something the protocol
forbids (a bug or misuse on this side); ``RemoteProtocolError`` means the
peer sent bytes that break the protocol.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import trio

__all__ = [
    "TrioqError",
    "ProtocolError",
    "LocalProtocolError",
    "RemoteProtocolError",
    "SerializationError",
    "AuthenticationError",
    "RemoteError",
    "refusal",
    "collapse_single_groups",
    "RemoteTaskError",
    "TaskCancelledError",
    "WorkerLostError",
]


class TrioqError(Exception):
    """Base class of every exception that trioq defines itself."""


class ProtocolError(TrioqError):
    """The wire protocol was broken; the connection cannot go on."""


class LocalProtocolError(ProtocolError):
    """This side tried to send something the protocol does not allow.

    Example: encoding a frame whose payload is larger than the maximum frame
    size.  Nothing was written; the encoder is still usable.
    """


class RemoteProtocolError(ProtocolError):
    """The peer sent bytes that are not a valid frame stream.

    A decoder that raised this is broken for good: every later call raises
    it again, because the byte stream can no longer be re-synchronised.
    """


class SerializationError(TrioqError, TypeError):
    """A value could not be turned into bytes (or back) by trioq's serializer."""


class AuthenticationError(TrioqError):
    """The peer did not prove it holds the cluster's token (or we could not).

    ``refused`` is True when the peer said no (a wrong token, a malformed
    handshake), False when the handshake was cut off or timed out: then
    trying again may succeed (a reconnecting worker does).
    """

    refused = True

    @classmethod
    def cut_off(cls, message: str) -> AuthenticationError:
        """The handshake did not finish: the connection broke or it took too long."""
        error = cls(message)
        error.refused = False
        return error


class RemoteError(TrioqError):
    """The scheduler refused a request for a reason trio has no exception for.

    ``kind`` names what went wrong on the far side; the message says why.
    Refusals that have a Python or trio exception (``ValueError``,
    ``LookupError``, ``trio.WouldBlock``, ...) are raised as that instead.
    """

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind = kind


# The refusals the scheduler names by kind that have an exception of their own.
_REFUSALS: dict[str, type[BaseException]] = {
    "WouldBlock": trio.WouldBlock,
    "EndOfChannel": trio.EndOfChannel,
    "BrokenResourceError": trio.BrokenResourceError,
    "ClosedResourceError": trio.ClosedResourceError,
    "ValueError": ValueError,
    "TypeError": TypeError,
    "LookupError": LookupError,
    "ProtocolError": LocalProtocolError,
}


def refusal(kind: str, message: str) -> BaseException:
    """The exception for a refusal of ``kind`` from the scheduler (``RemoteError``
    for a kind that has none of its own)."""
    cls = _REFUSALS.get(kind)
    return cls(message) if cls is not None else RemoteError(kind, message)


@contextlib.contextmanager
def collapse_single_groups() -> Iterator[None]:
    """Re-raise a group holding one exception as that exception.

    trio wraps whatever leaves a nursery in an ``ExceptionGroup``.  trioq's
    context managers run their background tasks in a nursery that never
    fails by itself, so a group escaping them holds just the caller's own
    exception: unwrap it, so ``except trio.WouldBlock`` and friends work.
    """
    try:
        yield
    except BaseExceptionGroup as group:
        if len(group.exceptions) != 1:
            raise
        inner = group.exceptions[0]
        while isinstance(inner, BaseExceptionGroup) and len(inner.exceptions) == 1:
            inner = inner.exceptions[0]
        raise inner from inner.__cause__


class RemoteTaskError(TrioqError):
    """A task raised an exception that could not be sent back as itself.

    The message names the remote exception's type and text; the remote
    traceback is attached as a note.  (Exceptions that can be pickled are
    re-raised as themselves, with the same note.)
    """


class TaskCancelledError(TrioqError):
    """The task was cancelled before it produced a result.

    Raised by a future whose task was cancelled (``Future.cancel``, or by
    the scheduler once nothing could read its result any more), and by
    ``TaskQueue.call`` when the queue shut down before the call ended.
    """


class WorkerLostError(TrioqError):
    """The task's workers kept dying while running it, so it was given up.

    Raised by a future after its task's workers died under it three times,
    and by ``TaskQueue.call`` when its worker was detached with
    ``crash=True`` or kept dying.
    """
