"""The scheduler's state (sans-IO): one order for every request, and the queues.

Rules:

* ``SchedulerState.handle(conn, request_id, message)`` applies one request
  and returns instructions (``Reply``, ``Fail``, ``Notice``) for the shell
  to send.  Nothing here awaits, so requests are applied in one global
  order.  Tasks, channels and variables are boards of their own
  (``TaskBoard``, ``ChannelBoard``, ``VariableBoard``) that this state
  feeds; queues live here, their records and put credit in
  ``queues``.
* Items are opaque ``bytes``; this module never decodes them.
* An item handed to a client is *leased* to that connection until the
  client acknowledges it (``Ack``).  A connection that goes away, or returns
  leases, puts those items back at the head of their queue in their
  original order: no item is lost or duplicated by a vanished client.
* ``maxsize`` 0 means unbounded; a bounded queue never holds more (see
  ``queues`` for room and credit).
* Push subscribers of a queue are dealt its items round-robin, up to their
  window, before any parked get is served.
* A parked request (a get waiting for an item, a put waiting for room, a
  read waiting for a value, an element or a task) answers exactly once:
  served, failed, or withdrawn by ``Cancel`` (answered with the
  ``Cancelled`` kind).
* An item or value that refers to futures (an ``EXT_REFERENCES`` envelope,
  read without decoding the item) keeps their tasks alive while it is
  stored or leased; the connection it is handed to holds them from then on.

Complexity: O(1) per item moved; O(parked) to find work after a change.
"""

from __future__ import annotations

from typing import Any, ClassVar

from .._wire.flow_messages import BarrierDone, LeaseRecall, QueueStatistics, QueueStats, Sync
from .._wire.messages import (
    REPLY_OVERHEAD,
    Ack,
    Cancel,
    Count,
    CreditReturn,
    EndpointClose,
    EndpointOpen,
    ErrorNotice,
    Message,
    Ok,
    PutDone,
    QueueDelete,
    QueueGet,
    QueueInfo,
    QueueOpen,
    QueuePut,
    QueueReturn,
    QueueSize,
    QueueSubscribe,
    QueueUnsubscribe,
    Status,
    StatusReport,
)
from .barriers import Barriers
from .channels import ChannelBoard
from .instructions import Board, Fail, Notice, Out, Reply, StateError, UnknownKey, check_sizes
from .queue_flow import QueueFlow
from .queues import (
    CREDIT_WINDOW,
    ConnRecord,
    QueueRecord,
    Subscriber,
    broken_text,
    closed_text,
    end_lease,
)
from .tasks import TaskBoard
from .variables import VariableBoard

__all__ = ["Reply", "Fail", "Notice", "Out", "StateError", "SchedulerState", "CREDIT_WINDOW"]
DEFAULT_MAX_ITEM_BYTES = 64 * 1024 * 1024 - REPLY_OVERHEAD

_LEAVE = object()  # held in place of a disconnect that waits for a barrier


class SchedulerState(QueueFlow):
    """All named state of one scheduler, driven by requests from connections."""

    def __init__(
        self,
        max_item_bytes: int = DEFAULT_MAX_ITEM_BYTES,
        *,
        dispatch: str = "pull",
        prefetch: int = 1,
    ) -> None:
        #: Largest value accepted; answers carrying items stay under it too,
        #: so they always fit in a frame.
        self.max_item_bytes = max_item_bytes
        self._queues: dict[str, QueueRecord] = {}
        self._conns: dict[int, ConnRecord] = {}
        self.tasks = TaskBoard(dispatch, prefetch, answered=self._answered)
        self.channels = ChannelBoard(self.tasks, max_item_bytes, answered=self._answered)
        self.variables = VariableBoard(self.tasks, max_item_bytes, answered=self._answered)
        self.barriers = Barriers()
        self._leaving: set[int] = set()  # gone, but held: their disconnect waits for a barrier

    # -- connections -----------------------------------------------------------

    def connect(self, conn: int, name: str = "", address: str = "") -> None:
        """A connection has authenticated."""
        if conn in self._conns:
            raise ValueError(f"connection {conn} is already known")
        self._conns[conn] = ConnRecord(name, address)

    def disconnect(self, conn: int) -> Out:
        """A connection is gone: return its leases, release its credit and endpoints.

        If that ends a stream (its last endpoint of a kind), the end waits for
        a barrier first (see ``barriers``): others may have opened endpoints.
        """
        out: Out = []
        self._release(self.barriers.left(conn), out)
        if self.barriers.holds(conn):
            # What it sent before leaving, then its leaving, wait for the barrier.
            self.barriers.defer(conn, 0, _LEAVE)
            self._leaving.add(conn)
            return out
        if not self._hold_leave(conn, out):
            out.extend(self._disconnect_now(conn))
        return out

    def _disconnect_now(self, conn: int) -> Out:
        state = self._conns.pop(conn)
        self._leaving.discard(conn)
        out: Out = []
        touched = self._restore_leases(state.leases)
        for rid, (kind, name) in state.parked.items():
            if self._unpark(conn, rid, kind, name) is not None:
                touched.add(name)
        for queue in self._queues.values():
            queue.openers.discard(conn)
            queue.revoking.pop(conn, None)
            queue.pulled.pop(conn, None)
            if queue.pushees.pop(conn, None) is not None:
                queue.push_turn.remove(conn)
            if queue.reserved.get(conn, 0):
                queue.set_held(conn, 0)
                touched.add(queue.name)
        # Receive endpoints first: "nobody will read" is the verdict waiting puts get.
        endpoints = sorted(state.endpoints.items(), key=lambda entry: entry[0][1] != "receive")
        for (name, kind), count in endpoints:
            queue_or_none = self._queues.get(name)
            if queue_or_none is not None and count:
                self._drop_endpoint(queue_or_none, kind, count, out)
                touched.add(name)
        for name in touched:
            queue_or_none = self._queues.get(name)
            if queue_or_none is not None:
                self._settle(queue_or_none, out)
        self.tasks.disconnect(conn, out)
        self.tasks.settle(out)
        return out

    # -- requests ----------------------------------------------------------------

    def handle(self, conn: int, request_id: int, message: Message) -> Out:
        """Apply one request; return what to send.

        A request of a connection held behind a barrier waits there (see
        ``barriers``); ``BarrierDone`` answers are applied at once.
        """
        if isinstance(message, BarrierDone):
            out: Out = []
            self._release(self.barriers.answered(conn, message.number), out)
            return out
        if self.barriers.holds(conn):
            self.barriers.defer(conn, request_id, message)
            return []
        return self._apply(conn, request_id, message, replay=False)

    def _apply(self, conn: int, request_id: int, message: Message, *, replay: bool) -> Out:
        out: Out = []
        handler = self._HANDLERS.get(type(message))
        try:
            if (
                not replay
                and isinstance(message, EndpointClose)
                and self._would_end(conn, message)
                and self.barriers.hold(conn, request_id, message, self._askable(), out)
            ):
                return out  # the last endpoint of a kind: others may be opening one
            if message.may_park():
                self._check_fresh(conn, request_id)  # before anything changes
            if isinstance(message, TaskBoard.MESSAGES):
                self._handle_board(self.tasks, "task", conn, request_id, message, out)
            elif isinstance(message, ChannelBoard.MESSAGES):
                self._handle_board(self.channels, "channel", conn, request_id, message, out)
            elif isinstance(message, VariableBoard.MESSAGES):
                self._handle_board(self.variables, "variable", conn, request_id, message, out)
            elif handler is None:
                raise StateError("ProtocolError", f"{type(message).__name__} is not a request")
            else:
                handler(self, conn, request_id, message, out)
            self.tasks.settle(out)  # tasks this request left unheld are cancelled
            if not request_id:  # one-way: the sender wants no answer
                out = [o for o in out if not (isinstance(o, Reply) and o.request_id == 0)]
        except UnknownKey as exc:
            held: Out = []
            if not replay and self.barriers.hold(conn, request_id, message, self._askable(), held):
                return held  # its submit may be on its way from another connection
            self._refuse(conn, request_id, message, exc, out)
        except StateError as exc:
            self._refuse(conn, request_id, message, exc, out)
        return out

    @staticmethod
    def _refuse(conn: int, request_id: int, message: Message, exc: StateError, out: Out) -> None:
        if request_id:
            out.append(Fail(conn, request_id, exc.kind, str(exc)))
        elif isinstance(getattr(message, "queue", None), str):  # one-way: say it aside
            notice = ErrorNotice(message.queue, exc.kind, str(exc))  # type: ignore[attr-defined]
            out.append(Notice(conn, notice))

    # -- barriers ------------------------------------------------------------------

    def _askable(self) -> list[int]:
        """Connections that can answer a barrier."""
        return [conn for conn in self._conns if conn not in self._leaving]

    def _release(self, conns: list[int], out: Out) -> None:
        for conn in conns:
            self._replay(conn, out)

    def _replay(self, conn: int, out: Out) -> None:
        """Run what ``conn`` held, in order, until done or held again."""
        held = self.barriers.release(conn)
        replay = True  # the first one caused the hold: it is not held again
        while held:
            rid, message = held.popleft()
            if message is _LEAVE:  # last: what it sent before leaving has run
                if not replay and self._hold_leave(conn, out):
                    return
                out.extend(self._disconnect_now(conn))
                return
            out.extend(self._apply(conn, rid, message, replay=replay))
            replay = False
            if self.barriers.holds(conn):
                self.barriers.requeue(conn, held)
                return

    def _hold_leave(self, conn: int, out: Out) -> bool:
        """Hold ``conn``'s leaving behind a barrier if it ends a stream; True if held."""
        if self._ends_a_stream(conn) and self.barriers.hold(conn, 0, _LEAVE, self._askable(), out):
            self._leaving.add(conn)
            return True
        return False

    def _would_end(self, conn: int, msg: EndpointClose) -> bool:
        """Would this close leave the queue without endpoints of its kind?"""
        queue = self._queues.get(msg.queue)
        if queue is None or not self._conns[conn].endpoints.get((msg.queue, msg.kind)):
            return False
        return (queue.senders if msg.kind == "send" else queue.receivers) == 1

    def _ends_a_stream(self, conn: int) -> bool:
        """Would this connection's leaving close a queue's last endpoint of a kind?"""
        for (name, kind), count in self._conns[conn].endpoints.items():
            queue = self._queues.get(name)
            held = 0 if queue is None else (queue.senders if kind == "send" else queue.receivers)
            if count and held and held <= count:
                return True
        return False

    def _handle_board(
        self,
        board: Board,
        kind: str,
        conn: int,
        rid: int,
        message: Message,
        out: Out,
    ) -> None:
        name = board.handle(conn, rid, message, out)
        if name is not None:
            self._park(conn, rid, kind, name)

    def _queue(self, name: str) -> QueueRecord:
        queue = self._queues.get(name)
        if queue is None:
            raise StateError(
                "BrokenResourceError", f"queue {name!r} does not exist (it was deleted)"
            )
        return queue

    def _on_queue_open(self, conn: int, rid: int, msg: QueueOpen, out: Out) -> None:
        if msg.maxsize < 0:
            raise StateError("ValueError", f"maxsize must be >= 0, got {msg.maxsize}")
        queue = self._queues.get(msg.queue)
        if queue is None:
            queue = self._queues[msg.queue] = QueueRecord(msg.queue, msg.maxsize)
        elif msg.maxsize and msg.maxsize != queue.maxsize:
            raise StateError(
                "ValueError",
                f"queue {msg.queue!r} exists with maxsize {queue.maxsize}, not {msg.maxsize}",
            )
        queue.openers.add(conn)
        accepting = not (queue.closed or queue.broken)
        out.append(Reply(conn, rid, QueueInfo(queue.maxsize, accepting)))

    def _on_queue_put(self, conn: int, rid: int, msg: QueuePut, out: Out) -> None:
        queue = self._queue(msg.queue)
        if queue.broken:
            raise StateError("BrokenResourceError", broken_text(msg.queue))
        if queue.closed:
            raise StateError("ClosedResourceError", closed_text(msg.queue))
        self.tasks.check_items(msg.items)
        n = len(msg.items)
        check_sizes("an item", msg.items, self.max_item_bytes)
        if queue.maxsize and msg.credited:
            held = queue.reserved.get(conn, 0)
            if held < n:
                raise StateError("ProtocolError", f"put of {n} items with only {held} credit")
            queue.set_held(conn, held - n)
        elif queue.maxsize and not msg.credited:
            if n > queue.maxsize:
                raise StateError(
                    "ValueError",
                    f"a batch of {n} items can never fit in queue {msg.queue!r} "
                    f"(maxsize {queue.maxsize})",
                )
            if queue.room() < n and queue.reserved_total:
                # Credit is a promise of room, not room in use: ask every holder to
                # return what it has not used (the asker's own credit is among it:
                # it had not reached it yet).  The room frees as the returns arrive.
                queue.revoke_credit(out)
            if queue.putters or queue.room() < n:
                if not msg.wait:
                    raise StateError("WouldBlock", f"queue {msg.queue!r} is full")
                self._park(conn, rid, "put", msg.queue)
                queue.putters[(conn, rid)] = msg.items
                return
        self._store(queue, msg.items)
        if rid or queue.reserved.get(conn, 0) <= queue.credit_window() // 2:
            queue.offer_credit(conn, out)  # top up before the producer runs dry
        if rid:
            out.append(Reply(conn, rid, PutDone()))
        self._feed_getters(queue, out)

    def _on_queue_get(self, conn: int, rid: int, msg: QueueGet, out: Out) -> None:
        if msg.max_items < 1:
            raise StateError("ValueError", f"max_items must be >= 1, got {msg.max_items}")
        queue = self._queue(msg.queue)
        if queue.items and not queue.getters:
            self._deliver(queue, conn, rid, msg.max_items, out)
            self._feed_putters(queue, out)
        elif self._finished(queue):
            raise StateError("EndOfChannel", f"queue {msg.queue!r} is closed and empty")
        elif not msg.wait:
            raise StateError("WouldBlock", f"queue {msg.queue!r} is empty")
        else:
            self._park(conn, rid, "get", msg.queue)
            queue.getters[(conn, rid)] = msg.max_items
            for holder, leases in queue.pulled.items():
                if holder != conn and leases:  # maybe prefetched and idle there: ask
                    out.append(Notice(holder, LeaseRecall(queue.name)))

    def _on_ack(self, conn: int, rid: int, msg: Ack, out: Out) -> None:
        leases = self._conns[conn].leases
        freed: dict[int, QueueRecord] = {}
        for lease in msg.leases:
            entry = leases.pop(lease, None)
            if entry is not None:
                entry[0].leased -= 1
                freed[id(entry[0])] = entry[0]
                end_lease(entry[0], conn, lease)
                self.tasks.release_item(entry[1])
        for queue in freed.values():
            if self._queues.get(queue.name) is queue:
                self._settle(queue, out)  # room for putters; maybe the end for getters

    def _on_queue_return(self, conn: int, rid: int, msg: QueueReturn, out: Out) -> None:
        leases = self._conns[conn].leases
        returned = {lease: leases.pop(lease) for lease in msg.leases if lease in leases}
        for lease, (queue, _) in returned.items():
            end_lease(queue, conn, lease)
        for name in self._restore_leases(returned):
            self._settle(self._queues[name], out)
        out.append(Reply(conn, rid, Ok()))

    def _on_queue_subscribe(self, conn: int, rid: int, msg: QueueSubscribe, out: Out) -> None:
        if msg.window < 1:
            raise StateError("ValueError", f"window must be >= 1, got {msg.window}")
        queue = self._queue(msg.queue)
        subscriber = queue.pushees.get(conn)
        if subscriber is None:
            queue.pushees[conn] = Subscriber(msg.window)
            queue.push_turn.append(conn)
        else:  # subscribing again changes the window; what it holds still counts
            subscriber.window = msg.window
        out.append(Reply(conn, rid, Ok()))
        self._settle(queue, out)

    def _on_queue_unsubscribe(self, conn: int, rid: int, msg: QueueUnsubscribe, out: Out) -> None:
        queue = self._queues.get(msg.queue)
        if queue is not None and queue.pushees.pop(conn, None) is not None:
            queue.push_turn.remove(conn)
        out.append(Reply(conn, rid, Ok()))

    def _on_queue_size(self, conn: int, rid: int, msg: QueueSize, out: Out) -> None:
        """Items put and not yet consumed: queued plus leased but unacknowledged."""
        queue = self._queue(msg.queue)
        out.append(Reply(conn, rid, Count(len(queue.items) + queue.leased)))

    def _on_queue_delete(self, conn: int, rid: int, msg: QueueDelete, out: Out) -> None:
        queue = self._queues.pop(msg.queue, None)
        if queue is not None:
            for item in queue.items:
                self.tasks.release_item(item)
            queue.stop_credit(out, "deleted")
            text = f"queue {msg.queue!r} was deleted"
            for (owner, request), _ in [*queue.getters.items(), *queue.putters.items()]:
                self._conns[owner].parked.pop(request, None)
                out.append(Fail(owner, request, "BrokenResourceError", text))
            for state in self._conns.values():
                for key in [key for key in state.endpoints if key[0] == msg.queue]:
                    del state.endpoints[key]
        out.append(Reply(conn, rid, Ok()))

    def _on_endpoint_open(self, conn: int, rid: int, msg: EndpointOpen, out: Out) -> None:
        queue = self._queue(msg.queue)
        if msg.kind == "send":
            if queue.closed:
                raise StateError("ClosedResourceError", closed_text(msg.queue))
            queue.senders += 1
        elif msg.kind == "receive":
            queue.receivers += 1
        else:
            raise StateError("ValueError", f"endpoint kind must be send or receive: {msg.kind!r}")
        endpoints = self._conns[conn].endpoints
        endpoints[(msg.queue, msg.kind)] = endpoints.get((msg.queue, msg.kind), 0) + 1
        out.append(Reply(conn, rid, Ok()))

    def _on_endpoint_close(self, conn: int, rid: int, msg: EndpointClose, out: Out) -> None:
        endpoints = self._conns[conn].endpoints
        key = (msg.queue, msg.kind)
        if not endpoints.get(key):
            raise StateError("ValueError", f"no open {msg.kind} endpoint of queue {msg.queue!r}")
        endpoints[key] -= 1
        queue = self._queue(msg.queue)
        self._drop_endpoint(queue, msg.kind, 1, out)
        out.append(Reply(conn, rid, Ok()))

    def _on_cancel(self, conn: int, rid: int, msg: Cancel, out: Out) -> None:
        parked = self._conns[conn].parked.pop(msg.request_id, None)
        if parked is not None:  # otherwise it was answered already: nothing to do
            out.append(Fail(conn, msg.request_id, "Cancelled", "withdrawn"))
            queue = self._unpark(conn, msg.request_id, *parked)
            if queue is not None:
                self._settle(queue, out)  # a put that blocked others is gone

    def _on_credit_return(self, conn: int, rid: int, msg: CreditReturn, out: Out) -> None:
        queue = self._queues.get(msg.queue)
        if queue is not None and queue.revoking.get(conn) == msg.revocation:
            # Every credited put sent before the return has arrived: what is
            # left of this connection's credit is unused, and becomes room.  (A
            # return answering an older revocation is stale: credit granted
            # since may be in use.)
            queue.set_held(conn, 0)
            self._settle(queue, out)

    def _on_queue_stats(self, conn: int, rid: int, msg: QueueStats, out: Out) -> None:
        queue = self._queue(msg.queue)
        here = sum(1 for owner, _ in queue.getters if owner == conn)
        figures = QueueStatistics(
            len(queue.items),
            queue.leased,
            queue.peak,
            queue.maxsize,
            queue.senders,
            queue.receivers,
            len(queue.getters),
            len(queue.putters),
            here,
        )
        out.append(Reply(conn, rid, figures))

    def _on_sync(self, conn: int, rid: int, msg: Sync, out: Out) -> None:
        out.append(Reply(conn, rid, Ok()))  # everything before it is applied: in order

    def _on_status(self, conn: int, rid: int, msg: Status, out: Out) -> None:
        out.append(Reply(conn, rid, StatusReport(self.status())))

    _HANDLERS: ClassVar[dict[type, Any]] = {
        QueueOpen: _on_queue_open,
        QueuePut: _on_queue_put,
        QueueGet: _on_queue_get,
        Ack: _on_ack,
        QueueReturn: _on_queue_return,
        QueueSubscribe: _on_queue_subscribe,
        QueueUnsubscribe: _on_queue_unsubscribe,
        QueueSize: _on_queue_size,
        QueueDelete: _on_queue_delete,
        EndpointOpen: _on_endpoint_open,
        EndpointClose: _on_endpoint_close,
        Cancel: _on_cancel,
        Status: _on_status,
        QueueStats: _on_queue_stats,
        CreditReturn: _on_credit_return,
        Sync: _on_sync,
    }

    def _answered(self, conn: int, rid: int) -> None:
        """A parked request was answered elsewhere (by the task board)."""
        state = self._conns.get(conn)
        if state is not None:
            state.parked.pop(rid, None)

    def _check_fresh(self, conn: int, rid: int) -> None:
        """A request that may wait needs an id of its own, so it answers once."""
        if not rid:
            raise StateError("ProtocolError", "a request that may wait needs a request id")
        if rid in self._conns[conn].parked:
            raise StateError("ProtocolError", f"request id {rid} is already waiting")

    def _park(self, conn: int, rid: int, kind: str, name: str) -> None:
        """Record a waiting request (its id was checked by ``handle``)."""
        self._conns[conn].parked[rid] = (kind, name)

    def _unpark(self, conn: int, rid: int, kind: str, name: str) -> QueueRecord | None:
        """Forget a waiting request; returns its queue, if it was a queue's."""
        if kind == "task":
            self.tasks.unwait(conn, rid, name)
            return None
        if kind == "channel":
            self.channels.unwait(conn, rid, name)
            return None
        if kind == "variable":
            self.variables.unwait(conn, rid, name)
            return None
        queue = self._queues.get(name)
        if queue is not None:
            waiting = queue.getters if kind == "get" else queue.putters
            waiting.pop((conn, rid), None)
        return queue

    # -- introspection ---------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """Plain data for ``python -m trioq status``."""
        return {
            "queues": [queue.status() for queue in self._queues.values()],
            "variables": self.variables.status(),
            "channels": self.channels.status(),
            "clients": [
                {"id": conn, "name": c.name, "address": c.address, "leases": len(c.leases)}
                for conn, c in self._conns.items()
            ],
            **self.tasks.status(),
        }

    def validate(self) -> None:
        """Check the invariants that tie queues, leases and connections together."""
        self.tasks.validate()
        self.channels.validate()
        self.variables.validate()
        self.barriers.validate(self._askable())
        leased: dict[int, int] = {}
        for conn, state in self._conns.items():
            for queue_of_lease, _ in state.leases.values():
                leased[id(queue_of_lease)] = leased.get(id(queue_of_lease), 0) + 1
            for rid, (kind, name) in state.parked.items():
                if kind == "get":
                    assert (conn, rid) in self._queues[name].getters, "parked get is lost"
                elif kind == "put":
                    assert (conn, rid) in self._queues[name].putters, "parked put is lost"
                elif kind == "task":
                    assert self.tasks.is_reader(conn, rid, name), "parked task read is lost"
                elif kind == "channel":
                    assert self.channels.is_reader(conn, rid, name), "parked channel read is lost"
                else:
                    assert self.variables.is_reader(conn, rid, name), "parked read is lost"
        for queue in self._queues.values():
            queue.validate()
            assert queue.leased == leased.get(id(queue), 0), "lease count is wrong"
            assert set(queue.reserved) <= set(self._conns), "credit held by a gone client"
            for conn, pulled in queue.pulled.items():
                leases = self._conns[conn].leases
                assert pulled and all(leases[lease][0] is queue for lease in pulled), "lost get"
            for conn, subscriber in queue.pushees.items():
                assert subscriber.free >= 0, "a subscriber holds more than its window"
                leases = self._conns[conn].leases
                assert all(leases[lease][0] is queue for lease in subscriber.pushed), "lost push"
            for conn, rid in [*queue.getters, *queue.putters]:
                assert self._conns[conn].parked.get(rid) is not None, "parked request unknown"
