"""A producer and a consumer share a bounded queue and two variables.

Both clients would normally run on different machines; here they are two
tasks of one program, each with its own connection, so the example runs
anywhere with ``python docs/examples/queues_and_variables.py``.  It checks
its own results and exits 0 only if they hold.
"""

from __future__ import annotations

import trio

import trioq

N_ITEMS = 100
MAXSIZE = 8


async def producer(address: str) -> None:
    async with trioq.connect(address, name="producer") as client:
        queue = client.queue("jobs", maxsize=MAXSIZE)
        send, receive = queue.open_channels()
        # Announce the queue only once our endpoints exist: requests on one
        # connection are applied in order, so when the consumer sees this
        # value, our send endpoint is already counted.
        await client.variable("jobs-ready").set(True)
        # Keep our (unused) receive endpoint open while sending: once the
        # last receive endpoint in the cluster closes, sends fail.
        async with receive, send:
            for i in range(N_ITEMS):
                await send.send({"job": i, "payload": [i] * 3})  # waits for room
                assert await queue.qsize() <= MAXSIZE, "the bound was exceeded"
        # Leaving the block closed our send endpoint, the last one: the
        # consumer drains what is left and then sees the end of the stream.


async def consumer(address: str) -> None:
    async with trioq.connect(address, name="consumer") as client:
        await client.variable("jobs-ready").get(timeout=10)
        queue = client.queue("jobs", maxsize=MAXSIZE)
        send, receive = queue.open_channels()
        await send.aclose()  # we only receive; the producer's sender keeps it open
        seen = []
        async with receive:
            async for message in receive:  # ends at trio.EndOfChannel
                seen.append(message["job"])
        await client.variable("consumed").set(seen)


async def main() -> None:
    async with trioq.open_cluster() as cluster:
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(consumer, cluster.address)
                nursery.start_soon(producer, cluster.address)

            async with trioq.connect(cluster.address) as client:
                consumed = await client.variable("consumed").get()
                assert consumed == list(range(N_ITEMS)), consumed  # FIFO, none lost
                queue = client.queue("jobs")  # maxsize 0: take the queue as it is
                assert await queue.qsize() == 0  # everything consumed and acknowledged
                assert queue.maxsize == MAXSIZE  # as the scheduler reported it
                await queue.delete()
                for name in ("jobs-ready", "consumed"):
                    await client.variable(name).delete()
    print(f"consumed {len(consumed)} items in order through a queue of maxsize {MAXSIZE}")


if __name__ == "__main__":
    trio.run(main)
