"""Pure-Python twin of ``trioq/_core.pyx``: the frame codec and the priority scheduler.

Rules this module keeps (and ``_core.pyx`` keeps identically):

* No I/O, no clock, no trio: plain synchronous state machines fed inputs,
  returning results.  The trio shell moves the bytes.
* Same names, signatures, exceptions and messages as the compiled module;
  ``tests/test_core_twins.py`` drives both in lockstep to prove it.

Frame layout (all integers big-endian)::

    +--------+----+-------+------------+---------+
    | length | op | flags | request id | payload |
    |   u32  | u8 |  u8   |    u32     |  bytes  |
    +--------+----+-------+------------+---------+

``length`` counts every byte after itself, so a whole frame is
``4 + length`` bytes.  ``max_frame_size`` bounds the whole frame; the decoder
checks it as soon as the 4-byte prefix has arrived, before buffering the
body, so a hostile length never makes it allocate.

Complexity: encoding and decoding are O(size).  The scheduler is O(log n) in
the number of tasks per task operation; a dispatch pass also visits each
worker with free capacity (O(W)), and a worker qualified for k series
compares k heap tops per task it takes.
"""

from __future__ import annotations

import heapq
import struct
from collections import deque
from collections.abc import Hashable, Iterable, Iterator
from typing import Any

from ._exceptions import LocalProtocolError, RemoteProtocolError

__all__ = [
    "IMPLEMENTATION",
    "HEADER_SIZE",
    "LENGTH_PREFIX_SIZE",
    "DEFAULT_MAX_FRAME_SIZE",
    "MAX_OP",
    "MAX_FLAGS",
    "MAX_REQUEST_ID",
    "Frame",
    "encode_frame",
    "FrameEncoder",
    "FrameDecoder",
    "PULL",
    "PUSH",
    "PriorityScheduler",
]

IMPLEMENTATION = "python"

LENGTH_PREFIX_SIZE = 4
HEADER_SIZE = 10  # length u32 + op u8 + flags u8 + request id u32
DEFAULT_MAX_FRAME_SIZE = 64 * 1024 * 1024
MAX_OP = 0xFF
MAX_FLAGS = 0xFF
MAX_REQUEST_ID = 0xFFFFFFFF
_MAX_LENGTH_FIELD = 0xFFFFFFFF

_HEADER = struct.Struct(">IBBI")
_BODY_HEADER = struct.Struct(">BBI")
_PREFIX = struct.Struct(">I")


# --------------------------------------------------------------------------
# argument checks shared by codec and scheduler (messages are part of the API)


def _check_uint(name: str, value: object, maximum: int) -> int:
    if type(value) is not int:
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 0 or value > maximum:
        raise LocalProtocolError(f"{name} must be in 0..{maximum}, got {value}")
    return value


def _check_max_frame_size(value: object) -> int:
    if type(value) is not int:
        raise TypeError(f"max_frame_size must be an int, got {type(value).__name__}")
    if value < HEADER_SIZE or value > _MAX_LENGTH_FIELD:
        raise ValueError(
            f"max_frame_size must be in {HEADER_SIZE}..{_MAX_LENGTH_FIELD}, got {value}"
        )
    return value


def _as_payload(payload: object) -> bytes:
    if type(payload) is bytes:
        return payload
    if not isinstance(payload, (bytes, bytearray, memoryview)):
        raise TypeError(f"payload must be bytes-like, got {type(payload).__name__}")
    return bytes(payload)


# --------------------------------------------------------------------------
# frames


class Frame:
    """One decoded (or to-be-encoded) frame: op code, request id, flags, payload.

    Frames are immutable values: equal when all four fields are equal.
    """

    __slots__ = ("_op", "_request_id", "_payload", "_flags")

    def __init__(self, op: int, request_id: int = 0, payload: bytes = b"", flags: int = 0) -> None:
        _check_uint("op", op, MAX_OP)
        _check_uint("request_id", request_id, MAX_REQUEST_ID)
        _check_uint("flags", flags, MAX_FLAGS)
        self._payload = _as_payload(payload)
        self._op = op
        self._request_id = request_id
        self._flags = flags

    @property
    def op(self) -> int:
        return self._op

    @property
    def request_id(self) -> int:
        return self._request_id

    @property
    def payload(self) -> bytes:
        return self._payload

    @property
    def flags(self) -> int:
        return self._flags

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Frame):
            return NotImplemented
        return (
            self._op == other._op
            and self._request_id == other._request_id
            and self._flags == other._flags
            and self._payload == other._payload
        )

    def __hash__(self) -> int:
        return hash((self._op, self._request_id, self._flags, self._payload))

    def __repr__(self) -> str:
        return (
            f"Frame(op={self._op}, request_id={self._request_id}, "
            f"payload={self._payload!r}, flags={self._flags})"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (Frame, (self._op, self._request_id, self._payload, self._flags))


def _encode_parts(
    op: object, request_id: object, payload: object, flags: object, max_frame_size: int
) -> tuple[bytes, bytes]:
    """Check one frame's fields; return its header and payload bytes."""
    _check_uint("op", op, MAX_OP)
    _check_uint("request_id", request_id, MAX_REQUEST_ID)
    _check_uint("flags", flags, MAX_FLAGS)
    data = _as_payload(payload)
    size = HEADER_SIZE + len(data)
    if size > max_frame_size:
        raise LocalProtocolError(f"frame of {size} bytes exceeds max_frame_size {max_frame_size}")
    return _HEADER.pack(size - LENGTH_PREFIX_SIZE, op, flags, request_id), data


def encode_frame(
    op: int,
    request_id: int,
    payload: bytes = b"",
    flags: int = 0,
    max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
) -> bytes:
    """Return the wire bytes of one frame.

    Raises ``TypeError`` for a wrong argument type and ``LocalProtocolError``
    for a value out of range or a frame larger than ``max_frame_size``.
    """
    _check_max_frame_size(max_frame_size)
    header, data = _encode_parts(op, request_id, payload, flags, max_frame_size)
    return header + data


class FrameEncoder:
    """Collects many frames into one buffer, so they leave in one write.

    A frame that fails its checks raises before anything is appended: the
    buffer never holds half a frame.
    """

    def __init__(self, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> None:
        self._max_frame_size = _check_max_frame_size(max_frame_size)
        self._buffer = bytearray()
        self._frames = 0

    @property
    def max_frame_size(self) -> int:
        return self._max_frame_size

    @property
    def frames_buffered(self) -> int:
        """How many frames ``take()`` would return."""
        return self._frames

    def write(self, op: int, request_id: int, payload: bytes = b"", flags: int = 0) -> None:
        """Append one frame to the buffer."""
        header, data = _encode_parts(op, request_id, payload, flags, self._max_frame_size)
        self._buffer += header
        self._buffer += data
        self._frames += 1

    def write_frame(self, frame: Frame) -> None:
        """Append a ``Frame`` object to the buffer."""
        if not isinstance(frame, Frame):
            raise TypeError(f"frame must be a Frame, got {type(frame).__name__}")
        self.write(frame._op, frame._request_id, frame._payload, frame._flags)

    def __len__(self) -> int:
        return len(self._buffer)

    def take(self) -> bytes:
        """Return every buffered byte and empty the buffer."""
        data = bytes(self._buffer)
        self._buffer.clear()
        self._frames = 0
        return data


class FrameDecoder:
    """Incremental decoder: ``feed`` it chunks of any size, iterate whole frames.

    A protocol violation raises ``RemoteProtocolError`` and breaks the
    decoder for good (every later ``feed`` or ``next_frame`` raises again).
    """

    def __init__(self, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> None:
        self._max_frame_size = _check_max_frame_size(max_frame_size)
        self._buffer = bytearray()
        self._pos = 0
        self._error: RemoteProtocolError | None = None

    @property
    def max_frame_size(self) -> int:
        return self._max_frame_size

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as frames."""
        return len(self._buffer) - self._pos

    @property
    def broken(self) -> bool:
        """True once a protocol violation has been seen."""
        return self._error is not None

    def at_boundary(self) -> bool:
        """True when every byte fed has been returned in frames (a clean place for EOF)."""
        return self._error is None and len(self._buffer) == self._pos

    def _raise_if_broken(self) -> None:
        if self._error is not None:
            raise RemoteProtocolError(f"decoder is broken: {self._error}")

    def feed(self, data: bytes) -> None:
        """Add received bytes; call ``next_frame`` (or iterate) to get frames."""
        self._raise_if_broken()
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"data must be bytes-like, got {type(data).__name__}")
        if self._pos and self._pos * 2 >= len(self._buffer):
            del self._buffer[: self._pos]
            self._pos = 0
        self._buffer += data if type(data) is bytes else bytes(data)

    def next_frame(self) -> Frame | None:
        """Return the next whole frame, or ``None`` if more bytes are needed."""
        self._raise_if_broken()
        buffer = self._buffer
        pos = self._pos
        available = len(buffer) - pos
        if available < LENGTH_PREFIX_SIZE:
            return None
        (length,) = _PREFIX.unpack_from(buffer, pos)
        size = length + LENGTH_PREFIX_SIZE
        if size < HEADER_SIZE:
            self._error = RemoteProtocolError(
                f"peer announced a frame of {size} bytes; a frame is at least {HEADER_SIZE} bytes"
            )
            raise self._error
        if size > self._max_frame_size:
            self._error = RemoteProtocolError(
                f"peer announced a frame of {size} bytes; max_frame_size is {self._max_frame_size}"
            )
            raise self._error
        if available < size:
            return None
        op, flags, request_id = _BODY_HEADER.unpack_from(buffer, pos + LENGTH_PREFIX_SIZE)
        frame = Frame.__new__(Frame)
        frame._op = op
        frame._request_id = request_id
        frame._flags = flags
        frame._payload = bytes(buffer[pos + HEADER_SIZE : pos + size])
        self._pos = pos + size
        return frame

    def __iter__(self) -> Iterator[Frame]:
        return self

    def __next__(self) -> Frame:
        frame = self.next_frame()
        if frame is None:
            raise StopIteration
        return frame


# --------------------------------------------------------------------------
# priority scheduler

PULL = "pull"
PUSH = "push"

_QUEUED = 0
_ASSIGNED = 1
_GONE = 2  # cancelled or finished; its heap entry (if any) is stale

_MIN_PRIORITY = -(2**63)
_MAX_PRIORITY = 2**63 - 1
_MAX_COUNT = 2**31 - 1


def _check_count(name: str, value: object, minimum: int) -> int:
    if type(value) is not int:
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum or value > _MAX_COUNT:
        raise ValueError(f"{name} must be in {minimum}..{_MAX_COUNT}, got {value}")
    return value


class _Task:
    __slots__ = ("key", "neg_priority", "seq", "series", "state", "worker")

    def __init__(self, key: Hashable, neg_priority: int, seq: int, series: Hashable) -> None:
        self.key = key
        self.neg_priority = neg_priority
        self.seq = seq
        self.series = series
        self.state = _QUEUED
        self.worker: _Worker | None = None


class _Worker:
    __slots__ = (
        "ident",
        "slots",
        "series",
        "demand",
        "running",
        "in_rotation",
        "starved",
        "removed",
    )

    def __init__(self, ident: Hashable, slots: int, series: set[Hashable]) -> None:
        self.ident = ident
        self.slots = slots
        self.series = series
        self.demand = 0
        self.running: dict[Hashable, _Task] = {}
        self.in_rotation = False
        self.starved = False
        self.removed = False


class PriorityScheduler:
    """Decides which ready task runs on which worker slot.

    Tasks run highest ``priority`` first, in arrival order among equals.  A
    task with a ``series`` runs only on a worker qualified for that series; a
    task without one runs anywhere.  ``policy`` is ``"pull"`` (a worker gets
    work only after asking with ``request_work``, up to its free slots) or
    ``"push"`` (tasks are dealt round-robin, up to ``slots + prefetch`` per
    worker).  Nothing is dispatched until ``assignments()`` is called; it
    returns ``(task_key, worker)`` pairs for the shell to carry out.
    """

    def __init__(self, policy: str = PULL, prefetch: int = 1) -> None:
        if policy != PULL and policy != PUSH:
            raise ValueError(f"policy must be 'pull' or 'push', got {policy!r}")
        self._policy_push = policy == PUSH
        self._prefetch = _check_count("prefetch", prefetch, 0)
        self._tasks: dict[Hashable, _Task] = {}
        self._workers: dict[Hashable, _Worker] = {}
        self._heaps: dict[Hashable, list[tuple[int, int, _Task]]] = {}
        self._stale = 0  # heap entries whose task is gone
        self._queued = 0
        self._seq = 0
        self._rotation: deque[_Worker] = deque()
        self._starved: dict[_Worker, None] = {}

    # -- introspection ----------------------------------------------------

    @property
    def policy(self) -> str:
        return PUSH if self._policy_push else PULL

    @property
    def prefetch(self) -> int:
        return self._prefetch

    @property
    def n_queued(self) -> int:
        """Tasks waiting for a worker."""
        return self._queued

    @property
    def n_assigned(self) -> int:
        """Tasks handed to a worker and not yet done."""
        return len(self._tasks) - self._queued

    def __len__(self) -> int:
        return len(self._tasks)

    def __contains__(self, key: object) -> bool:
        return key in self._tasks

    def workers(self) -> list[Hashable]:
        """Registered workers, in registration order."""
        return list(self._workers)

    def worker_tasks(self, worker: Hashable) -> list[Hashable]:
        """Keys assigned to ``worker``, in assignment order."""
        return list(self._get_worker(worker).running)

    def task_state(self, key: Hashable) -> str:
        """``"queued"`` or ``"assigned"``; ``KeyError`` for an unknown key."""
        task = self._get_task(key)
        return "queued" if task.state == _QUEUED else "assigned"

    def task_worker(self, key: Hashable) -> Hashable:
        """The worker a task is assigned to, or ``None`` while it is queued."""
        task = self._get_task(key)
        return None if task.worker is None else task.worker.ident

    # -- workers ------------------------------------------------------------

    def add_worker(self, worker: Hashable, slots: int = 1, series: Iterable[Hashable] = ()) -> None:
        """Register a worker with ``slots`` concurrent tasks and its series."""
        if worker is None:
            raise ValueError("worker id must not be None")
        if worker in self._workers:
            raise ValueError(f"worker {worker!r} is already registered")
        _check_count("slots", slots, 1)
        if isinstance(series, (str, bytes)):
            raise TypeError("series must be an iterable of series names, not one string")
        record = _Worker(worker, slots, set(series))
        self._workers[worker] = record
        self._wake(record)

    def remove_worker(self, worker: Hashable, requeue: bool = True) -> list[Hashable]:
        """Forget a worker; return the keys it held, in assignment order.

        With ``requeue`` those tasks go back to the ready queue in their
        original place (priority, then first arrival); without it they are
        forgotten and the caller owns them.
        """
        record = self._get_worker(worker)
        del self._workers[worker]
        record.removed = True
        if record.in_rotation:  # O(W): keeps add/remove churn from growing the rotation
            self._rotation.remove(record)
            record.in_rotation = False
        self._starved.pop(record, None)
        keys = list(record.running)
        for task in record.running.values():
            task.worker = None
            if requeue:
                self._enqueue(task)
            else:
                task.state = _GONE
                del self._tasks[task.key]
        record.running.clear()
        return keys

    def qualify_worker(self, worker: Hashable, series: Hashable) -> None:
        """Let ``worker`` run tasks of ``series`` from now on."""
        record = self._get_worker(worker)
        record.series.add(series)
        self._wake(record)

    def disqualify_worker(self, worker: Hashable, series: Hashable) -> None:
        """Stop giving ``worker`` tasks of ``series`` (running ones go on)."""
        self._get_worker(worker).series.discard(series)

    def request_work(self, worker: Hashable, count: int = 1) -> None:
        """Pull policy: ``worker`` asks for ``count`` more tasks (no-op for push)."""
        record = self._get_worker(worker)
        _check_count("count", count, 1)
        if not self._policy_push:
            record.demand = min(record.demand + count, _MAX_COUNT)
            self._wake(record)

    # -- tasks --------------------------------------------------------------

    def add_task(self, key: Hashable, priority: int = 0, series: Hashable = None) -> None:
        """Queue a task; higher ``priority`` runs first, FIFO among equals."""
        if type(priority) is not int:
            raise TypeError(f"priority must be an int, got {type(priority).__name__}")
        if priority < _MIN_PRIORITY or priority > _MAX_PRIORITY:
            raise ValueError(
                f"priority must be in {_MIN_PRIORITY}..{_MAX_PRIORITY}, got {priority}"
            )
        hash(series)  # an unhashable series fails here, before any state changes
        if key in self._tasks:
            raise ValueError(f"task {key!r} already exists")
        task = _Task(key, -priority, self._seq, series)
        self._seq += 1
        self._tasks[key] = task
        self._enqueue(task)

    def cancel_task(self, key: Hashable) -> Hashable:
        """Forget a task.  Returns ``None`` if it was queued, else its worker.

        A cancelled assigned task frees its slot at once; telling the worker
        to stop is the caller's job.
        """
        task = self._get_task(key)
        del self._tasks[key]
        if task.state == _QUEUED:
            task.state = _GONE
            self._queued -= 1
            self._stale += 1
            self._maybe_compact()
            return None
        return self._release(task)

    def task_done(self, key: Hashable) -> Hashable:
        """An assigned task finished: free its slot and return its worker."""
        task = self._get_task(key)
        if task.state != _ASSIGNED:
            raise ValueError(f"task {key!r} is not assigned to a worker")
        del self._tasks[key]
        return self._release(task)

    def assignments(self) -> list[tuple[Hashable, Hashable]]:
        """Dispatch: return ``(task_key, worker)`` pairs, each task at most once.

        Workers with room take turns (round-robin), each taking the best task
        it is qualified for.  Call it after any change that may free room.
        """
        out: list[tuple[Hashable, Hashable]] = []
        rotation = self._rotation
        while rotation and self._queued:
            worker = rotation.popleft()
            worker.in_rotation = False
            if worker.removed or self._capacity(worker) <= 0:
                continue
            task = self._pop_best(worker)
            if task is None:
                worker.starved = True
                self._starved[worker] = None
                continue
            task.state = _ASSIGNED
            task.worker = worker
            self._queued -= 1
            worker.running[task.key] = task
            if not self._policy_push:
                worker.demand -= 1
            out.append((task.key, worker.ident))
            if self._capacity(worker) > 0:
                worker.in_rotation = True
                rotation.append(worker)
        return out

    # -- invariants -----------------------------------------------------------

    def validate(self) -> None:
        """Check every internal invariant; ``AssertionError`` names the broken one."""
        queued = 0
        for key, task in self._tasks.items():
            assert task.key == key, "task indexed under a wrong key"
            if task.state == _QUEUED:
                queued += 1
                assert task.worker is None, "queued task has a worker"
            else:
                assert task.state == _ASSIGNED, "registered task is gone"
                assert task.worker is not None, "assigned task has no worker"
                assert not task.worker.removed, "task assigned to a removed worker"
                assert task.worker.running.get(key) is task, "worker does not list its task"
        assert queued == self._queued, "queued count is wrong"
        live = stale = 0
        for heap in self._heaps.values():
            for entry in heap:
                if entry[2].state == _QUEUED:
                    live += 1
                    assert self._tasks.get(entry[2].key) is entry[2], "heap holds unknown task"
                else:
                    stale += 1
        assert live == self._queued, "heaps and queued count disagree"
        assert stale == self._stale, "stale count is wrong"
        in_rotation = {id(w) for w in self._rotation}
        assert not any(w.removed for w in self._rotation), "removed worker in the rotation"
        for ident, worker in self._workers.items():
            assert worker.ident == ident, "worker indexed under a wrong id"
            assert not worker.removed, "removed worker still registered"
            for key, task in worker.running.items():
                assert task.worker is worker, "running task is not assigned here"
                assert task.state == _ASSIGNED, "running task is not assigned here"
                assert self._tasks.get(key) is task, "running task is not registered"
            limit = worker.slots + (self._prefetch if self._policy_push else 0)
            assert len(worker.running) <= limit, "worker holds more tasks than its limit"
            assert worker.demand >= 0, "negative demand"
            assert worker.in_rotation == (id(worker) in in_rotation), "rotation flag is wrong"
            assert worker.starved == (worker in self._starved), "starved flag is wrong"
            if self._capacity(worker) > 0:
                assert worker.in_rotation or worker.starved, "worker with room is forgotten"

    # -- internals --------------------------------------------------------------

    def _get_task(self, key: Hashable) -> _Task:
        try:
            return self._tasks[key]
        except KeyError:
            raise KeyError(f"unknown task {key!r}") from None

    def _get_worker(self, worker: Hashable) -> _Worker:
        try:
            return self._workers[worker]
        except KeyError:
            raise KeyError(f"unknown worker {worker!r}") from None

    def _capacity(self, worker: _Worker) -> int:
        if self._policy_push:
            return worker.slots + self._prefetch - len(worker.running)
        return min(worker.demand, worker.slots - len(worker.running))

    def _wake(self, worker: _Worker) -> None:
        if worker.starved:
            worker.starved = False
            del self._starved[worker]
        if not worker.in_rotation and self._capacity(worker) > 0:
            worker.in_rotation = True
            self._rotation.append(worker)

    def _release(self, task: _Task) -> Hashable:
        worker = task.worker
        assert worker is not None
        task.state = _GONE
        task.worker = None
        del worker.running[task.key]
        self._wake(worker)
        return worker.ident

    def _enqueue(self, task: _Task) -> None:
        task.state = _QUEUED
        self._queued += 1
        heap = self._heaps.get(task.series)
        if heap is None:
            heap = self._heaps[task.series] = []
        heapq.heappush(heap, (task.neg_priority, task.seq, task))
        if self._starved:
            series = task.series
            for worker in list(self._starved):
                if series is None or series in worker.series:
                    self._wake(worker)

    def _top(self, heap: list[tuple[int, int, _Task]] | None) -> _Task | None:
        while heap:
            task = heap[0][2]
            if task.state == _QUEUED:
                return task
            heapq.heappop(heap)
            self._stale -= 1
        return None

    def _pop_best(self, worker: _Worker) -> _Task | None:
        best = self._top(self._heaps.get(None))
        best_series: Any = None
        for series in worker.series:
            task = self._top(self._heaps.get(series))
            if task is not None and (
                best is None
                or task.neg_priority < best.neg_priority
                or (task.neg_priority == best.neg_priority and task.seq < best.seq)
            ):
                best = task
                best_series = series
        if best is not None:
            heapq.heappop(self._heaps[best_series])
        return best

    def _maybe_compact(self) -> None:
        if self._stale > 1024 and self._stale > self._queued:
            for series, heap in list(self._heaps.items()):
                live = [entry for entry in heap if entry[2].state == _QUEUED]
                if live:
                    heapq.heapify(live)
                    self._heaps[series] = live
                else:
                    del self._heaps[series]
            self._stale = 0
