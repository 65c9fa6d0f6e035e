"""Workloads on the sans-IO core, shared by the asv suite and ``core_ratio.py``.

Rules: each ``prepare_*`` function takes a core module (compiled or twin),
does its setup untimed, and returns a zero-argument callable that does the
timed work and returns how many units it handled (frames, or scheduler
calls), so a caller can check the work really happened.  The callables may
be called again and again: codec callables start from a fresh encoder or
decoder each time, the scheduler callable keeps the scheduler in a steady
state (same backlog, same running tasks) from call to call.  The loops are
plain Python and identical for both cores, so the harness costs the same on
both sides of a ratio.

Nothing here imports a core; the caller picks one.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable
from types import ModuleType

__all__ = [
    "OP",
    "PRIORITIES",
    "make_stream",
    "split",
    "prepare_encode",
    "prepare_decode",
    "prepare_schedule",
    "prepare_fill_drain",
    "calls_per_step",
]

OP = 7  # an arbitrary op code; the codec treats all alike

# Mixed priorities, most tasks at the default: drawn once so every run and
# both cores see the same sequence.  Indexed by ``key & 1023``.
_rng = random.Random(20240601)
PRIORITIES: list[int] = [_rng.choice((0, 0, 0, 0, 0, 1, 1, 2, 5, -1, -3)) for _ in range(1024)]
del _rng


def make_stream(core: ModuleType, frames: int, payload_size: int) -> bytes:
    """The wire bytes of ``frames`` frames with ``payload_size``-byte payloads."""
    encoder = core.FrameEncoder()
    payload = bytes(range(256)) * (payload_size // 256) + bytes(range(payload_size % 256))
    for request_id in range(frames):
        encoder.write(OP, request_id, payload)
    return encoder.take()


def split(data: bytes, chunk_size: int) -> list[bytes]:
    """``data`` cut into ``chunk_size``-byte pieces (the last may be shorter)."""
    return [data[i : i + chunk_size] for i in range(0, len(data), chunk_size)]


def prepare_encode(
    core: ModuleType, frames: int, payload_size: int = 16, flush_every: int = 256
) -> Callable[[], int]:
    """``FrameEncoder.write`` ``frames`` times, ``take()`` every ``flush_every`` frames.

    Returns the number of frames written.
    """
    FrameEncoder = core.FrameEncoder
    payload = b"x" * payload_size
    batches = [
        range(start, min(start + flush_every, frames)) for start in range(0, frames, flush_every)
    ]
    frame_size = 10 + payload_size

    def run() -> int:
        encoder = FrameEncoder()
        write = encoder.write
        take = encoder.take
        nbytes = 0
        for batch in batches:
            for request_id in batch:
                write(OP, request_id, payload)
            nbytes += len(take())
        assert nbytes == frames * frame_size, "encoder lost bytes"
        return frames

    return run


def prepare_decode(
    core: ModuleType, frames: int, payload_size: int = 16, chunk_size: int | None = 65536
) -> Callable[[], int]:
    """Feed a stream of ``frames`` frames in ``chunk_size`` pieces, draining frames after each.

    ``chunk_size=None`` feeds the whole stream at once.  The stream is built
    by the twin's encoder (the same bytes for both cores).  Returns the number
    of frames decoded.
    """
    from trioq import _impl

    stream = make_stream(_impl.python_core(), frames, payload_size)
    chunks = [stream] if chunk_size is None else split(stream, chunk_size)
    FrameDecoder = core.FrameDecoder

    def run() -> int:
        decoder = FrameDecoder()
        feed = decoder.feed
        count = 0
        for chunk in chunks:
            feed(chunk)
            for _frame in decoder:
                count += 1
        assert count == frames, f"decoded {count} frames, expected {frames}"
        return count

    return run


def calls_per_step(policy: str) -> int:
    """Scheduler calls in one steady-state step (see ``prepare_schedule``)."""
    return 4 if policy == "pull" else 3


def prepare_schedule(
    core: ModuleType,
    steps: int,
    policy: str = "pull",
    workers: int = 4,
    slots: int = 4,
    backlog: int = 1024,
) -> Callable[[], int]:
    """A scheduler in steady state: one task finishes, one arrives, one is dispatched.

    Setup (untimed): ``workers`` workers with ``slots`` slots each (prefetch
    0), every slot busy, ``backlog`` tasks queued with mixed priorities.
    Each step, the oldest running task finishes and the freed slot is filled:

    * pull: ``task_done(key)`` -> ``request_work(worker, 1)`` ->
      ``add_task(new_key, priority)`` -> ``assignments()`` (4 calls)
    * push: ``task_done(key)`` -> ``add_task(new_key, priority)`` ->
      ``assignments()`` (3 calls)

    ``assignments()`` hands out exactly one task per step, so the backlog
    and the running set keep their sizes.  Returns the number of
    assignments received (one per step).
    """
    if policy not in ("pull", "push"):
        raise ValueError(f"unknown policy {policy!r}")
    sched = core.PriorityScheduler(policy=policy, prefetch=0)
    for worker in range(workers):
        sched.add_worker(worker, slots=slots)
        if policy == "pull":
            sched.request_work(worker, slots)
    prios = PRIORITIES
    busy = workers * slots
    for key in range(busy + backlog):
        sched.add_task(key, prios[key & 1023])
    running = deque(key for key, _worker in sched.assignments())
    assert len(running) == busy and sched.n_queued == backlog
    next_key = [busy + backlog]

    task_done = sched.task_done
    request_work = sched.request_work
    add_task = sched.add_task
    assignments = sched.assignments
    popleft = running.popleft
    append = running.append

    def run_pull() -> int:
        first = next_key[0]
        assigned = 0
        for key in range(first, first + steps):
            worker = task_done(popleft())
            request_work(worker, 1)
            add_task(key, prios[key & 1023])
            for done_key, _worker in assignments():
                append(done_key)
                assigned += 1
        next_key[0] = first + steps
        assert assigned == steps, f"{assigned} assignments in {steps} steps"
        return assigned

    def run_push() -> int:
        first = next_key[0]
        assigned = 0
        for key in range(first, first + steps):
            task_done(popleft())
            add_task(key, prios[key & 1023])
            for done_key, _worker in assignments():
                append(done_key)
                assigned += 1
        next_key[0] = first + steps
        assert assigned == steps, f"{assigned} assignments in {steps} steps"
        return assigned

    return run_pull if policy == "pull" else run_push


def prepare_fill_drain(
    core: ModuleType, tasks: int, policy: str = "pull", workers: int = 4, slots: int = 4
) -> Callable[[], int]:
    """From an empty scheduler: add ``tasks`` tasks, then dispatch and finish them all.

    Each round calls ``assignments()`` once and ``task_done`` for every pair
    it returned (pull: plus ``request_work(worker, 1)`` for each).  Returns
    the number of tasks finished.
    """
    if policy not in ("pull", "push"):
        raise ValueError(f"unknown policy {policy!r}")
    PriorityScheduler = core.PriorityScheduler
    prios = PRIORITIES
    pull = policy == "pull"

    def run() -> int:
        sched = PriorityScheduler(policy=policy, prefetch=0)
        for worker in range(workers):
            sched.add_worker(worker, slots=slots)
            if pull:
                sched.request_work(worker, slots)
        add_task = sched.add_task
        for key in range(tasks):
            add_task(key, prios[key & 1023])
        task_done = sched.task_done
        request_work = sched.request_work
        finished = 0
        pairs = sched.assignments()
        while pairs:
            for key, _worker in pairs:
                worker = task_done(key)
                if pull:
                    request_work(worker, 1)
            finished += len(pairs)
            pairs = sched.assignments()
        assert finished == tasks and len(sched) == 0, "tasks left behind"
        return finished

    return run
