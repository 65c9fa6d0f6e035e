"""A streaming pipeline: a loader feeds scatter -> map(inc) -> map(double) -> gather,
with bounded buffers; then errors in place, early teardown, multiplex and merge.

Runs an embedded scheduler with two in-process workers:
``python docs/examples/streaming_pipeline.py``.  It checks its own results
and exits 0 only if they hold.
"""

from __future__ import annotations

import trio
import trio.testing

import trioq
from trioq import streams

N = 1000


async def inc(x: int) -> int:
    return x + 1


async def double(x: int) -> int:
    return 2 * x


async def picky(x: int) -> int:
    if x % 4 == 3:
        raise ValueError(f"no {x}")
    return x


class Loader:
    """Sends 0, 1, 2, ... into a trio memory channel: the pipeline's source."""

    def __init__(self, count: int) -> None:
        self.send, self.channel = trio.open_memory_channel[int](0)
        self.count = count
        self.sent = 0
        self.stopped_early = False

    async def run(self) -> None:
        async with self.send:
            for i in range(self.count):
                try:
                    await self.send.send(i)  # waits while the pipeline is full
                except trio.BrokenResourceError:
                    self.stopped_early = True  # the pipeline was torn down
                    return
                self.sent += 1


async def pipeline(
    client: trioq.Client, source: trio.abc.ReceiveChannel[int], buffer: int
) -> trio.abc.ReceiveChannel[int]:
    data = await client.scatter(source, buffer=buffer)  # items -> data futures
    incremented = await client.map(inc, data, buffer=buffer)  # futures -> futures
    doubled = await client.map(double, incremented, buffer=buffer)
    return await client.gather(doubled, buffer=buffer)  # futures -> results, in order


async def the_seed_pipeline(client: trioq.Client) -> None:
    async with trio.open_nursery() as nursery:
        loader = Loader(N)
        nursery.start_soon(loader.run)
        results = await pipeline(client, loader.channel, buffer=4)
        async with results:
            first = [await results.receive() for _ in range(10)]
            # The consumer pauses: every stage fills its buffer and then waits,
            # so the loader is held back long before it has sent everything.
            await trio.testing.wait_all_tasks_blocked()
            ahead = loader.sent - len(first)
            # At most each stage's buffer plus the item it holds (gather twice:
            # results, and futures whose results it is reading ahead).
            assert ahead <= 5 * (4 + 1), f"the loader ran {ahead} items ahead"
            rest = [value async for value in results]  # ends when the loader ends
    assert first + rest == [2 * (x + 1) for x in range(N)]
    print(f"{N} results in order; a paused consumer held the loader {ahead} items ahead")


async def errors_in_place(client: trioq.Client) -> None:
    send, receive = trio.open_memory_channel[int](8)
    async with send:
        for x in range(8):
            send.send_nowait(x)
    results = await client.gather(await client.map(picky, receive))  # plain values: no scatter
    outcomes: list[object] = []
    async with results:
        while True:
            try:
                outcomes.append(await results.receive())
            except ValueError as exc:  # this item's task failed; the stream goes on
                outcomes.append(str(exc))
            except trio.EndOfChannel:
                break
    assert outcomes == [0, 1, 2, "no 3", 4, 5, 6, "no 7"]


async def early_teardown(client: trioq.Client) -> None:
    async with trio.open_nursery() as nursery:
        loader = Loader(10**9)  # endless, for all practical purposes
        nursery.start_soon(loader.run)
        results = await pipeline(client, loader.channel, buffer=4)
        assert [await results.receive() for _ in range(5)] == [2, 4, 6, 8, 10]
        await results.aclose()  # tears every stage down, up to the source
    assert loader.stopped_early  # the loader saw BrokenResourceError and stopped
    # (A cancelled scope around the pipeline tears it down the same way.)


async def multiplex_and_merge(client: trioq.Client) -> None:
    send, receive = trio.open_memory_channel[int](0)

    async def load() -> None:
        async with send:
            for x in range(20):
                await send.send(x)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(load)
        data = await client.scatter(receive)
        # Two branches each get every data future (shared, released when both are done).
        async with streams.multiplex(2, data) as (left, right):
            evens = await client.gather(await client.map(double, left))
            odds = await client.gather(await client.map(inc, await client.map(double, right)))
            # One channel of both branches' results, as they come.
            async with streams.merge(evens, odds) as merged:
                got = [value async for value in merged]
    assert sorted(got) == list(range(40))


async def main() -> None:
    async with trioq.open_cluster(workers=2) as cluster:
        with trio.fail_after(30):
            async with trioq.connect(cluster.address) as client:
                await the_seed_pipeline(client)
                await errors_in_place(client)
                await early_teardown(client)
                await multiplex_and_merge(client)
                await trio.testing.wait_all_tasks_blocked()  # teardowns have finished
                status = await client.status()
                assert status["tasks"] == {}, status["tasks"]  # nothing left behind


if __name__ == "__main__":
    trio.run(main)
