"""How items move through the scheduler's queues: handed out, pushed, fed to waiters (sans-IO).

``QueueFlow`` is the part of ``SchedulerState`` that moves items once a
request has been checked: leasing them to a getter, dealing them to push
subscribers, serving parked putters and getters after any change, ending a
stream, and putting returned leases back.  It only touches the records it
is given; the state owns the records and the order of requests.

Rules (see ``state`` for the rest):

* A getter is served oldest first; one answer stays under
  ``max_item_bytes`` so it fits in a frame.
* Push subscribers are dealt items round-robin, up to their window, before
  any parked get is served.
* Returned leases go back to the head of their queue, oldest lease first;
  items of a queue deleted since are dropped.

Complexity: O(1) per item moved; O(parked) to find work after a change.
"""

from __future__ import annotations

from .._wire.messages import ITEM_OVERHEAD, Items, Pushed, PutDone
from .instructions import Fail, Notice, Out, Reply
from .queues import ConnRecord, QueueRecord, broken_text, closed_text
from .tasks import TaskBoard

__all__ = ["QueueFlow"]


class QueueFlow:
    """Moving items through queues; mixed into ``SchedulerState``, which owns the records."""

    _queues: dict[str, QueueRecord]
    _conns: dict[int, ConnRecord]
    tasks: TaskBoard
    max_item_bytes: int

    def _deliver(self, queue: QueueRecord, conn: int, rid: int, max_items: int, out: Out) -> None:
        state = self._conns[conn]
        budget = self.max_item_bytes  # one answer must fit in one frame
        items = [queue.items.popleft()]
        size = len(items[0]) + ITEM_OVERHEAD
        while len(items) < max_items and queue.items:
            more = len(queue.items[0]) + ITEM_OVERHEAD
            if size + more > budget:
                break
            size += more
            items.append(queue.items.popleft())
        n = len(items)
        first = state.next_lease
        for offset, item in enumerate(items):
            state.leases[first + offset] = (queue, item)
            self.tasks.hand_item(conn, item)
        queue.pulled.setdefault(conn, set()).update(range(first, first + n))
        state.next_lease = first + n
        queue.leased += n
        out.append(Reply(conn, rid, Items(items, first)))

    def _feed_getters(self, queue: QueueRecord, out: Out) -> None:
        if queue.pushees and queue.items:
            self._push(queue, out)
        while queue.items and queue.getters:
            (conn, rid), max_items = next(iter(queue.getters.items()))
            del queue.getters[(conn, rid)]
            self._conns[conn].parked.pop(rid, None)
            share = max(1, len(queue.items) // (len(queue.getters) + 1))
            self._deliver(queue, conn, rid, min(max_items, share), out)
        if queue.getters and self._finished(queue):
            self._end_getters(queue, out)

    def _push(self, queue: QueueRecord, out: Out) -> None:
        """Deal queued items round-robin to subscribers with room in their window."""
        dealt: dict[int, list[bytes]] = {}
        turn = queue.push_turn
        idle = 0  # subscribers passed over in a row because their window is full
        while queue.items and idle < len(turn):
            conn = turn[0]
            turn.rotate(-1)
            subscriber = queue.pushees[conn]
            if subscriber.free - len(dealt.get(conn, ())) <= 0:
                idle += 1
                continue
            idle = 0
            dealt.setdefault(conn, []).append(queue.items.popleft())
        for conn, items in dealt.items():
            state = self._conns[conn]
            pushed = queue.pushees[conn].pushed
            first = state.next_lease
            for offset, item in enumerate(items):
                state.leases[first + offset] = (queue, item)
                pushed.add(first + offset)
                self.tasks.hand_item(conn, item)
            state.next_lease = first + len(items)
            queue.leased += len(items)
            out.append(Notice(conn, Pushed(queue.name, items, first)))

    def _feed_putters(self, queue: QueueRecord, out: Out) -> None:
        while queue.putters:
            (conn, rid), items = next(iter(queue.putters.items()))
            if queue.room() < len(items):
                break
            del queue.putters[(conn, rid)]
            self._conns[conn].parked.pop(rid, None)
            self._store(queue, items)
            queue.offer_credit(conn, out)
            out.append(Reply(conn, rid, PutDone()))
        self._feed_getters(queue, out)

    def _settle(self, queue: QueueRecord, out: Out) -> None:
        """After items or room changed outside a put/get: serve whoever waits."""
        self._feed_putters(queue, out)

    @staticmethod
    def _finished(queue: QueueRecord) -> bool:
        """Closed, empty, and nothing leased that could still come back."""
        return queue.closed and not queue.items and not queue.leased

    def _end_getters(self, queue: QueueRecord, out: Out) -> None:
        text = f"queue {queue.name!r} is closed and empty"
        for conn, rid in list(queue.getters):
            self._conns[conn].parked.pop(rid, None)
            out.append(Fail(conn, rid, "EndOfChannel", text))
        queue.getters.clear()

    def _drop_endpoint(self, queue: QueueRecord, kind: str, count: int, out: Out) -> None:
        if kind == "send":
            queue.senders -= count
            if queue.senders == 0:
                queue.closed = True
                queue.stop_credit(out)
                text = closed_text(queue.name)
                self._fail_putters(queue, "ClosedResourceError", text, out)
                if self._finished(queue):
                    self._end_getters(queue, out)
        else:
            queue.receivers -= count
            if queue.receivers == 0:
                queue.broken = True
                queue.stop_credit(out)
                text = broken_text(queue.name)
                self._fail_putters(queue, "BrokenResourceError", text, out)

    def _fail_putters(self, queue: QueueRecord, kind: str, text: str, out: Out) -> None:
        """The queue refuses puts from now on, including those waiting for room."""
        for conn, rid in queue.putters:
            self._conns[conn].parked.pop(rid, None)
            out.append(Fail(conn, rid, kind, text))
        queue.putters.clear()

    def _restore_leases(self, leases: dict[int, tuple[QueueRecord, bytes]]) -> set[str]:
        """Put leased items back at the head of their queues, oldest lease first.

        Items of a queue deleted since (even if re-created under its name) are dropped.
        """
        touched: set[str] = set()
        for lease in sorted(leases, reverse=True):
            queue, item = leases[lease]
            queue.leased -= 1
            if self._queues.get(queue.name) is queue:
                queue.items.appendleft(item)
                touched.add(queue.name)
            else:
                self.tasks.release_item(item)
        return touched

    def _store(self, queue: QueueRecord, items: list[bytes]) -> None:
        """Queue ``items``; the futures they refer to stay alive meanwhile."""
        queue.items.extend(items)
        queue.peak = max(queue.peak, len(queue.items) + queue.leased)
        for item in items:
            self.tasks.keep_item(item)
