"""Statistics in the shape of trio's ``MemoryChannelStatistics``, plus the peak.

trio's memory channels answer ``statistics()`` with the buffer in use, its
bound, the open endpoints and the tasks waiting on each side.  trioq's
channels answer with the same fields (so code written for trio reads them
unchanged) and ``peak_buffer_used``, the most the buffer held at once.  A
queue's figures are the cluster's, so asking them is a round trip:
``await endpoint.statistics()``.  A stage's output channel is local, so its
``statistics()`` is a plain call, as in trio.
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING

from .._wire.flow_messages import QueueStatistics as QueueFigures
from .._wire.flow_messages import QueueStats

if TYPE_CHECKING:
    from .queue import Queue

__all__ = ["ChannelStatistics", "QueueStatistics", "queue_statistics"]


@dataclasses.dataclass(frozen=True, slots=True)
class ChannelStatistics:
    """trio's ``MemoryChannelStatistics`` fields, and ``peak_buffer_used``.

    ``max_buffer_size`` is ``math.inf`` for an unbounded channel, as in trio.
    """

    current_buffer_used: int
    max_buffer_size: int | float
    open_send_channels: int
    open_receive_channels: int
    tasks_waiting_send: int
    tasks_waiting_receive: int
    peak_buffer_used: int


@dataclasses.dataclass(frozen=True, slots=True)
class QueueStatistics(ChannelStatistics):
    """A queue's figures across the cluster; the buffer is ``queued + leased``.

    ``queued``: items waiting in the scheduler.  ``leased``: items handed to
    clients and not consumed yet, prefetched ones included (they return to
    the queue if their client leaves, is asked for them, or lets them sit).
    ``tasks_waiting_receive`` counts this client's waiting tasks and the
    waiting requests of other clients (each client's waiting tasks share
    one request); ``tasks_waiting_send`` counts puts waiting for room.
    """

    queued: int
    leased: int


async def queue_statistics(queue: Queue) -> QueueStatistics:
    """Ask the scheduler for ``queue``'s figures; add what only this client knows."""
    session = queue._session
    figures = await session.request(QueueStats(queue.name), QueueFigures)
    local_waiters = len(queue._link.waiters)
    return QueueStatistics(
        current_buffer_used=figures.queued + figures.leased,
        max_buffer_size=figures.maxsize or math.inf,
        open_send_channels=figures.senders,
        open_receive_channels=figures.receivers,
        tasks_waiting_send=figures.putters,
        tasks_waiting_receive=figures.getters - figures.getters_here + local_waiters,
        peak_buffer_used=figures.peak,
        queued=figures.queued,
        leased=figures.leased,
    )
