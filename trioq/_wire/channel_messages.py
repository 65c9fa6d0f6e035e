"""Typed messages of replayable channels: open, append, read, stop.

Rules: as in ``_messages`` (one frozen class per message, fields checked
on decoding).  Elements are opaque ``bytes`` to the scheduler, numbered by
a sequence that starts at 0 for each channel.
"""

from __future__ import annotations

import dataclasses

from .messages import Message, Op, _message, _request

__all__ = [
    "ChannelOpen",
    "ChannelInfo",
    "ChannelAppend",
    "ChannelRead",
    "ChannelItems",
    "ChannelStop",
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
    """Reply to ``ChannelOpen``: the channel's bound (0: none) and state."""

    maxlen: int
    stopped: bool


@_request
@dataclasses.dataclass(frozen=True, slots=True)
class ChannelAppend(Message):
    """Append ``items`` in order (trimming the oldest beyond ``maxlen``)."""

    OP = Op.CHANNEL_APPEND
    channel: str
    items: list[bytes]


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
