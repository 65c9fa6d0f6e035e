"""Replayable channels in the scheduler (sans-IO): append, read from any point, stop, delete.

Rules:

* A channel is an append-only sequence of opaque elements, numbered from 0
  in the order the scheduler applied the appends; every reader sees the
  same numbers, so every subscriber in every process sees the same order.
* ``maxlen`` keeps only the newest elements, like a ``deque``: a reader
  that asks for a trimmed number continues from the oldest one retained.
* A read of numbers not appended yet parks until an append or the stop; a
  stop answers every parked read with "stopped", and later reads end once
  they reach the last element.
* Elements that refer to futures keep those tasks alive while retained
  (trimming releases them); the connection an element is handed to holds
  them from then on (see ``TaskBoard.keep_item``).
* Deleting a channel forgets it and its elements (releasing their futures)
  and fails its parked reads with "BrokenResourceError"; deleting one that
  does not exist is no error.  A request on a name the board does not hold
  (deleted, or never opened) fails with "BrokenResourceError" too, as a
  deleted queue's do; a ``ChannelOpen`` creates the name afresh, numbered
  from 0 again.

Complexity: O(1) per element appended, trimmed or read (the retained
elements sit in a list with a moving head, compacted now and then).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from .._wire.channel_messages import (
    ChannelAppend,
    ChannelAppended,
    ChannelDelete,
    ChannelInfo,
    ChannelItems,
    ChannelOpen,
    ChannelRead,
    ChannelStop,
)
from .._wire.messages import ITEM_OVERHEAD, Message, Ok
from .instructions import Fail, Out, Reply, StateError, check_sizes
from .tasks import TaskBoard

__all__ = ["ChannelBoard"]

_COMPACT_AT = 1024  # trimmed slots at the head before the list is compacted


@dataclass(slots=True)
class _Channel:
    name: str
    maxlen: int  # 0: unbounded
    elements: list[bytes] = field(default_factory=list)
    head: int = 0  # index in ``elements`` of the oldest retained element
    first: int = 0  # the number of that element
    stopped: bool = False
    readers: dict[tuple[int, int], tuple[int, int]] = field(default_factory=dict)

    @property
    def end(self) -> int:
        """The number the next append gets."""
        return self.first + len(self.elements) - self.head

    def __len__(self) -> int:
        return len(self.elements) - self.head


class ChannelBoard:
    """The scheduler's channels.  ``SchedulerState`` feeds it requests."""

    MESSAGES: ClassVar[tuple[type[Message], ...]] = (
        ChannelOpen,
        ChannelAppend,
        ChannelRead,
        ChannelStop,
        ChannelDelete,
    )

    def __init__(
        self,
        tasks: TaskBoard,
        max_item_bytes: int,
        answered: Callable[[int, int], None] = lambda conn, rid: None,
    ) -> None:
        self._tasks = tasks  # keeps the futures elements refer to
        self._max_item_bytes = max_item_bytes
        self._answered = answered  # a parked read was answered: it waits no more
        self._channels: dict[str, _Channel] = {}

    def handle(self, conn: int, rid: int, message: Message, out: Out) -> str | None:
        """Apply a request; returns the channel's name if the request parked."""
        if isinstance(message, ChannelOpen):
            channel = self._open(message)
            info = ChannelInfo(channel.maxlen, channel.stopped, len(channel))
            out.append(Reply(conn, rid, info))
        elif isinstance(message, ChannelAppend):
            channel = self._channel(message.channel)
            self._append(channel, message.items, out)
            out.append(Reply(conn, rid, ChannelAppended(len(channel), channel.end)))
        elif isinstance(message, ChannelRead):
            return self._read(conn, rid, message, out)
        elif isinstance(message, ChannelStop):
            channel = self._channel(message.channel)
            channel.stopped = True
            self._serve(channel, out)
            out.append(Reply(conn, rid, Ok()))
        elif isinstance(message, ChannelDelete):
            self._delete(message.channel, out)
            out.append(Reply(conn, rid, Ok()))
        return None

    def unwait(self, conn: int, rid: int, name: str) -> None:
        """A parked read was withdrawn (or its connection went)."""
        channel = self._channels.get(name)
        if channel is not None:
            channel.readers.pop((conn, rid), None)

    def is_reader(self, conn: int, rid: int, name: str) -> bool:
        channel = self._channels.get(name)
        return channel is not None and (conn, rid) in channel.readers

    # -- requests --------------------------------------------------------------

    def _open(self, msg: ChannelOpen) -> _Channel:
        if msg.maxlen < 0:
            raise StateError("ValueError", f"maxlen must be >= 1 or None, got {msg.maxlen}")
        channel = self._channels.get(msg.channel)
        if channel is None:
            channel = self._channels[msg.channel] = _Channel(msg.channel, msg.maxlen)
        elif msg.maxlen and msg.maxlen != channel.maxlen:
            bound = channel.maxlen or "None"
            raise StateError(
                "ValueError",
                f"channel {msg.channel!r} exists with maxlen {bound}, not {msg.maxlen}",
            )
        return channel

    def _channel(self, name: str) -> _Channel:
        channel = self._channels.get(name)
        if channel is None:
            raise StateError(
                "BrokenResourceError", f"channel {name!r} does not exist (it was deleted)"
            )
        return channel

    def _append(self, channel: _Channel, items: list[bytes], out: Out) -> None:
        if channel.stopped:
            raise StateError("ClosedResourceError", f"channel {channel.name!r} was stopped")
        check_sizes("an element", items, self._max_item_bytes)
        self._tasks.check_items(items)
        channel.elements.extend(items)
        for item in items:
            self._tasks.keep_item(item)
        if channel.maxlen and len(channel) > channel.maxlen:
            self._trim(channel, len(channel) - channel.maxlen)
        self._serve(channel, out)

    def _delete(self, name: str, out: Out) -> None:
        channel = self._channels.pop(name, None)
        if channel is None:
            return  # deleted already (or never opened): nothing to do
        for item in channel.elements[channel.head :]:
            self._tasks.release_item(item)
        text = f"channel {name!r} was deleted"
        for conn, rid in channel.readers:
            self._answered(conn, rid)
            out.append(Fail(conn, rid, "BrokenResourceError", text))
        channel.readers.clear()

    def _trim(self, channel: _Channel, n: int) -> None:
        elements = channel.elements
        for index in range(channel.head, channel.head + n):
            self._tasks.release_item(elements[index])
            elements[index] = b""
        channel.head += n
        channel.first += n
        if channel.head >= _COMPACT_AT and channel.head * 2 >= len(elements):
            del elements[: channel.head]
            channel.head = 0

    def _read(self, conn: int, rid: int, msg: ChannelRead, out: Out) -> str | None:
        if msg.max_items < 1:
            raise StateError("ValueError", f"max_items must be >= 1, got {msg.max_items}")
        if msg.start < 0:
            raise StateError("ValueError", f"start must be >= 0, got {msg.start}")
        channel = self._channel(msg.channel)
        if msg.start < channel.end or channel.stopped:
            self._answer(channel, conn, rid, msg.start, msg.max_items, out)
            return None
        if not msg.wait:
            raise StateError("WouldBlock", f"channel {msg.channel!r} has nothing from {msg.start}")
        channel.readers[(conn, rid)] = (msg.start, msg.max_items)
        return channel.name

    # -- mechanics ---------------------------------------------------------------

    def _answer(
        self, channel: _Channel, conn: int, rid: int, start: int, max_items: int, out: Out
    ) -> None:
        """Reply with what there is from ``start`` (maybe nothing, if stopped)."""
        first = max(start, channel.first)
        index = channel.head + (first - channel.first)
        stop = min(len(channel.elements), index + max_items)
        items: list[bytes] = []
        budget = self._max_item_bytes  # one answer must fit in one frame
        for item in channel.elements[index:stop]:
            budget -= len(item) + ITEM_OVERHEAD
            if items and budget < 0:
                break
            items.append(item)
            self._tasks.hand_item(conn, item)
        stopped = channel.stopped and first + len(items) >= channel.end
        out.append(Reply(conn, rid, ChannelItems(items, first, channel.end, stopped)))

    def _serve(self, channel: _Channel, out: Out) -> None:
        """Answer the parked reads that can be answered now."""
        for (conn, rid), (start, max_items) in list(channel.readers.items()):
            if start < channel.end or channel.stopped:
                del channel.readers[(conn, rid)]
                self._answered(conn, rid)
                self._answer(channel, conn, rid, start, max_items, out)

    # -- introspection ----------------------------------------------------------------

    def status(self) -> list[dict[str, Any]]:
        return [
            {
                "name": channel.name,
                "length": len(channel),
                "appended": channel.end,
                "maxlen": channel.maxlen,
                "readers": len(channel.readers),
                "stopped": channel.stopped,
            }
            for channel in sorted(self._channels.values(), key=lambda c: c.name)
        ]

    def validate(self) -> None:
        for channel in self._channels.values():
            assert 0 <= channel.head <= len(channel.elements)
            if channel.maxlen:
                assert len(channel) <= channel.maxlen, "a channel keeps more than maxlen"
            for start, _ in channel.readers.values():
                assert start >= channel.end and not channel.stopped, "a servable read is parked"
