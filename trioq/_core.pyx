# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Compiled core: the frame codec and the priority scheduler.

This is the hot path.  ``trioq/_core_py.py`` is its pure-Python twin and the
readable reference: the frame layout, the rules and the complexity are
described there.  Both modules have the same names, signatures, exceptions
and messages (``tests/test_core_twins.py`` drives them in lockstep).
What differs is only the machinery: C buffers for the codec, typed records
and a hand-written binary heap for the scheduler.
"""

cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.mem cimport PyMem_Free, PyMem_Realloc
from libc.stdint cimport int64_t, uint8_t, uint32_t
from libc.string cimport memcpy, memmove


cdef extern from "Python.h":
    ctypedef struct PyObject
    int PyList_SetSlice(object lst, Py_ssize_t low, Py_ssize_t high, PyObject* items) except -1
    PyObject* PyDict_SetDefault(object d, object key, object default) except NULL

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

IMPLEMENTATION = "compiled"

cdef enum:
    C_PREFIX = 4
    C_HEADER = 10

LENGTH_PREFIX_SIZE = C_PREFIX
HEADER_SIZE = C_HEADER
DEFAULT_MAX_FRAME_SIZE = 64 * 1024 * 1024
MAX_OP = 0xFF
MAX_FLAGS = 0xFF
MAX_REQUEST_ID = 0xFFFFFFFF
cdef object _MAX_LENGTH_FIELD = 0xFFFFFFFF


# --------------------------------------------------------------------------
# argument checks (messages identical to the twin)


cdef inline object _check_uint(str name, object value, object maximum):
    if type(value) is not int:
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 0 or value > maximum:
        raise LocalProtocolError(f"{name} must be in 0..{maximum}, got {value}")
    return value


cdef object _check_max_frame_size(object value):
    if type(value) is not int:
        raise TypeError(f"max_frame_size must be an int, got {type(value).__name__}")
    if value < C_HEADER or value > _MAX_LENGTH_FIELD:
        raise ValueError(
            f"max_frame_size must be in {C_HEADER}..{_MAX_LENGTH_FIELD}, got {value}"
        )
    return value


cdef inline bytes _as_payload(object payload):
    if type(payload) is bytes:
        return <bytes>payload
    if not isinstance(payload, (bytes, bytearray, memoryview)):
        raise TypeError(f"payload must be bytes-like, got {type(payload).__name__}")
    return bytes(payload)


cdef inline void _put_u32(char* out, uint32_t value) noexcept:
    out[0] = <char>((value >> 24) & 0xFF)
    out[1] = <char>((value >> 16) & 0xFF)
    out[2] = <char>((value >> 8) & 0xFF)
    out[3] = <char>(value & 0xFF)


cdef inline uint32_t _get_u32(const unsigned char* data) noexcept:
    return (
        (<uint32_t>data[0] << 24)
        | (<uint32_t>data[1] << 16)
        | (<uint32_t>data[2] << 8)
        | <uint32_t>data[3]
    )


cdef inline void _write_header(
    char* out, uint32_t length, uint8_t op, uint8_t flags, uint32_t request_id
) noexcept:
    _put_u32(out, length)
    out[4] = <char>op
    out[5] = <char>flags
    _put_u32(out + 6, request_id)


# --------------------------------------------------------------------------
# frames


cdef class Frame:
    """One decoded (or to-be-encoded) frame: op code, request id, flags, payload.

    Frames are immutable values: equal when all four fields are equal.
    """

    cdef readonly int op
    cdef readonly object request_id
    cdef readonly bytes payload
    cdef readonly int flags

    def __init__(self, op, request_id=0, payload=b"", flags=0):
        _check_uint("op", op, MAX_OP)
        _check_uint("request_id", request_id, MAX_REQUEST_ID)
        _check_uint("flags", flags, MAX_FLAGS)
        self.payload = _as_payload(payload)
        self.op = op
        self.request_id = request_id
        self.flags = flags

    def __eq__(self, other):
        if not isinstance(other, Frame):
            return NotImplemented
        cdef Frame o = <Frame>other
        return (
            self.op == o.op
            and self.request_id == o.request_id
            and self.flags == o.flags
            and self.payload == o.payload
        )

    def __ne__(self, other):
        result = self.__eq__(other)
        if result is NotImplemented:
            return result
        return not result

    def __hash__(self):
        return hash((self.op, self.request_id, self.flags, self.payload))

    def __repr__(self):
        return (
            f"Frame(op={self.op}, request_id={self.request_id}, "
            f"payload={self.payload!r}, flags={self.flags})"
        )

    def __reduce__(self):
        return (Frame, (self.op, self.request_id, self.payload, self.flags))


cdef bytes _encode_one(object op, object request_id, object payload, object flags):
    """Check one frame's fields; return its payload as bytes."""
    _check_uint("op", op, MAX_OP)
    _check_uint("request_id", request_id, MAX_REQUEST_ID)
    _check_uint("flags", flags, MAX_FLAGS)
    return _as_payload(payload)


def encode_frame(op, request_id, payload=b"", flags=0, max_frame_size=DEFAULT_MAX_FRAME_SIZE):
    """Return the wire bytes of one frame.

    Raises ``TypeError`` for a wrong argument type and ``LocalProtocolError``
    for a value out of range or a frame larger than ``max_frame_size``.
    """
    cdef Py_ssize_t limit = _check_max_frame_size(max_frame_size)
    cdef bytes data = _encode_one(op, request_id, payload, flags)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(data)
    cdef Py_ssize_t size = C_HEADER + n
    if size > limit:
        raise LocalProtocolError(f"frame of {size} bytes exceeds max_frame_size {limit}")
    cdef bytes out = PyBytes_FromStringAndSize(NULL, size)
    cdef char* p = PyBytes_AS_STRING(out)
    _write_header(p, <uint32_t>(size - C_PREFIX), <uint8_t>op, <uint8_t>flags,
                  <uint32_t>request_id)
    memcpy(p + C_HEADER, PyBytes_AS_STRING(data), n)
    return out


cdef class FrameEncoder:
    """Collects many frames into one buffer, so they leave in one write.

    A frame that fails its checks raises before anything is appended: the
    buffer never holds half a frame.
    """

    cdef char* _buf
    cdef Py_ssize_t _len
    cdef Py_ssize_t _cap
    cdef Py_ssize_t _max
    cdef Py_ssize_t _frames

    def __cinit__(self):
        self._buf = NULL
        self._len = 0
        self._cap = 0
        self._frames = 0

    def __init__(self, max_frame_size=DEFAULT_MAX_FRAME_SIZE):
        self._max = _check_max_frame_size(max_frame_size)

    def __dealloc__(self):
        PyMem_Free(self._buf)

    @property
    def max_frame_size(self):
        return self._max

    @property
    def frames_buffered(self):
        """How many frames ``take()`` would return."""
        return self._frames

    cdef int _reserve(self, Py_ssize_t extra) except -1:
        cdef Py_ssize_t need = self._len + extra
        cdef Py_ssize_t cap
        cdef char* grown
        if need <= self._cap:
            return 0
        cap = self._cap * 2 if self._cap else 4096
        while cap < need:
            cap *= 2
        grown = <char*>PyMem_Realloc(self._buf, cap)
        if grown == NULL:
            raise MemoryError()
        self._buf = grown
        self._cap = cap
        return 0

    cpdef write(self, op, request_id, payload=b"", flags=0):
        """Append one frame to the buffer."""
        cdef bytes data = _encode_one(op, request_id, payload, flags)
        cdef Py_ssize_t n = PyBytes_GET_SIZE(data)
        cdef Py_ssize_t size = C_HEADER + n
        if size > self._max:
            raise LocalProtocolError(
                f"frame of {size} bytes exceeds max_frame_size {self._max}"
            )
        self._reserve(size)
        cdef char* p = self._buf + self._len
        _write_header(p, <uint32_t>(size - C_PREFIX), <uint8_t>op, <uint8_t>flags,
                      <uint32_t>request_id)
        memcpy(p + C_HEADER, PyBytes_AS_STRING(data), n)
        self._len += size
        self._frames += 1

    def write_frame(self, frame):
        """Append a ``Frame`` object to the buffer."""
        if not isinstance(frame, Frame):
            raise TypeError(f"frame must be a Frame, got {type(frame).__name__}")
        cdef Frame f = <Frame>frame
        self.write(f.op, f.request_id, f.payload, f.flags)

    def __len__(self):
        return self._len

    def take(self):
        """Return every buffered byte and empty the buffer."""
        cdef bytes data = PyBytes_FromStringAndSize(self._buf, self._len)
        self._len = 0
        self._frames = 0
        if self._cap > 1024 * 1024:  # do not keep a huge buffer after a burst
            PyMem_Free(self._buf)
            self._buf = NULL
            self._cap = 0
        return data


cdef class FrameDecoder:
    """Incremental decoder: ``feed`` it chunks of any size, iterate whole frames.

    A protocol violation raises ``RemoteProtocolError`` and breaks the
    decoder for good (every later ``feed`` or ``next_frame`` raises again).
    """

    cdef char* _buf
    cdef Py_ssize_t _start
    cdef Py_ssize_t _end
    cdef Py_ssize_t _cap
    cdef Py_ssize_t _max
    cdef object _error

    def __cinit__(self):
        self._buf = NULL
        self._start = 0
        self._end = 0
        self._cap = 0
        self._error = None

    def __init__(self, max_frame_size=DEFAULT_MAX_FRAME_SIZE):
        self._max = _check_max_frame_size(max_frame_size)

    def __dealloc__(self):
        PyMem_Free(self._buf)

    @property
    def max_frame_size(self):
        return self._max

    @property
    def buffered(self):
        """Bytes received but not yet returned as frames."""
        return self._end - self._start

    @property
    def broken(self):
        """True once a protocol violation has been seen."""
        return self._error is not None

    def at_boundary(self):
        """True when every byte fed has been returned in frames (a clean place for EOF)."""
        return self._error is None and self._end == self._start

    cdef int _raise_if_broken(self) except -1:
        if self._error is not None:
            raise RemoteProtocolError(f"decoder is broken: {self._error}")
        return 0

    def feed(self, data):
        """Add received bytes; call ``next_frame`` (or iterate) to get frames."""
        self._raise_if_broken()
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"data must be bytes-like, got {type(data).__name__}")
        cdef bytes chunk = data if type(data) is bytes else bytes(data)
        cdef Py_ssize_t n = PyBytes_GET_SIZE(chunk)
        cdef Py_ssize_t pending = self._end - self._start
        cdef Py_ssize_t cap
        cdef char* grown
        if n == 0:
            return
        if self._start and (self._start * 2 >= self._end or self._end + n > self._cap):
            memmove(self._buf, self._buf + self._start, pending)
            self._start = 0
            self._end = pending
        if self._end + n > self._cap:
            cap = self._cap * 2 if self._cap else 65536
            while cap < self._end + n:
                cap *= 2
            grown = <char*>PyMem_Realloc(self._buf, cap)
            if grown == NULL:
                raise MemoryError()
            self._buf = grown
            self._cap = cap
        memcpy(self._buf + self._end, PyBytes_AS_STRING(chunk), n)
        self._end += n

    cpdef Frame next_frame(self):
        """Return the next whole frame, or ``None`` if more bytes are needed."""
        self._raise_if_broken()
        cdef Py_ssize_t available = self._end - self._start
        cdef const unsigned char* p
        cdef Py_ssize_t size
        cdef Frame frame
        if available < C_PREFIX:
            return None
        p = <const unsigned char*>(self._buf + self._start)
        size = <Py_ssize_t>_get_u32(p) + C_PREFIX
        if size < C_HEADER:
            self._error = RemoteProtocolError(
                f"peer announced a frame of {size} bytes; "
                f"a frame is at least {C_HEADER} bytes"
            )
            raise self._error
        if size > self._max:
            self._error = RemoteProtocolError(
                f"peer announced a frame of {size} bytes; "
                f"max_frame_size is {self._max}"
            )
            raise self._error
        if available < size:
            return None
        frame = Frame.__new__(Frame)
        frame.op = p[4]
        frame.flags = p[5]
        frame.request_id = _get_u32(p + 6)
        frame.payload = PyBytes_FromStringAndSize(<const char*>(p + C_HEADER), size - C_HEADER)
        self._start += size
        if self._start == self._end:
            self._start = 0
            self._end = 0
        return frame

    def __iter__(self):
        return self

    def __next__(self):
        frame = self.next_frame()
        if frame is None:
            raise StopIteration
        return frame


# --------------------------------------------------------------------------
# priority scheduler

PULL = "pull"
PUSH = "push"

cdef enum:
    QUEUED = 0
    ASSIGNED = 1
    GONE = 2  # cancelled or finished; its heap entry (if any) is stale

cdef object _MIN_PRIORITY = -(2**63)
cdef object _MAX_PRIORITY = 2**63 - 1
cdef enum:
    MAX_COUNT = 2147483647


cdef object _check_count(str name, object value, long minimum):
    cdef long long v
    if type(value) is not int:
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    try:
        v = value
    except OverflowError:
        v = -1 if value < 0 else <long long>MAX_COUNT + 1  # out of range either way
    if v < minimum or v > MAX_COUNT:
        raise ValueError(f"{name} must be in {minimum}..{MAX_COUNT}, got {value}")
    return value


@cython.freelist(256)
cdef class _Task:
    cdef object key
    cdef int64_t priority
    cdef int64_t seq
    cdef object series
    cdef int state
    cdef _Worker worker


cdef class _Worker:
    cdef object ident
    cdef long slots
    cdef set series
    cdef long demand
    cdef dict running
    cdef long n_running  # len(running), kept as a C int for the hot path
    cdef bint in_rotation
    cdef bint starved
    cdef bint removed


cdef inline bint _before(_Task a, _Task b) noexcept:
    """Heap order: higher priority first, then earlier arrival."""
    if a.priority != b.priority:
        return a.priority > b.priority
    return a.seq < b.seq


cdef void _heap_push(list heap, _Task task):
    cdef Py_ssize_t i = len(heap)
    cdef Py_ssize_t parent
    cdef _Task above
    heap.append(task)
    while i > 0:
        parent = (i - 1) >> 1
        above = <_Task>heap[parent]
        if not _before(task, above):
            break
        heap[i] = above
        i = parent
    heap[i] = task


cdef _Task _heap_pop(list heap):
    cdef _Task top = <_Task>heap[0]
    cdef _Task last = <_Task>heap.pop()
    cdef Py_ssize_t n = len(heap)
    cdef Py_ssize_t i = 0
    cdef Py_ssize_t child
    cdef _Task a
    if n == 0:
        return top
    while True:
        child = 2 * i + 1
        if child >= n:
            break
        a = <_Task>heap[child]
        if child + 1 < n and _before(<_Task>heap[child + 1], a):
            child += 1
            a = <_Task>heap[child]
        if not _before(a, last):
            break
        heap[i] = a
        i = child
    heap[i] = last
    return top


cdef void _heapify(list heap):
    cdef Py_ssize_t n = len(heap)
    cdef Py_ssize_t start = n // 2 - 1
    cdef Py_ssize_t i, child
    cdef _Task item, a
    while start >= 0:
        item = <_Task>heap[start]
        i = start
        while True:
            child = 2 * i + 1
            if child >= n:
                break
            a = <_Task>heap[child]
            if child + 1 < n and _before(<_Task>heap[child + 1], a):
                child += 1
                a = <_Task>heap[child]
            if not _before(a, item):
                break
            heap[i] = a
            i = child
        heap[i] = item
        start -= 1


cdef class PriorityScheduler:
    """Decides which ready task runs on which worker slot.

    Tasks run highest ``priority`` first, in arrival order among equals.  A
    task with a ``series`` runs only on a worker qualified for that series; a
    task without one runs anywhere.  ``policy`` is ``"pull"`` (a worker gets
    work only after asking with ``request_work``, up to its free slots) or
    ``"push"`` (tasks are dealt round-robin, up to ``slots + prefetch`` per
    worker).  Nothing is dispatched until ``assignments()`` is called; it
    returns ``(task_key, worker)`` pairs for the shell to carry out.
    """

    cdef bint _policy_push
    cdef long _prefetch
    cdef dict _tasks
    cdef dict _workers
    cdef dict _heaps  # series -> heap (a list of _Task); the None heap is permanent
    cdef list _any_heap  # self._heaps[None], for tasks without a series
    cdef Py_ssize_t _stale
    cdef Py_ssize_t _queued
    cdef int64_t _seq
    cdef list _rotation  # FIFO of workers with room: items[_rotation_head:]
    cdef Py_ssize_t _rotation_head
    cdef dict _starved

    def __init__(self, policy=PULL, prefetch=1):
        if policy != PULL and policy != PUSH:
            raise ValueError(f"policy must be 'pull' or 'push', got {policy!r}")
        self._policy_push = policy == PUSH
        self._prefetch = _check_count("prefetch", prefetch, 0)
        self._tasks = {}
        self._workers = {}
        self._any_heap = []
        self._heaps = {None: self._any_heap}
        self._stale = 0
        self._queued = 0
        self._seq = 0
        self._rotation = []
        self._rotation_head = 0
        self._starved = {}

    # -- introspection ----------------------------------------------------

    @property
    def policy(self):
        return PUSH if self._policy_push else PULL

    @property
    def prefetch(self):
        return self._prefetch

    @property
    def n_queued(self):
        """Tasks waiting for a worker."""
        return self._queued

    @property
    def n_assigned(self):
        """Tasks handed to a worker and not yet done."""
        return len(self._tasks) - self._queued

    def __len__(self):
        return len(self._tasks)

    def __contains__(self, key):
        return key in self._tasks

    def workers(self):
        """Registered workers, in registration order."""
        return list(self._workers)

    def worker_tasks(self, worker):
        """Keys assigned to ``worker``, in assignment order."""
        return list(self._get_worker(worker).running)

    def task_state(self, key):
        """``"queued"`` or ``"assigned"``; ``KeyError`` for an unknown key."""
        cdef _Task task = self._get_task(key)
        return "queued" if task.state == QUEUED else "assigned"

    def task_worker(self, key):
        """The worker a task is assigned to, or ``None`` while it is queued."""
        cdef _Task task = self._get_task(key)
        return None if task.worker is None else task.worker.ident

    # -- workers ------------------------------------------------------------

    def add_worker(self, worker, slots=1, series=()):
        """Register a worker with ``slots`` concurrent tasks and its series."""
        if worker is None:
            raise ValueError("worker id must not be None")
        if worker in self._workers:
            raise ValueError(f"worker {worker!r} is already registered")
        _check_count("slots", slots, 1)
        if isinstance(series, (str, bytes)):
            raise TypeError("series must be an iterable of series names, not one string")
        cdef _Worker record = _Worker.__new__(_Worker)
        record.ident = worker
        record.slots = slots
        record.series = set(series)
        record.demand = 0
        record.running = {}
        record.n_running = 0
        record.in_rotation = False
        record.starved = False
        record.removed = False
        self._workers[worker] = record
        self._wake(record)

    def remove_worker(self, worker, requeue=True):
        """Forget a worker; return the keys it held, in assignment order.

        With ``requeue`` those tasks go back to the ready queue in their
        original place (priority, then first arrival); without it they are
        forgotten and the caller owns them.
        """
        cdef _Worker record = self._get_worker(worker)
        cdef _Task task
        del self._workers[worker]
        record.removed = True
        if record.in_rotation:  # O(W): keeps add/remove churn from growing the rotation
            del self._rotation[self._rotation.index(record, self._rotation_head)]
            record.in_rotation = False
        self._starved.pop(record, None)
        keys = list(record.running)
        for value in record.running.values():
            task = <_Task>value
            task.worker = None
            if requeue:
                self._enqueue(task)
            else:
                task.state = GONE
                del self._tasks[task.key]
        record.running.clear()
        record.n_running = 0
        return keys

    def qualify_worker(self, worker, series):
        """Let ``worker`` run tasks of ``series`` from now on."""
        cdef _Worker record = self._get_worker(worker)
        record.series.add(series)
        self._wake(record)

    def disqualify_worker(self, worker, series):
        """Stop giving ``worker`` tasks of ``series`` (running ones go on)."""
        self._get_worker(worker).series.discard(series)

    def request_work(self, worker, count=1):
        """Pull policy: ``worker`` asks for ``count`` more tasks (no-op for push)."""
        cdef _Worker record = self._get_worker(worker)
        _check_count("count", count, 1)
        cdef long n = count
        if not self._policy_push:
            record.demand = MAX_COUNT if record.demand > MAX_COUNT - n else record.demand + n
            self._wake(record)

    # -- tasks --------------------------------------------------------------

    def add_task(self, key, priority=0, series=None):
        """Queue a task; higher ``priority`` runs first, FIFO among equals."""
        cdef int64_t prio
        if type(priority) is not int:
            raise TypeError(f"priority must be an int, got {type(priority).__name__}")
        try:
            prio = priority
        except OverflowError:
            raise ValueError(
                f"priority must be in {_MIN_PRIORITY}..{_MAX_PRIORITY}, got {priority}"
            ) from None
        hash(series)  # an unhashable series fails here, before any state changes
        cdef _Task task = _Task.__new__(_Task)
        if <object>PyDict_SetDefault(self._tasks, key, task) is not task:
            raise ValueError(f"task {key!r} already exists")
        task.key = key
        task.priority = prio
        task.seq = self._seq
        task.series = series
        task.worker = None
        self._seq += 1
        self._enqueue(task)

    def cancel_task(self, key):
        """Forget a task.  Returns ``None`` if it was queued, else its worker.

        A cancelled assigned task frees its slot at once; telling the worker
        to stop is the caller's job.
        """
        cdef _Task task = self._get_task(key)
        del self._tasks[key]
        if task.state == QUEUED:
            task.state = GONE
            self._queued -= 1
            self._stale += 1
            self._maybe_compact()
            return None
        return self._release(task)

    def task_done(self, key):
        """An assigned task finished: free its slot and return its worker."""
        value = self._tasks.pop(key, None)  # one lookup on the hot path
        if value is None:
            raise KeyError(f"unknown task {key!r}")
        cdef _Task task = <_Task>value
        if task.state != ASSIGNED:
            self._tasks[key] = task
            raise ValueError(f"task {key!r} is not assigned to a worker")
        return self._release(task)

    def assignments(self):
        """Dispatch: return ``(task_key, worker)`` pairs, each task at most once.

        Workers with room take turns (round-robin), each taking the best task
        it is qualified for.  Call it after any change that may free room.
        """
        cdef list out = []
        cdef list rotation = self._rotation
        cdef _Worker worker
        cdef _Task task
        while self._rotation_head < len(rotation) and self._queued:
            worker = <_Worker>rotation[self._rotation_head]
            self._rotation_head += 1
            worker.in_rotation = False
            if worker.removed or self._capacity(worker) <= 0:
                continue
            task = self._pop_best(worker)
            if task is None:
                worker.starved = True
                self._starved[worker] = None
                continue
            task.state = ASSIGNED
            task.worker = worker
            self._queued -= 1
            worker.running[task.key] = task
            worker.n_running += 1
            if not self._policy_push:
                worker.demand -= 1
            out.append((task.key, worker.ident))
            if self._capacity(worker) > 0:
                worker.in_rotation = True
                rotation.append(worker)
        self._compact_rotation()
        return out

    cdef void _compact_rotation(self):
        cdef Py_ssize_t head = self._rotation_head
        if head and head * 2 >= len(self._rotation):
            PyList_SetSlice(self._rotation, 0, head, NULL)
            self._rotation_head = 0

    # -- invariants -----------------------------------------------------------

    def validate(self):
        """Check every internal invariant; ``AssertionError`` names the broken one."""
        cdef _Task task
        cdef _Worker worker
        cdef Py_ssize_t queued = 0, live = 0, stale = 0
        for key, value in self._tasks.items():
            task = <_Task>value
            assert task.key == key, "task indexed under a wrong key"
            if task.state == QUEUED:
                queued += 1
                assert task.worker is None, "queued task has a worker"
            else:
                assert task.state == ASSIGNED, "registered task is gone"
                assert task.worker is not None, "assigned task has no worker"
                assert not task.worker.removed, "task assigned to a removed worker"
                assert task.worker.running.get(key) is task, "worker does not list its task"
        assert queued == self._queued, "queued count is wrong"
        for heap in self._heaps.values():
            for value in heap:
                task = <_Task>value
                if task.state == QUEUED:
                    live += 1
                    assert self._tasks.get(task.key) is task, "heap holds unknown task"
                else:
                    stale += 1
        assert live == self._queued, "heaps and queued count disagree"
        assert stale == self._stale, "stale count is wrong"
        in_rotation = {id(w) for w in self._rotation[self._rotation_head:]}
        assert not any((<_Worker>w).removed for w in self._rotation[self._rotation_head:]), \
            "removed worker in the rotation"
        for ident, value in self._workers.items():
            worker = <_Worker>value
            assert worker.ident == ident, "worker indexed under a wrong id"
            assert not worker.removed, "removed worker still registered"
            for key, running in worker.running.items():
                task = <_Task>running
                assert task.worker is worker and task.state == ASSIGNED, "running task is not assigned here"
                assert self._tasks.get(key) is task, "running task is not registered"
            limit = worker.slots + (self._prefetch if self._policy_push else 0)
            assert len(worker.running) <= limit, "worker holds more tasks than its limit"
            assert len(worker.running) == worker.n_running, "running count is wrong"
            assert worker.demand >= 0, "negative demand"
            assert worker.in_rotation == (id(worker) in in_rotation), "rotation flag is wrong"
            assert worker.starved == (worker in self._starved), "starved flag is wrong"
            if self._capacity(worker) > 0:
                assert worker.in_rotation or worker.starved, "worker with room is forgotten"

    # -- internals --------------------------------------------------------------

    cdef _Task _get_task(self, key):
        value = self._tasks.get(key)
        if value is None:
            raise KeyError(f"unknown task {key!r}")
        return <_Task>value

    cdef _Worker _get_worker(self, worker):
        value = self._workers.get(worker)
        if value is None:
            raise KeyError(f"unknown worker {worker!r}")
        return <_Worker>value

    cdef inline long _capacity(self, _Worker worker):
        cdef long free
        if self._policy_push:
            return worker.slots + self._prefetch - worker.n_running
        free = worker.slots - worker.n_running
        return worker.demand if worker.demand < free else free

    cdef void _wake(self, _Worker worker):
        if worker.starved:
            worker.starved = False
            del self._starved[worker]
        if not worker.in_rotation and self._capacity(worker) > 0:
            worker.in_rotation = True
            self._rotation.append(worker)

    cdef object _release(self, _Task task):
        cdef _Worker worker = task.worker
        task.state = GONE
        task.worker = None
        del worker.running[task.key]
        worker.n_running -= 1
        self._wake(worker)
        return worker.ident

    cdef void _enqueue(self, _Task task):
        cdef _Worker worker
        task.state = QUEUED
        self._queued += 1
        if task.series is None:
            _heap_push(self._any_heap, task)
        else:
            heap = self._heaps.get(task.series)
            if heap is None:
                heap = []
                self._heaps[task.series] = heap
            _heap_push(<list>heap, task)
        if self._starved:
            series = task.series
            for value in list(self._starved):
                worker = <_Worker>value
                if series is None or series in worker.series:
                    self._wake(worker)

    cdef _Task _top(self, object heap):
        cdef list items
        cdef _Task task
        if heap is None:
            return None
        items = <list>heap
        while items:
            task = <_Task>items[0]
            if task.state == QUEUED:
                return task
            _heap_pop(items)
            self._stale -= 1
        return None

    cdef _Task _pop_best(self, _Worker worker):
        cdef _Task best = self._top(self._any_heap)
        cdef _Task task
        cdef list best_heap = self._any_heap
        if worker.series:
            for series in worker.series:
                heap = self._heaps.get(series)
                task = self._top(heap)
                if task is not None and (best is None or _before(task, best)):
                    best = task
                    best_heap = <list>heap
        if best is not None:
            _heap_pop(best_heap)
        return best

    cdef void _maybe_compact(self):
        cdef _Task task
        if self._stale > 1024 and self._stale > self._queued:
            for series, heap in list(self._heaps.items()):
                live = [value for value in heap if (<_Task>value).state == QUEUED]
                if live or series is None:
                    _heapify(live)
                    heap[:] = live
                else:
                    del self._heaps[series]
            self._stale = 0
