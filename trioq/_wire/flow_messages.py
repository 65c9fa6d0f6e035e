"""Typed messages about the flow of queue items and the order across connections.

Rules: as in ``messages`` (one frozen class per message, fields checked on
decoding).

* ``LeaseRecall``: a consumer waits on a queue whose items are all leased;
  each connection holding leased items it has not handed to a caller is
  asked to give them back (``QueueReturn``).
* ``Barrier``/``BarrierDone``: the scheduler asks a connection to answer
  once everything it sent before the answer is in.  Frames on one
  connection arrive in order, so the answer proves it; the scheduler uses
  this to make one client's call wait for what other clients' calls that
  returned earlier sent (see ``_scheduler.barriers``).
* ``Sync``: answered ``Ok`` once the scheduler has applied everything the
  connection sent before it (``Client.flush``, ``Queue.flush``).
"""

from __future__ import annotations

import dataclasses

from .messages import Message, Op, _message, _notice, _request

__all__ = ["QueueStats", "QueueStatistics", "LeaseRecall", "Barrier", "BarrierDone", "Sync"]


@_request
@dataclasses.dataclass(frozen=True, slots=True)
class QueueStats(Message):
    """Ask for one queue's figures (answered with ``QueueStatistics``)."""

    OP = Op.QUEUE_STATS
    queue: str


@_message
@dataclasses.dataclass(frozen=True, slots=True)
class QueueStatistics(Message):
    """One queue's figures, cluster-wide.

    ``queued``: items waiting in the scheduler; ``leased``: items handed to
    clients and not yet consumed (prefetched ones among them); ``peak``: the
    most of both at once since the queue was created; ``getters`` and
    ``putters``: requests waiting in the scheduler (``getters_here``: those
    of the asking connection).
    """

    queued: int
    leased: int
    peak: int
    maxsize: int
    senders: int
    receivers: int
    getters: int
    putters: int
    getters_here: int


@_notice
@dataclasses.dataclass(frozen=True, slots=True)
class LeaseRecall(Message):
    """Unsolicited: a consumer waits on ``queue``; give back unclaimed leased items."""

    OP = Op.LEASE_RECALL
    queue: str


@_notice
@dataclasses.dataclass(frozen=True, slots=True)
class Barrier(Message):
    """Unsolicited: send ``BarrierDone(number)`` back (after what is already sent)."""

    OP = Op.BARRIER
    number: int


@_request
@dataclasses.dataclass(frozen=True, slots=True)
class BarrierDone(Message):
    """One-way answer to ``Barrier``: everything this connection sent before is in."""

    OP = Op.BARRIER_DONE
    number: int


@_request
@dataclasses.dataclass(frozen=True, slots=True)
class Sync(Message):
    """Answered ``Ok`` once everything this connection sent before it is applied."""

    OP = Op.SYNC
