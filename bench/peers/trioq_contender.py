"""trioq's own contender: a ``Queue`` between two processes, through a scheduler.

The same shapes of work as the peers (``harness.run_pair``): side A puts
(one item per ``put``, or ``--batch`` items per ``put_batch``), side B gets
(``get``, or ``get_batch``, with a prefetch of 8 batches); then A and B
ping-pong through two queues, "ping" and "pong", with ``prefetch=1`` so
every get is a fresh request.
The scheduler is a third process, ``python -m trioq scheduler``, started
here on 127.0.0.1 (port 0) and always stopped at the end.  All three
processes share the machine's cores, as the peers' processes do.
"""

from __future__ import annotations

import multiprocessing
import os
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from peers.harness import (
    Latency,
    Measurement,
    PairPlan,
    RunConfig,
    Throughput,
    batch_sizes,
    chunked,
    make_items,
    percentiles,
    run_pair,
)


@contextmanager
def scheduler_process(
    timeout: float = 30.0, options: tuple[str, ...] = ()
) -> Iterator[tuple[str, str]]:
    """A ``python -m trioq scheduler`` on 127.0.0.1; yields (address, token)."""
    token = secrets.token_urlsafe(24)
    with tempfile.TemporaryDirectory() as tmp:
        token_file = os.path.join(tmp, "token")
        with open(token_file, "w") as f:
            f.write(token)
        proc = subprocess.Popen(
            [
                *(sys.executable, "-m", "trioq", "scheduler", "--port", "0"),
                *("--token-file", token_file, *options),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        try:
            deadline = time.monotonic() + timeout
            address = None
            assert proc.stdout is not None
            while address is None and time.monotonic() < deadline:
                line = proc.stdout.readline()
                if not line:
                    break
                if "listening on" in line:
                    address = line.split()[-1]
            if address is None:
                raise RuntimeError("the trioq scheduler did not start")
            yield address, token
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


#: The consumer's prefetch, in batches (``--batch`` items each).
STREAM_PREFETCH_BATCHES = 8


def _barrier(barrier: Any) -> Any:
    import trio

    return trio.to_thread.run_sync(barrier.wait)


def trioq_side_a(spec: dict[str, Any], plan: PairPlan, barrier: Any, results: Any) -> None:
    import trio

    trio.run(_side_a, spec, plan, barrier, results)


async def _side_a(spec: dict[str, Any], plan: PairPlan, barrier: Any, results: Any) -> None:
    import trioq

    async with trioq.connect(spec["address"], token=spec["token"]) as client:
        queue = client.queue("bench-items")
        for mode, run, n in plan.throughput_runs():
            items = make_items(n)
            batches = chunked(items, plan.cfg.batch)
            await _barrier(barrier)
            start = time.monotonic_ns()
            if mode == "single":
                for item in items:
                    await queue.put(item)
            else:
                for batch in batches:
                    await queue.put_batch(batch)
            results.put(("start", mode, run, start))
            await _barrier(barrier)
        ping, pong = client.queue("bench-ping", prefetch=1), client.queue("bench-pong", prefetch=1)
        item = make_items(1)[0]
        for run, n in plan.latency_runs():
            await _barrier(barrier)
            durations = []
            for _ in range(n):
                t0 = time.perf_counter_ns()
                await ping.put(item)
                await pong.get()
                durations.append((time.perf_counter_ns() - t0) * 1e-9)
            results.put(("rt", run, *percentiles(durations)))


def trioq_side_b(spec: dict[str, Any], plan: PairPlan, barrier: Any, results: Any) -> None:
    import trio

    trio.run(_side_b, spec, plan, barrier, results)


async def _side_b(spec: dict[str, Any], plan: PairPlan, barrier: Any, results: Any) -> None:
    import trioq

    async with trioq.connect(spec["address"], token=spec["token"]) as client:
        # A streaming consumer leases ahead (the peers buffer too: a pipe, zmq's
        # high-water mark of 1,000); read-ahead keeps this window topped up.
        prefetch = spec.get("prefetch")  # None: what a user gets by default
        queue = (
            client.queue("bench-items")
            if prefetch is None
            else client.queue("bench-items", prefetch=prefetch)
        )
        for mode, run, n in plan.throughput_runs():
            await _barrier(barrier)
            if mode == "single":
                for _ in range(n):
                    await queue.get()
            else:
                for size in batch_sizes(n, plan.cfg.batch):
                    got = 0
                    while got < size:
                        got += len(await queue.get_batch(size - got))
            results.put(("end", mode, run, time.monotonic_ns()))
            await _barrier(barrier)
        ping, pong = client.queue("bench-ping", prefetch=1), client.queue("bench-pong", prefetch=1)
        for _run, n in plan.latency_runs():
            await _barrier(barrier)
            for _ in range(n):
                await pong.put(await ping.get())


def measure_trioq(cfg: RunConfig) -> dict[str, Measurement]:
    """The queue with the consumer's prefetch tuned for streaming (``STREAM_PREFETCH_BATCHES``)."""
    return _measure_queue(cfg, STREAM_PREFETCH_BATCHES * cfg.batch)


def measure_trioq_defaults(cfg: RunConfig) -> dict[str, Measurement]:
    """The queue exactly as a user gets it: every setting left at its default."""
    return _measure_queue(cfg, None)


def _measure_queue(cfg: RunConfig, prefetch: int | None) -> dict[str, Measurement]:
    ctx = multiprocessing.get_context("spawn")
    notes = {
        "throughput_single": "Queue.put / Queue.get through a scheduler process",
        "throughput_batched": f"put_batch / get_batch of {cfg.batch} items",
        "round_trip": "put on 'ping', get and put on 'pong', get: 4 hops via the scheduler",
    }
    with scheduler_process() as (address, token):
        spec = {"address": address, "token": token, "prefetch": prefetch}
        return run_pair(trioq_side_a, trioq_side_b, spec, cfg, ctx=ctx, notes=notes)


# --------------------------------------------------------------------------
# tasks: a scheduler process and two worker processes, the client here


def noop(x: Any) -> Any:
    return x


@contextmanager
def worker_processes(address: str, token: str, n: int) -> Iterator[None]:
    """``n`` ``python -m trioq worker`` processes (one thread each), always stopped."""
    # Workers import the task functions by name (as in any deployment), so they
    # need this bench/ directory on their path.
    bench_dir = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = os.pathsep.join(filter(None, [bench_dir, os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "TRIOQ_TOKEN": token, "PYTHONPATH": path}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "trioq", "worker", address, "--name", f"bench-{i}"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        for i in range(n)
    ]
    try:
        yield
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


async def _measure_tasks(address: str, token: str, cfg: RunConfig) -> dict[str, Measurement]:
    import trio

    import trioq

    async with trioq.connect(address, token=token) as client:
        with trio.fail_after(cfg.timeout):
            while len((await client.status())["workers"]) < 2:  # noqa: ASYNC110 (other processes)
                await trio.sleep(0.05)

        async def map_gather(n: int) -> float:
            start = time.perf_counter()
            futures = await client.map(noop, range(n))
            await client.gather(futures)
            elapsed = time.perf_counter() - start
            for future in futures:
                await future.release()
            return elapsed

        async def round_trips(n: int) -> tuple[float, float]:
            durations = []
            for _ in range(n):
                start = time.perf_counter_ns()
                future = await client.submit(noop, 0)
                await future
                await future.release()
                durations.append((time.perf_counter_ns() - start) * 1e-9)
            return percentiles(durations)

        await map_gather(cfg.warmup_items)
        rates = [cfg.items / await map_gather(cfg.items) for _ in range(cfg.repeat)]
        await round_trips(cfg.warmup_round_trips)
        trips = [await round_trips(cfg.round_trips) for _ in range(cfg.repeat)]
    return {
        "tasks_throughput": Throughput(
            rates, cfg.items, unit="tasks/s", note="client.map then client.gather; 2 workers x 1"
        ),
        "task_round_trip": Latency(
            [p50 for p50, _ in trips],
            [p99 for _, p99 in trips],
            cfg.round_trips,
            note="submit one no-op and await it",
        ),
    }


def measure_trioq_tasks(cfg: RunConfig) -> dict[str, Measurement]:
    """Pull dispatch (the default): a worker asks for a task as a slot frees."""
    import trio

    with scheduler_process() as (address, token), worker_processes(address, token, 2):
        return trio.run(_measure_tasks, address, token, cfg)


PUSH_PREFETCH = 16


def measure_trioq_tasks_push(cfg: RunConfig) -> dict[str, Measurement]:
    """Push dispatch: tasks dealt round-robin ahead of asking, up to slots + 16 each."""
    import trio

    options = ("--dispatch", "push", "--prefetch", str(PUSH_PREFETCH))
    with (
        scheduler_process(options=options) as (address, token),
        worker_processes(address, token, 2),
    ):
        return trio.run(_measure_tasks, address, token, cfg)


# --------------------------------------------------------------------------
# streaming pipeline: scatter -> map(inc) -> map(double) -> gather


def inc(x: int) -> int:
    return x + 1


def double(x: int) -> int:
    return 2 * x


PIPELINE_BUFFER = 64


async def _measure_pipeline(address: str, token: str, cfg: RunConfig) -> dict[str, Measurement]:
    import trio

    import trioq

    async with trioq.connect(address, token=token) as client:
        with trio.fail_after(cfg.timeout):
            while len((await client.status())["workers"]) < 2:  # noqa: ASYNC110 (other processes)
                await trio.sleep(0.05)

        async def pipeline(n: int) -> float:
            send, source = trio.open_memory_channel[int](PIPELINE_BUFFER)

            async def load() -> None:
                async with send:
                    for i in range(n):
                        await send.send(i)

            start = time.perf_counter()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(load)
                data = await client.scatter(source, buffer=PIPELINE_BUFFER)
                incremented = await client.map(inc, data, buffer=PIPELINE_BUFFER)
                doubled = await client.map(double, incremented, buffer=PIPELINE_BUFFER)
                results = await client.gather(doubled, buffer=PIPELINE_BUFFER)
                expected = 0
                async with results:
                    async for value in results:
                        if value != 2 * (expected + 1):
                            raise AssertionError(f"item {expected}: got {value}")
                        expected += 1
            if expected != n:
                raise AssertionError(f"{expected} results for {n} items")
            return time.perf_counter() - start

        await pipeline(cfg.warmup_items)
        rates = [cfg.items / await pipeline(cfg.items) for _ in range(cfg.repeat)]
    note = f"scatter -> map(inc) -> map(double) -> gather, buffers of {PIPELINE_BUFFER}"
    return {"pipeline_throughput": Throughput(rates, cfg.items, unit="items/s", note=note)}


def measure_trioq_pipeline(cfg: RunConfig) -> dict[str, Measurement]:
    """The streaming pipeline on a scheduler process and 2 worker processes,
    push dispatch (the pipeline keeps a window of tasks in flight: push lets
    each worker hold some, so they run back to back)."""
    import trio

    options = ("--dispatch", "push", "--prefetch", str(PUSH_PREFETCH))
    with (
        scheduler_process(options=options) as (address, token),
        worker_processes(address, token, 2),
    ):
        return trio.run(_measure_pipeline, address, token, cfg)


def measure_trioq_pipeline_pull(cfg: RunConfig) -> dict[str, Measurement]:
    """The same pipeline with pull dispatch (the scheduler's default)."""
    import trio

    with scheduler_process() as (address, token), worker_processes(address, token, 2):
        return trio.run(_measure_pipeline, address, token, cfg)


# --------------------------------------------------------------------------
# Pipe round trip: two processes, one end each


def pipe_side_a(spec: dict[str, Any], plan: PairPlan, barrier: Any, results: Any) -> None:
    import trio

    trio.run(_pipe_side_a, spec, plan, barrier, results)


async def _pipe_side_a(spec: dict[str, Any], plan: PairPlan, barrier: Any, results: Any) -> None:
    import pickle

    end = pickle.loads(spec["end_a"])
    os.environ["TRIOQ_TOKEN"] = spec["token"]
    item = make_items(1)[0]
    async with end:
        for run, n in plan.latency_runs():
            await _barrier(barrier)
            durations = []
            for _ in range(n):
                t0 = time.perf_counter_ns()
                await end.send(item)
                await end.receive()
                durations.append((time.perf_counter_ns() - t0) * 1e-9)
            results.put(("rt", run, *percentiles(durations)))


def pipe_side_b(spec: dict[str, Any], plan: PairPlan, barrier: Any, results: Any) -> None:
    import trio

    trio.run(_pipe_side_b, spec, plan, barrier, results)


async def _pipe_side_b(spec: dict[str, Any], plan: PairPlan, barrier: Any, results: Any) -> None:
    import pickle

    end = pickle.loads(spec["end_b"])
    os.environ["TRIOQ_TOKEN"] = spec["token"]
    async with end:
        for _run, n in plan.latency_runs():
            await _barrier(barrier)
            for _ in range(n):
                await end.send(await end.receive())


async def _make_pipe(address: str, token: str) -> tuple[bytes, bytes]:
    import pickle

    import trioq

    async with trioq.connect(address, token=token) as client:
        end_a, end_b = await client.pipe(duplex=True)
        return pickle.dumps(end_a), pickle.dumps(end_b)


def measure_trioq_pipe(cfg: RunConfig) -> dict[str, Measurement]:
    """``Pipe`` ping-pong between two processes, each holding one end."""
    import trio

    ctx = multiprocessing.get_context("spawn")
    with scheduler_process() as (address, token):
        end_a, end_b = trio.run(_make_pipe, address, token)
        spec = {"end_a": end_a, "end_b": end_b, "token": token}
        notes = {"round_trip": "end A sends, end B echoes, A receives"}
        return run_pair(pipe_side_a, pipe_side_b, spec, cfg, ctx=ctx, notes=notes, modes=())
