"""``python -m trioq demo``: runs trioq's workloads end to end and checks them.

Each part prints a few lines and what it reached, and raises ``DemoFailure``
if a result does not check out, so the command exits 0 only when all did.
What exists so far: the sans-IO core and named queues and variables
shared through an embedded scheduler; tasks and channels join here as they
land.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field

import trio
import trio.lowlevel

from . import __version__
from ._impl import core, core_impl

__all__ = ["DemoFailure", "run_demo"]


class DemoFailure(Exception):
    """A demo result did not match what it must be."""


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise DemoFailure(message)


def demo_codec(n_frames: int) -> None:
    """Encode many frames into one buffer; decode them from random chunk sizes."""
    rng = random.Random(1)
    payloads = [rng.randbytes(rng.randrange(0, 64)) for _ in range(n_frames)]
    start = time.perf_counter()
    encoder = core.FrameEncoder()
    for i, payload in enumerate(payloads):
        encoder.write(i % 256, i, payload)
    wire = encoder.take()
    encoded = time.perf_counter()
    decoder = core.FrameDecoder()
    frames = []
    pos = 0
    while pos < len(wire):
        step = rng.randrange(1, 9000)
        decoder.feed(wire[pos : pos + step])
        frames.extend(decoder)
        pos += step
    decoded = time.perf_counter()
    _check(len(frames) == n_frames, f"decoded {len(frames)} frames, sent {n_frames}")
    _check(
        all(f.request_id == i and f.payload == payloads[i] for i, f in enumerate(frames)),
        "a decoded frame differs from the one encoded",
    )
    _check(decoder.at_boundary(), "decoder holds a partial frame after the last one")
    print(
        f"  {n_frames:,} frames, {len(wire):,} bytes, fed in random chunks: "
        f"encode {n_frames / (encoded - start):,.0f} frames/s, "
        f"decode {n_frames / (decoded - encoded):,.0f} frames/s"
    )


@dataclass
class _Run:
    assigned: list[tuple[int, str]] = field(default_factory=list)
    finished: dict[int, str] = field(default_factory=dict)


async def demo_scheduler(n_tasks: int) -> None:
    """The core scheduler alone: three simulated workers (trio tasks) pull by priority."""
    scheduler = core.PriorityScheduler(policy=core.PULL)
    slots = {"cpu-a": 2, "cpu-b": 1, "gpu-1": 1}
    scheduler.add_worker("cpu-a", slots=2)
    scheduler.add_worker("cpu-b", slots=1)
    scheduler.add_worker("gpu-1", slots=1, series=["gpu"])
    rng = random.Random(2)
    spec: dict[int, tuple[int, str | None]] = {}
    for key in range(n_tasks):
        series = "gpu" if key % 10 == 0 else None
        spec[key] = (rng.randrange(5), series)
        scheduler.add_task(key, priority=spec[key][0], series=series)

    run = _Run()
    inboxes = {name: trio.open_memory_channel[int](slots[name]) for name in slots}
    done_send, done_receive = trio.open_memory_channel[tuple[int, str]](n_tasks)
    start = time.perf_counter()

    async def worker(name: str) -> None:
        async with inboxes[name][1] as inbox:
            async for key in inbox:
                await trio.lowlevel.checkpoint()  # a real worker would run the callable here
                await done_send.send((key, name))

    async def dispatcher() -> None:
        for name, count in slots.items():
            scheduler.request_work(name, count)
        while len(run.finished) < n_tasks:
            for key, name in scheduler.assignments():
                run.assigned.append((key, name))
                await inboxes[name][0].send(key)
            key, name = await done_receive.receive()
            run.finished[key] = scheduler.task_done(key)
            scheduler.request_work(name)
        for send, _ in inboxes.values():
            await send.aclose()

    async with trio.open_nursery() as nursery:
        for name in slots:
            nursery.start_soon(worker, name)
        nursery.start_soon(dispatcher)
    elapsed = time.perf_counter() - start
    scheduler.validate()

    _check(sorted(run.finished) == list(range(n_tasks)), "a task was lost or run twice")
    _check(
        all(run.finished[k] == "gpu-1" for k in spec if spec[k][1] == "gpu"),
        "a gpu task ran on a worker without the gpu series",
    )
    plain = [k for k, _ in run.assigned if spec[k][1] is None]
    _check(
        plain == sorted(plain, key=lambda k: (-spec[k][0], k)),
        "tasks without a series did not start by priority, then arrival",
    )
    per_worker = {name: sum(1 for w in run.finished.values() if w == name) for name in slots}
    print(
        f"  {n_tasks:,} tasks by priority over 3 simulated workers "
        f"({', '.join(f'{n}: {c}' for n, c in per_worker.items())}), "
        f"every gpu task on gpu-1: {n_tasks / elapsed:,.0f} tasks/s"
    )


async def demo_queue(n_items: int) -> None:
    """Two clients share a bounded queue through a scheduler: back pressure, end of stream."""
    from ._client import connect
    from ._cluster import open_cluster

    maxsize = 100
    async with open_cluster() as cluster:
        print(f"  scheduler on {cluster.address}")
        async with (
            connect(cluster.address, name="producer") as producer,
            connect(cluster.address, name="consumer") as consumer,
        ):
            received: list[int] = []
            most_waiting = 0

            async def produce() -> None:
                queue = producer.queue("jobs", maxsize=maxsize)
                async with queue.open_send_channel() as send:
                    for i in range(n_items):
                        await send.send({"job": i})
                await producer.variable("produced").set(n_items)

            async def consume() -> None:
                nonlocal most_waiting
                queue = consumer.queue("jobs", maxsize=maxsize)
                async with queue.open_receive_channel() as receive:
                    async for item in receive:
                        received.append(item["job"])
                        if len(received) % 500 == 0:
                            most_waiting = max(most_waiting, await queue.qsize())

            start = time.perf_counter()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(consume)
                nursery.start_soon(produce)
            elapsed = time.perf_counter() - start
            produced = await consumer.variable("produced").get(timeout=5)
    _check(received == list(range(n_items)), "the consumer did not get every job once, in order")
    _check(produced == n_items, "the producer's count did not arrive through the variable")
    _check(most_waiting <= maxsize, f"the queue held {most_waiting} items, over maxsize {maxsize}")
    print(
        f"  {n_items:,} jobs from a producer to a consumer client through queue 'jobs' "
        f"(maxsize {maxsize}, at most {most_waiting} waiting when sampled), in order, "
        f"ended by closing the send channel: {n_items / elapsed:,.0f} items/s"
    )


def _square(x: int) -> int:
    return x * x


async def demo_tasks(n_tasks: int) -> None:
    """Submit many tasks to two workers, gather in order, cancel one that sleeps."""
    from ._client import connect
    from ._cluster import open_cluster
    from ._exceptions import TaskCancelledError

    async with (
        open_cluster(workers=2, nthreads=2) as cluster,
        connect(cluster.address, name="tasks") as client,
    ):
        start = time.perf_counter()
        futures = await client.map(_square, range(n_tasks))
        results = await client.gather(futures)
        elapsed = time.perf_counter() - start
        sleeper = await client.submit(trio.sleep, 60, priority=10)
        await sleeper.cancel()
        try:
            await sleeper
            cancelled = False
        except TaskCancelledError:
            cancelled = True
        workers = (await client.status())["workers"]
    _check(results == [x * x for x in range(n_tasks)], "a task result is wrong or out of order")
    _check(cancelled, "a cancelled task still produced a result")
    print(
        f"  {n_tasks:,} tasks over {len(workers)} workers, results in order: "
        f"{n_tasks / elapsed:,.0f} tasks/s; a running task cancelled on its worker"
    )


async def run_demo(quick: bool = False) -> None:
    """Run every demo part; raises ``DemoFailure`` on the first wrong result."""
    print(f"trioq {__version__}, core: {core_impl()}")
    print("1. frame codec")
    demo_codec(20_000 if quick else 200_000)
    print("2. priority scheduler")
    await demo_scheduler(2_000 if quick else 20_000)
    print("3. a named queue shared by two clients")
    await demo_queue(2_000 if quick else 20_000)
    print("4. tasks on two workers")
    await demo_tasks(1_000 if quick else 10_000)
    print("all results checked out")
