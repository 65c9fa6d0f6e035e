"""Tasks on workers: submit, map, gather, as_completed, errors and cancellation.

Runs an embedded scheduler with two in-process workers:
``python docs/examples/tasks_and_futures.py``.  It checks its own results
and exits 0 only if they hold.
"""

from __future__ import annotations

import trio

import trioq


def square(x: int) -> int:
    return x * x


async def slow_double(x: int) -> int:
    await trio.sleep(0.01 * x)  # an async task runs as a trio task on the worker
    return 2 * x


def fails() -> None:
    raise KeyError("missing")


async def main() -> None:
    async with trioq.open_cluster(workers=2) as cluster:
        async with trioq.connect(cluster.address) as client:
            # One task: await the future.
            future = await client.submit(square, 7)
            assert await future == 49 and future.done()

            # Many: map submits in order, gather collects in order.
            futures = await client.map(square, range(100))
            assert await client.gather(futures) == [x * x for x in range(100)]

            # As they finish: the shortest sleeps come out first.
            doubles = await client.map(slow_double, [5, 1, 3])
            finished = [await f async for f in client.as_completed(doubles)]
            assert sorted(finished) == [2, 6, 10], finished

            # A task's exception comes back as itself, with the remote traceback.
            try:
                await (await client.submit(fails))
            except KeyError as exc:
                assert "remote traceback" in exc.__notes__[0]
            else:
                raise AssertionError("the task's KeyError was not raised")

            # Cancelling a running async task stops it on its worker.
            sleeper = await client.submit(trio.sleep, 60)
            await sleeper.cancel()
            try:
                await sleeper
            except trioq.TaskCancelledError:
                pass
            print(f"{len(futures) + 6} tasks ran; results, errors and cancellation checked out")


if __name__ == "__main__":
    trio.run(main)
