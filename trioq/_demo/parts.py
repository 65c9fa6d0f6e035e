"""The five parts of ``python -m trioq demo``, and the task functions they run.

Each part is one ``async`` function with its own clients: it runs one
workload the library exists for, prints a few lines and the throughput it
reached, and raises ``DemoFailure`` unless every result checks out exactly
(every item counted, in order where order is promised, sums in closed
form).  Parts 1-4 share a cluster given by its address; part 5 is local.

The task functions are module level: workers (and a ``ProcessWorker``'s
child) unpickle them by reference, so they must be importable as
``trioq._demo.parts.NAME``.  Nothing here synchronises by sleeping: the only
sleep paces a deliberately slow consumer (part 4), and says so.
"""

from __future__ import annotations

import os
import random
import sys
import threading
import time
from typing import Any, Literal

import trio
from tqdm import tqdm  # type: ignore[import-untyped]  # tqdm ships no type hints

from .._client.connect import connect
from .._client.current import worker_client
from .._client.future import Future
from .._client.pipe import PipeEnd
from .._exceptions import collapse_single_groups
from .._taskqueue.taskqueue import TaskQueue
from .._taskqueue.workers import ProcessWorker, ThreadWorker

__all__ = [
    "DemoFailure",
    "demo_queue",
    "demo_pipeline",
    "demo_channel",
    "demo_simple_queue_and_pipe",
    "demo_taskqueue",
]

SLOW_CONSUMER_PAUSE = 0.002  # seconds part 4's slow consumer spends on each item


class DemoFailure(Exception):
    """A demo result did not match what it must be."""


def check(condition: bool, message: str) -> None:
    """Raise ``DemoFailure(message)`` unless ``condition`` holds."""
    if not condition:
        raise DemoFailure(message)


class _Bar(tqdm):  # type: ignore[misc]  # tqdm is untyped
    monitor_interval = 0  # no monitor thread: the demo leaves no thread behind


def progress(total: int, desc: str, unit: str = "items") -> Any:
    """A progress bar on stderr that shows only once its work has taken a second.

    On a terminal it refreshes often and erases itself when done
    (``leave=False``), so stdout's summary lines stay alone.  Elsewhere (a CI
    log) every refresh is a new line of text, so it refreshes at most every
    5 seconds, in ASCII, and leaves its final line: a long part logs a few
    readable lines, a short one none.
    """
    tty = sys.stderr.isatty()
    return _Bar(
        total=total,
        desc=f"  {desc}",
        unit=f" {unit}",
        file=sys.stderr,
        delay=1.0,
        mininterval=0.1 if tty else 5.0,
        maxinterval=10.0,
        leave=not tty,
        ascii=not tty,
        ncols=None if tty else 90,
        unit_scale=True,
    )


def _rate(count: int, seconds: float, unit: str) -> str:
    return f"{count / max(seconds, 1e-9):,.0f} {unit}/s"


# -- task functions (run by workers; importable by reference) ---------------------------


def square(x: int) -> int:
    """A task: ``x * x``."""
    return x * x


def inc(x: int) -> int:
    """A task: ``x + 1``."""
    return x + 1


def double(x: int) -> int:
    """A task: ``2 * x``."""
    return 2 * x


def add(x: int, y: int) -> int:
    """A task: ``x + y`` (its arguments may be futures: it gets their results)."""
    return x + y


async def drain_simple_queue(name: str, mode: Literal["pull", "push"], pause: float) -> list[int]:
    """A task: take items from SimpleQueue ``name`` until a ``None``; the items taken.

    ``pause`` seconds per item make it a deliberately slow consumer.
    """
    queue = worker_client().simple_queue(name, mode)
    taken: list[int] = []
    async with queue:  # a push consumer returns what it still holds
        while (item := await queue.get()) is not None:
            taken.append(item)
            if pause:
                await trio.sleep(pause)  # deliberate pacing: a slow consumer, not a sync
    return taken


async def square_through_pipe(end: PipeEnd) -> int:
    """A task: answer each value sent through ``end`` with its square; the count."""
    count = 0
    async with end:
        async for value in end:
            await end.send(value * value)
            count += 1
    return count


_settings_lock = threading.Lock()  # update and calls may run in different threads
_settings = {"scale": 1}  # set in each TaskQueue worker's process by ``update(set_scale, ...)``


def set_scale(factor: int) -> None:
    """A TaskQueue update: from now on ``scaled`` multiplies by ``factor``, in this process."""
    with _settings_lock:
        _settings["scale"] = factor


def scaled(x: int) -> tuple[int, int]:
    """A TaskQueue call: (this process's id, ``x`` times the scale the update set)."""
    with _settings_lock:
        return os.getpid(), x * _settings["scale"]


def record(log: list[int], index: int) -> None:
    """A TaskQueue call on a thread worker: note that call ``index`` started."""
    log.append(index)  # one thread at a time runs it (one slot); append is atomic anyway


async def wait_for(event: trio.Event) -> None:
    """A TaskQueue call (async, so it runs as a trio task): hold its worker until ``event``."""
    await event.wait()


# -- 1. a named queue ------------------------------------------------------------------


async def demo_queue(address: str, n: int, maxsize: int = 32, every: int = 4) -> None:
    """Two clients share futures and data through queue 'jobs' bounded by ``maxsize``.

    The producer fills the queue before the consumer starts, shows that a
    full queue refuses ``put_nowait``, then keeps putting: its puts wait for
    room, so it never runs more than ``maxsize`` items ahead.  Every
    ``every``-th item carries the future of a ``square`` task, which the
    consumer (another client) gathers.
    """
    lead = most_lead = 0  # items put and not yet taken, as seen from this process
    refused = False
    full = trio.Event()  # the producer filled the queue: the consumer may start
    taken: list[int] = []
    futures: list[Future] = []
    async with (
        connect(address, name="producer") as producer,
        connect(address, name="consumer") as consumer,
    ):

        async def produce() -> None:
            nonlocal lead, most_lead, refused
            queue = producer.queue("jobs", maxsize=maxsize)
            try:
                async with queue.open_send_channel() as send:
                    for i in range(n):
                        if i == maxsize:
                            try:
                                await queue.put_nowait({"i": -1})
                            except trio.WouldBlock:
                                refused = True
                            full.set()
                        item: dict[str, Any] = {"i": i}
                        if i % every == 0:
                            item["square"] = await producer.submit(square, i)
                        await send.send(item)
                        lead += 1
                        most_lead = max(most_lead, lead)
            finally:
                full.set()
            await producer.variable("jobs-produced").set(n)

        async def consume() -> None:
            nonlocal lead
            queue = consumer.queue("jobs", maxsize=maxsize)
            with progress(n, "queue") as bar:
                async with queue.open_receive_channel() as receive:
                    await full.wait()
                    async for item in receive:
                        lead -= 1
                        taken.append(item["i"])
                        if "square" in item:
                            futures.append(item["square"])
                        bar.update()

        start = time.perf_counter()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(consume)
            nursery.start_soon(produce)
        squares = await consumer.gather(futures)
        elapsed = time.perf_counter() - start
        produced = await consumer.variable("jobs-produced").get(timeout=10)
    check(taken == list(range(n)), "the consumer did not get every item once, in order")
    check(produced == n, f"the variable says {produced} items were produced, not {n}")
    check(n <= maxsize or refused, "put_nowait on the full queue did not raise WouldBlock")
    check(
        most_lead == min(n, maxsize),
        f"the producer ran up to {most_lead} items ahead; the queue's bound is {maxsize}",
    )
    check(squares == [i * i for i in range(0, n, every)], "a future's result is wrong")
    print(f"  producer -> queue 'jobs' (maxsize {maxsize}) -> consumer: {n:,} items, in order")
    print(f"  {len(futures):,} carried futures of square(i): the consumer gathered their results")
    print(
        f"  back pressure: the full queue refused put_nowait; the producer ran at most "
        f"{most_lead} items ahead"
    )
    print(f"  {_rate(n, elapsed, 'items')}")


# -- 2. a streaming pipeline ------------------------------------------------------------


async def demo_pipeline(address: str, n: int, buffer: int = 16) -> None:
    """A loader task feeds scatter -> map(inc) -> map(double) -> gather; results stream in order."""
    values: list[int] = []
    loaded = 0
    async with connect(address, name="pipeline") as client:
        send, source = trio.open_memory_channel[int](buffer)

        async def load() -> None:
            nonlocal loaded
            async with send:
                for i in range(n):
                    try:
                        await send.send(i)
                    except trio.BrokenResourceError:
                        return  # the pipeline was torn down (a failure downstream)
                    loaded += 1

        start = time.perf_counter()
        with collapse_single_groups(), progress(n, "pipeline") as bar:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(load)
                data = await client.scatter(source, buffer=buffer)
                incremented = await client.map(inc, data, buffer=buffer)
                doubled = await client.map(double, incremented, buffer=buffer)
                results = await client.gather(doubled, buffer=buffer)
                async with results:
                    async for value in results:  # checked once every stage has ended
                        values.append(value)
                        bar.update()
        elapsed = time.perf_counter() - start
    for i, value in enumerate(values):
        check(value == 2 * (i + 1), f"result {i} is {value}, not {2 * (i + 1)}")
    check(loaded == n and len(values) == n, f"{loaded} loaded, {len(values)} results, of {n}")
    check(sum(values) == n * (n + 1), "the results do not add up to n(n+1)")
    print(f"  a loader task fed {n:,} items; gather returned {n:,} results, 2(i+1) in order")
    print(f"  at most {buffer} items buffered per stage: back pressure end to end")
    print(f"  {_rate(n, elapsed, 'items')} ({_rate(2 * n, elapsed, 'tasks')})")


# -- 3. a replayable channel -------------------------------------------------------------


def _ident(element: Any) -> Any:
    return ("future", element.key) if isinstance(element, Future) else element


async def demo_channel(address: str, n: int) -> None:
    """Two emitters append to channel 'numbers'; a combiner adds its elements in pairs.

    One emitter appends futures of ``inc(i)``, the other plain ``i * i``;
    the combiner submits ``add`` for each pair it reads (futures become the
    task's dependencies) and gathers the sums.  A replay afterwards must show
    the same sequence the combiner read.
    """
    seen: list[Any] = []
    sums: list[Future] = []
    async with (
        connect(address, name="emitter-futures") as emit_futures,
        connect(address, name="emitter-data") as emit_data,
        connect(address, name="combiner") as combiner,
    ):

        async def emit_incs() -> None:
            channel = emit_futures.channel("numbers")
            for i in range(n):
                await channel.append(await emit_futures.submit(inc, i, key=f"inc-{i}"))
            await channel.flush()

        async def emit_squares() -> None:
            channel = emit_data.channel("numbers")
            for i in range(n):
                await channel.append(i * i)
            await channel.flush()

        async def combine() -> None:
            pending = None
            with progress(2 * n, "channel", "elements") as bar:
                async with combiner.channel("numbers").subscribe() as elements:
                    async for element in elements:
                        seen.append(_ident(element))
                        bar.update()
                        if pending is None:
                            pending = element
                        else:
                            sums.append(await combiner.submit(add, pending, element))
                            pending = None
            check(pending is None, "the channel held an odd number of elements")

        start = time.perf_counter()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(combine)
            async with trio.open_nursery() as emitters:
                emitters.start_soon(emit_incs)
                emitters.start_soon(emit_squares)
            await emit_data.channel("numbers").stop()  # ends the combiner's iteration
        total = sum(await combiner.gather(sums))
        elapsed = time.perf_counter() - start
        replay = [_ident(e) for e in await emit_data.channel("numbers").snapshot()]
    check(len(seen) == 2 * n, f"the combiner read {len(seen)} elements, not {2 * n}")
    keys = [e[1] for e in seen if isinstance(e, tuple)]
    check(keys == [f"inc-{i}" for i in range(n)], "the futures are not all there, in order")
    data = [e for e in seen if not isinstance(e, tuple)]
    check(data == [i * i for i in range(n)], "the data elements are not all there, in order")
    check(replay == seen, "a replay of the channel differs from what the combiner read")
    expected = n * (n + 1) // 2 + (n - 1) * n * (2 * n - 1) // 6
    check(total == expected, f"the pair sums add up to {total}, not {expected}")
    print(f"  one emitter appended {n:,} futures of inc(i), the other {n:,} values i*i")
    print(f"  the combiner read them in pairs and added each pair on a worker: sum {total:,}")
    print(
        f"  a replay read the same {2 * n:,} elements in the same order; "
        f"each emitter's elements kept their order"
    )
    print(f"  {_rate(2 * n, elapsed, 'elements')}")


# -- 4. SimpleQueue and Pipe ----------------------------------------------------------------


async def demo_simple_queue_and_pipe(address: str, n: int, m: int) -> None:
    """SimpleQueue in pull then push mode, drained by a fast and a slow worker task;
    then a Pipe whose end is sent to a worker task that answers ``m`` values."""
    async with connect(address, name="simple-queue") as client:
        splits = {}
        for mode in ("pull", "push"):
            start = time.perf_counter()
            queue = client.simple_queue(f"simple-{mode}", mode)
            fast = await client.submit(drain_simple_queue, queue.name, mode, 0.0)
            slow = await client.submit(drain_simple_queue, queue.name, mode, SLOW_CONSUMER_PAUSE)
            for i in range(n):
                await queue.put(i)
            for _ in range(2):
                await queue.put(None)  # one end marker per consumer
            taken_fast, taken_slow = await client.gather([fast, slow])
            elapsed = time.perf_counter() - start
            check(
                sorted(taken_fast + taken_slow) == list(range(n)),
                f"{mode}: the consumers did not take every item exactly once",
            )
            for taken in (taken_fast, taken_slow):
                check(taken == sorted(taken), f"{mode}: a consumer got items out of order")
            check(await queue.qsize() == 0, f"{mode}: items were left in the queue")
            splits[mode] = (len(taken_fast), len(taken_slow), elapsed)
        for mode, how in (("pull", "asks for each item"), ("push", "dealt up to 16 ahead")):
            fast_count, slow_count, elapsed = splits[mode]
            print(
                f"  {mode} ({how}): a fast and a slow worker task took "
                f"{fast_count:,} + {slow_count:,} items, {_rate(n, elapsed, 'items')}"
            )

        a, b = await client.pipe()
        answers: list[int] = []
        start = time.perf_counter()
        echo = await client.submit(square_through_pipe, b)

        async def send_values() -> None:
            for i in range(m):
                await a.send(i)

        async with a, trio.open_nursery() as nursery:
            nursery.start_soon(send_values)
            with progress(m, "pipe", "values") as bar:
                for _ in range(m):
                    answers.append(await a.recv())
                    bar.update()
        count = await echo
        elapsed = time.perf_counter() - start
    check(answers == [i * i for i in range(m)], "the pipe's answers are wrong or out of order")
    check(count == m, f"the worker task answered {count} values, not {m}")
    print(
        f"  Pipe: one end passed to a worker task; {m:,} values sent, squares back in order, "
        f"{_rate(m, elapsed, 'values')}"
    )


# -- 5. TaskQueue ------------------------------------------------------------------------


async def demo_taskqueue(n: int, k: int = 12, seed: int = 5) -> None:
    """A TaskQueue: ``k`` calls start by niceness on a busy thread worker; an ``update``
    reaches it and a process worker attached later; ``n`` calls run over both, the
    'child' series only on the process worker."""
    rng = random.Random(seed)
    nice = [rng.choice([-10, 0, 10]) for _ in range(k)]
    started: list[int] = []
    async with TaskQueue(ThreadWorker(), timeout=10) as tq:
        gate = trio.Event()
        async with trio.open_nursery() as nursery:

            async def call(index: int, *, task_status: trio.TaskStatus[None]) -> None:
                task_status.started()  # tq.call queues the call before its first checkpoint
                if index < 0:
                    await tq.call(wait_for, gate)  # takes the thread worker's only slot
                else:
                    await tq.call(record, started, index, niceness=nice[index])

            for index in range(-1, k):
                await nursery.start(call, index)
            gate.set()
        expected = sorted(range(k), key=lambda i: (nice[i], i))
        check(started == expected, f"calls started in order {started}, not {expected}")
        print(f"  {k} calls queued behind a busy thread worker started by niceness, then in order")

        await tq.update(set_scale, 3)
        start = time.perf_counter()
        process = ProcessWorker(series=["child"])
        await tq.attach_worker(process)  # it runs the remembered update before any call
        attached = time.perf_counter() - start
        child_pid = process.pid
        results: dict[int, tuple[int, int]] = {}

        async def run(i: int, bar: Any) -> None:
            results[i] = await tq.call(scaled, i, series="child" if i % 4 == 0 else None)
            bar.update()

        start = time.perf_counter()
        with progress(n, "taskqueue", "calls") as bar:
            async with trio.open_nursery() as nursery:
                for i in range(n):
                    nursery.start_soon(run, i, bar)
        elapsed = time.perf_counter() - start
    check(sorted(results) == list(range(n)), "a call got no result")
    check(
        all(value == 3 * i for i, (_, value) in results.items()),
        "a call ran on a worker the update did not reach",
    )
    check(
        all(pid == child_pid for i, (pid, _) in results.items() if i % 4 == 0),
        "a 'child' series call ran outside the process worker",
    )
    series = len(range(0, n, 4))
    in_child = sum(1 for i, (pid, _) in results.items() if i % 4 and pid == child_pid)
    print(
        f"  update(set_scale, 3) ran on the thread worker, then on a process worker "
        f"as it attached ({attached:.2f} s)"
    )
    print(f"  {n:,} calls, every result x*3; the {series:,} of series 'child' all in the child,")
    print(f"  the others {n - series - in_child:,} in the thread and {in_child:,} in the child")
    print(f"  {_rate(n, elapsed, 'calls')}")
