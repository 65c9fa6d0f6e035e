"""Replayable channels: two writers, two subscribers that see one order, a late
subscriber that replays, ``maxlen``, futures kept alive by a channel, and a
cancelled read that loses nothing.

Run it with ``python docs/examples/channels.py``.  It checks its own
results and exits 0 only if they hold.
"""

from __future__ import annotations

import trio

import trioq

N = 50  # elements per writer


def square(x: int) -> int:
    return x * x


async def writer(address: str, name: str) -> None:
    async with trioq.connect(address, name=name) as client:
        events = client.channel("events")
        for i in range(N):
            await events.append(f"{name}-{i}")  # returns without waiting for the scheduler
        await events.flush()  # every append of this handle is now applied (or raised)


async def subscriber(address: str, seen: list[str]) -> None:
    async with trioq.connect(address) as client:
        async for element in client.channel("events"):  # replays, then follows
            seen.append(element)
        # the loop ended: the channel was stopped and read to its end


async def one_order_for_everyone(address: str) -> None:
    first: list[str] = []
    second: list[str] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(subscriber, address, first)
        nursery.start_soon(subscriber, address, second)
        async with trio.open_nursery() as writers:
            writers.start_soon(writer, address, "left")
            writers.start_soon(writer, address, "right")
        async with trioq.connect(address) as client:
            await client.channel("events").stop()  # ends every subscriber's loop
    # Two writers interleave however they like, but every subscriber reads
    # the one order the scheduler applied, with nothing lost or repeated.
    assert first == second
    assert sorted(first) == sorted(f"{w}-{i}" for w in ("left", "right") for i in range(N))
    left = [element for element in first if element.startswith("left")]
    assert left == [f"left-{i}" for i in range(N)]  # each writer's order is kept

    # A late subscriber replays the whole channel; a snapshot is the same list.
    async with trioq.connect(address) as late:
        events = late.channel("events")
        assert [element async for element in events] == first
        assert await events.snapshot() == first
        # subscribe(start) skips the elements numbered below start.
        async with events.subscribe(start=2 * N - 3) as tail:
            assert [element async for element in tail] == first[-3:]


async def bounded_and_futures(address: str) -> None:
    async with trioq.connect(address, name="producer") as client:
        recent = client.channel("recent", maxlen=3)  # keeps only the newest three
        await recent.extend(range(10))  # several elements, in order, in one message
        future = await client.submit(square, 9)
        await recent.append({"result": future})  # a future is a reference
        await recent.flush()
    # The producer has gone.  The channel retains [7, 8, 9] and then the future
    # pushes out 7; the future's task is kept alive while the channel retains it.
    async with trioq.connect(address, name="consumer") as client:
        recent = client.channel("recent")  # maxlen omitted: take it as it is
        *numbers, last = await recent.snapshot()
        assert numbers == [8, 9] and recent.maxlen == 3
        assert await last["result"] == 81


async def cancelled_read(address: str) -> None:
    async with trioq.connect(address) as client:
        quiet = client.channel("quiet")
        async with quiet.subscribe() as reader:
            with trio.move_on_after(0.1):
                await reader.receive()  # nothing yet: withdrawn when cancelled
            assert reader.position == 0  # the read position did not move
            await quiet.append("first")
            assert await reader.receive() == "first"  # not lost, and not repeated:
            await quiet.stop()
            try:
                await reader.receive()
            except trio.EndOfChannel:
                pass
            else:
                raise AssertionError("a stopped channel did not end the subscription")
        try:
            await quiet.append("too late")
            await quiet.flush()
        except trio.ClosedResourceError:
            pass  # appends to a stopped channel are refused
        else:
            raise AssertionError("an append after stop was accepted")


async def main() -> None:
    async with trioq.open_cluster(workers=1) as cluster:
        with trio.fail_after(30):
            await one_order_for_everyone(cluster.address)
            await bounded_and_futures(cluster.address)
            await cancelled_read(cluster.address)
    print(f"channels: {2 * N} elements in one order for every subscriber; maxlen, futures ok")


if __name__ == "__main__":
    trio.run(main)
