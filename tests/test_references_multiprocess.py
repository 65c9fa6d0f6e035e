"""Futures passed through a queue from one client process to another.

A scheduler process and two ``python -m trioq worker`` processes, started,
owned and cleaned up through ``tests/procs.py`` (each in its own session,
SIGTERM then SIGKILL on the way out), on 127.0.0.1 port 0.  The client
programs are this file run as a script (``python
tests/test_references_multiprocess.py ROLE ...``), the way ``procs.py``
runs its own: a producer submits tasks, puts their futures in a queue
(bare, in a dict, in a custom object) and exits; only then does a consumer
start, read the futures and await them.  Task functions and the custom
class live in the producer's ``__main__``, so cloudpickle sends them by
value: neither the workers nor the consumer import anything of ours.

Half the tasks have ended before the producer exits; the other half wait
for the test to set the variable ``go`` (no sleeps), so they end while
only the consumer holds them.  Every result must be counted exactly once,
and once the consumer is gone the scheduler must have forgotten every task.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from collections.abc import Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import procs
import trio

import trioq

READY_TIMEOUT = 30.0  # worker processes start, import and connect, on a loaded CI box
STEP_TIMEOUT = 15.0  # one client program runs to its end
TEST_TIMEOUT = 90.0  # any one test, whatever it waits for
QUEUE = "futures"
COUNT = 24  # futures passed along; half of their tasks end before the producer exits
SCRIPT = Path(__file__).resolve()  # run as the client programs


# A scheduler process on 127.0.0.1:0 per test (failing it past TEST_TIMEOUT), and
# this file run as the client program ``role``.
scheduler = procs.limited_scheduler_fixture(TEST_TIMEOUT)
program = procs.programs_of(SCRIPT)


async def test_futures_put_in_a_queue_by_a_process_that_exited_are_awaited_in_another(
    scheduler: procs.SchedulerProc,
) -> None:
    async with AsyncExitStack() as stack:
        workers = [
            await stack.enter_async_context(procs.worker_process(scheduler, f"worker-{i}"))
            for i in range(2)
        ]
        client = await stack.enter_async_context(
            trioq.connect(scheduler.address, token=scheduler.token, name="test")
        )
        try:
            with trio.fail_after(READY_TIMEOUT):

                async def up() -> bool:
                    return len((await client.status())["workers"]) == 2

                await procs.poll_until(up)

            with trio.fail_after(STEP_TIMEOUT):
                async with program(scheduler, "producer", QUEUE, COUNT) as producer:
                    assert await procs.finished(producer) == [f"put {COUNT}"]
                status = await client.status()
                assert status["tasks"].get("finished") == COUNT // 2, status["tasks"]
                assert sum(status["tasks"].values()) == COUNT  # the others wait for "go"
                assert await client.queue(QUEUE).qsize() == COUNT

            with trio.fail_after(STEP_TIMEOUT):
                async with program(scheduler, "consumer", QUEUE, COUNT) as consumer:
                    assert await consumer.expect("read ") == str(COUNT)
                    await client.variable("go").set(True)  # the waiting tasks may end now
                    lines = await procs.finished(consumer)
            results = json.loads(lines[-1].removeprefix("results "))
            assert Counter(results) == Counter(i * i for i in range(COUNT))

            with trio.fail_after(STEP_TIMEOUT):

                async def all_forgotten() -> bool:
                    return not (await client.status())["tasks"]

                await procs.poll_until(all_forgotten)
            assert all(worker.returncode is None for worker in workers)
        except BaseException:
            print("\n".join(worker.describe() for worker in workers))
            raise


# -- the client programs (run in child processes) ---------------------------------------------


def _say(*parts: object) -> None:
    print(*parts, flush=True)


def square(x: int) -> int:
    return x * x


async def square_when_told(x: int) -> int:
    """Waits on a worker for the variable ``go``, set by the test."""
    import trioq

    await trioq.worker_client().variable("go").get()
    return x * x


@dataclass
class Parcel:
    """A custom object carrying a future (pickled by value: it lives in ``__main__``)."""

    label: str
    future: Any


def _wrap(i: int, future: trioq.Future) -> Any:
    if i % 3 == 0:
        return future
    if i % 3 == 1:
        return {"i": i, "futures": [future]}
    return Parcel(f"parcel-{i}", future)


def _unwrap(item: Any) -> trioq.Future:
    if isinstance(item, trioq.Future):
        return item
    if isinstance(item, dict):
        (future,) = item["futures"]
        return future  # type: ignore[no-any-return]
    assert type(item).__name__ == "Parcel", item
    return item.future  # type: ignore[no-any-return]


async def _producer(args: argparse.Namespace) -> None:
    """Submit ``count`` tasks, half of them ended first; put their futures; exit."""
    async with trioq.connect(args.address, name="producer") as client:
        half = args.count // 2
        ended = await client.map(square, range(half))
        await client.gather(ended)
        waiting = [await client.submit(square_when_told, i) for i in range(half, args.count)]
        queue = client.queue(args.queue)
        for i, future in enumerate([*ended, *waiting]):
            await queue.put(_wrap(i, future))
        await queue.qsize()  # a round trip: every put has been applied
        _say("put", args.count)


async def _consumer(args: argparse.Namespace) -> None:
    """Read ``count`` futures, say so, then await every one; print the results."""
    async with trioq.connect(args.address, name="consumer") as client:
        queue = client.queue(args.queue)
        futures = [_unwrap(await queue.get()) for _ in range(args.count)]
        _say("read", len(futures))
        seen = [future.key async for future in client.as_completed(futures)]
        assert sorted(seen) == sorted(future.key for future in futures)
        results = await client.gather(futures)
        _say("results", json.dumps(results))


def _main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="tests/test_references_multiprocess.py")
    parser.add_argument("role", choices=["producer", "consumer"])
    parser.add_argument("address")
    parser.add_argument("queue")
    parser.add_argument("count", type=int)
    args = parser.parse_args(argv)
    trio.run({"producer": _producer, "consumer": _consumer}[args.role], args)


if __name__ == "__main__":
    _main()
