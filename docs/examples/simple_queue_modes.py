"""Measure SimpleQueue's two dispatch modes: items/s, and how a fast and a slow
consumer split the work.

For pull, and for push with the default ``window`` (16) and a larger one
(64), on an embedded scheduler, each client with its own connection:

* **throughput**: one consumer takes ``N`` items that are already queued;
  items/s is ``N`` over the time from its first ``get`` to its last.
* **split**: a fast consumer (no work) and a slow one (``SLOW_WORK`` seconds
  of simulated work per item) share ``M`` items; the slow one's share is
  printed.

Run it with ``python docs/examples/simple_queue_modes.py``.  The figures
depend on the machine; what the script checks (every item consumed exactly
once, and the slow consumer getting a smaller share in pull mode than in
push mode) does not, and it exits 0 only if that holds.
"""

from __future__ import annotations

import trio

import trioq

N = 3000  # items for the throughput run
M = 200  # items for the split run
SLOW_WORK = 0.01  # seconds the slow consumer "works" on each item (simulated)
MODES = [("pull", 16), ("push", 16), ("push", 64)]  # (mode, window); window: push only


async def throughput(address: str, mode: str, window: int) -> float:
    name = f"throughput-{mode}-{window}"
    async with trioq.connect(address) as producer:
        await producer.queue(name).put_batch(list(range(N)))
    async with (
        trioq.connect(address) as consumer,
        consumer.simple_queue(name, mode, window=window) as queue,
    ):
        got = [await queue.get()]
        started = trio.current_time()
        got += [await queue.get() for _ in range(N - 1)]
        elapsed = trio.current_time() - started
    assert got == list(range(N)), "a single consumer gets every item, in order"
    return (N - 1) / elapsed


async def consume(
    address: str, name: str, mode: str, window: int, work: float, taken: list[int]
) -> None:
    async with (
        trioq.connect(address) as client,
        client.simple_queue(name, mode, window=window) as queue,
    ):
        while (item := await queue.get()) is not None:
            taken.append(item)
            if work:
                await trio.sleep(work)  # simulated work, not synchronisation
    # Leaving the queue's block returned the items pushed here and not taken.


async def split(address: str, mode: str, window: int) -> tuple[list[int], list[int]]:
    name = f"split-{mode}-{window}"
    fast: list[int] = []
    slow: list[int] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(consume, address, name, mode, window, 0.0, fast)
        nursery.start_soon(consume, address, name, mode, window, SLOW_WORK, slow)
        async with trioq.connect(address) as producer:
            queue = producer.queue(name)
            await both_waiting(producer, name, "getters" if mode == "pull" else "subscribers")
            await queue.put_batch(list(range(M)))
            await queue.put_batch([None, None])  # one end marker per consumer
    assert sorted(fast + slow) == list(range(M)), "every item exactly once"
    return fast, slow


async def both_waiting(client: trioq.Client, name: str, field: str) -> None:
    """Start the split only once both consumers wait for items: a fair start.

    Nothing notifies a producer of that, so it polls the scheduler's status
    (bounded by the caller's ``fail_after``)."""
    while True:
        queues = {q["name"]: q for q in (await client.status())["queues"]}
        if name in queues and queues[name][field] == 2:
            return
        await trio.sleep(0.005)


async def main() -> None:
    slow_share = {}
    async with trioq.open_cluster() as cluster:
        with trio.fail_after(60):
            for mode, window in MODES:
                rate = await throughput(cluster.address, mode, window)
                fast, slow = await split(cluster.address, mode, window)
                slow_share[mode, window] = len(slow)
                label = mode if mode == "pull" else f"push, window {window}"
                print(
                    f"{label:>15}: {rate:8.0f} items/s with one consumer; "
                    f"{M} items split fast {len(fast):3d} / slow {len(slow):3d}"
                )
    # Pull balances by demand: the slow consumer takes the fewest items.
    assert slow_share["pull", 16] < min(slow_share["push", 16], slow_share["push", 64]), slow_share


if __name__ == "__main__":
    trio.run(main)
