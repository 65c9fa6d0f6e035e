"""One-way traffic a client gathers before writing it: credited puts and acknowledgements.

Rules:

* Consecutive credited puts to one queue leave as one ``QueuePut``, so a
  producer putting items one by one costs the scheduler one message per
  write, not one per item.
* Acknowledgements of consumed items leave with the client's next frame,
  or once ``ACK_BATCH`` have gathered, or ``ACK_DELAY`` seconds later:
  consuming from a prefetched batch then costs no write of its own.
* ``flush`` writes everything gathered; the client calls it before any
  other frame it sends, and the connection's writer before it takes its
  buffer, so the scheduler sees the client's traffic in order.
* Nothing is gathered into a broken connection: what was gathered then is
  settled by the scheduler's disconnect handling (leases return).
"""

from __future__ import annotations

import trio

from .._exceptions import LocalProtocolError
from .._wire.messages import ITEM_OVERHEAD, REPLY_OVERHEAD, Ack, Op, QueuePut, encode_message
from .._wire.transport import FramedConnection

__all__ = ["Outbox", "ACK_BATCH", "ACK_DELAY", "PUT_BATCH_BYTES"]

ACK_BATCH = 64  # acknowledgements that are sent at once ...
ACK_DELAY = 0.002  # ... or after this many seconds, whichever comes first
PUT_BATCH_BYTES = 64 * 1024  # gathered credited puts are written at this size


class Outbox:
    """The credited puts and acknowledgements one client has not written yet."""

    def __init__(self, connection: FramedConnection) -> None:
        self._connection = connection
        self._max_batch_bytes = connection.max_frame_size - REPLY_OVERHEAD
        self._acks: list[int] = []
        self._ack_armed = trio.Event()
        self._batch_queue = ""  # the queue of the credited puts gathered below
        self._batch_items: list[bytes] = []
        self._batch_bytes = 0
        connection.before_flush = self.flush
        connection.pending_bytes = self.pending_bytes

    def pending_bytes(self) -> int:
        """Bytes of gathered puts (so write gathering counts them as buffered)."""
        return self._batch_bytes

    # -- puts ------------------------------------------------------------------------

    def put(self, queue: str, items: list[bytes]) -> None:
        """Gather a put paid with credit (the caller checked the client is usable).

        Raises ``LocalProtocolError`` (nothing is put) for items too large
        for one frame.
        """
        size = sum(map(len, items)) + ITEM_OVERHEAD * len(items)
        if size > self._max_batch_bytes:
            raise LocalProtocolError(
                f"{size} bytes of items do not fit in one frame "
                f"(max_frame_size leaves room for {self._max_batch_bytes} bytes of items)"
            )
        if queue != self._batch_queue:
            self.flush(wake=False)
            self._batch_queue = queue
        self._gather(items, size)

    def put_one(self, queue: str, data: bytes) -> None:
        """``put(queue, [data])``: the common case without lists or extra calls."""
        size = len(data) + ITEM_OVERHEAD
        total = self._batch_bytes + size
        if queue != self._batch_queue or total > self._max_batch_bytes:
            self.put(queue, [data])  # a new batch (or a refusal): the general path
            return
        self._batch_items.append(data)
        self._batch_bytes = total
        if total >= PUT_BATCH_BYTES:
            self.flush()
        else:
            self._connection.wake_writer()

    def _gather(self, items: list[bytes], size: int) -> None:
        if self._batch_bytes + size > self._max_batch_bytes:
            self.flush(wake=False)
        self._batch_items.extend(items)
        self._batch_bytes += size
        if self._batch_bytes >= PUT_BATCH_BYTES:
            self.flush()
        else:
            self._connection.wake_writer()

    # -- acknowledgements --------------------------------------------------------------

    def ack_one(self, lease: int) -> None:
        """``ack([lease])`` without the list (the single ``get``'s path)."""
        acks = self._acks
        acks.append(lease)
        if self._connection.is_broken:
            return
        if len(acks) >= ACK_BATCH:
            self.flush()
        else:
            self._ack_armed.set()

    def ack(self, leases: list[int], *, batch: int = ACK_BATCH) -> None:
        """Record consumed leases; they leave once ``batch`` have gathered, or sooner.

        (A push consumer passes half its window, so the scheduler refills
        it before it runs dry.)
        """
        self._acks.extend(leases)
        if self._connection.is_broken:
            return
        if len(self._acks) >= batch:
            self.flush()
        else:
            self._ack_armed.set()

    async def run_ack_timer(self) -> None:
        """Write gathered acknowledgements ``ACK_DELAY`` after the first; for the
        client's nursery."""
        while True:
            await self._ack_armed.wait()
            await trio.sleep(ACK_DELAY)
            self._ack_armed = trio.Event()
            if not self._connection.is_broken:
                self.flush()

    # -- writing -----------------------------------------------------------------------

    def flush(self, *, wake: bool = True) -> None:
        """Write the gathered puts and acknowledgements as frames.

        ``wake=False`` when a frame follows at once (it wakes the writer, or
        writes directly), so the writer is not woken for nothing.
        """
        if self._connection.is_broken:
            return
        if self._batch_items:
            items, self._batch_items, self._batch_bytes = self._batch_items, [], 0
            put = QueuePut(self._batch_queue, items, True, True)
            self._connection.send(Op.QUEUE_PUT, 0, encode_message(put), wake=wake)
        if self._acks:
            acks, self._acks = self._acks, []
            self._connection.send(Op.ACK, 0, encode_message(Ack(acks)), wake=wake)
