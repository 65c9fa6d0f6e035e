"""Typed messages of replayable channels: open, append, read, stop, delete.

Rules: as in ``messages`` (one frozen class per message, fields checked
on decoding).  Elements are opaque ``bytes`` to the scheduler, numbered by
a sequence that starts at 0 for each channel.  The answers to an open and
to an append carry the channel's length then, which is all a client knows
of it without asking (``Channel.__repr__`` shows it).
"""

from __future__ import annotations

import dataclasses

from .messages import Message, Op, _message, _request

__all__ = [
    "ChannelOpen",
    "ChannelInfo",
    "ChannelAppend",
    "ChannelAppended",
    "ChannelRead",
    "ChannelItems",
    "ChannelStop",
    "ChannelDelete",
]


@_request
@dataclasses.dataclass(frozen=True, slots=True)
class ChannelOpen(Message):
    """Create the channel if needed; ``maxlen`` 0 means unbounded (or, for an
    existing channel, whatever it has)."""

    OP = Op.CHANNEL_OPEN
    channel: str
    maxlen: int


@_message
@dataclasses.dataclass(frozen=True, slots=True)
class ChannelInfo(Message):
    """Reply to ``ChannelOpen``: the channel's bound (0: none), state, and the
    number of elements it retains."""

    maxlen: int
    stopped: bool
    length: int


@_request
@dataclasses.dataclass(frozen=True, slots=True)
class ChannelAppend(Message):
    """Append ``items`` in order (trimming the oldest beyond ``maxlen``)."""

    OP = Op.CHANNEL_APPEND
    channel: str
    items: list[bytes]


@_message
@dataclasses.dataclass(frozen=True, slots=True)
class ChannelAppended(Message):
    """Reply to ``ChannelAppend``: the elements retained once it was applied,
    and ``end``, the number the next append gets (so the last of these
    items is ``end - 1``)."""

    length: int
    end: int


@_request
@dataclasses.dataclass(frozen=True, slots=True)
class ChannelRead(Message):
    """Up to ``max_items`` elements from sequence number ``start`` (or from the
    oldest retained one, if ``start`` was trimmed); park until one is
    appended or the channel stops if ``wait``."""

    OP = Op.CHANNEL_READ
    channel: str
    start: int
    max_items: int
    wait: bool

    def may_park(self) -> bool:
        return self.wait


@_message
@dataclasses.dataclass(frozen=True, slots=True)
class ChannelItems(Message):
    """Reply to ``ChannelRead``: ``items`` numbered from ``first``; ``end`` is
    the number the next append will get; ``stopped``: no more will come."""

    items: list[bytes]
    first: int
    end: int
    stopped: bool


@_request
@dataclasses.dataclass(frozen=True, slots=True)
class ChannelStop(Message):
    """No more appends: every reader ends after the last element."""

    OP = Op.CHANNEL_STOP
    channel: str


@_request
@dataclasses.dataclass(frozen=True, slots=True)
class ChannelDelete(Message):
    """Forget the channel and its elements; parked reads fail (idempotent)."""

    OP = Op.CHANNEL_DELETE
    channel: str
