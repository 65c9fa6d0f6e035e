"""A producer and a consumer share a bounded queue; a variable carries the result.

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
        # Only the half we use: the queue is closed when the last send
        # endpoint in the cluster closes, which is ours, at the end.
        async with queue.open_send_channel() as send:
            for i in range(N_ITEMS):
                await send.send({"job": i, "payload": [i] * 3})  # waits for room
                assert await queue.qsize() <= MAXSIZE, "the bound was exceeded"
        # Leaving the block closed our send endpoint, the last one: the
        # consumer drains what is left and then sees the end of the stream.


async def consumer(address: str) -> None:
    async with trioq.connect(address, name="consumer") as client:
        queue = client.queue("jobs", maxsize=MAXSIZE)
        seen = []
        async with queue.open_receive_channel() as receive:
            async for message in receive:  # ends at trio.EndOfChannel
                seen.append(message["job"])
        await client.variable("consumed").set(seen)  # report back to main()


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
                await client.variable("consumed").delete()
    print(f"consumed {len(consumed)} items in order through a queue of maxsize {MAXSIZE}")


if __name__ == "__main__":
    trio.run(main)
