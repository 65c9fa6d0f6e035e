"""SimpleQueue in pull and push mode; Pipe ends used in place, sent to a task,
passed through a queue, and pickled into another process.

Run it with ``python docs/examples/simple_queue_and_pipe.py``.  It checks
its own results and exits 0 only if they hold.
"""

from __future__ import annotations

import functools
import os
import pickle
import sys

import trio

import trioq

# The program another process runs with a pickled end (see ``in_another_process``).
CHILD = """
import pickle, sys, trio

async def main():
    end = pickle.loads(bytes.fromhex(sys.argv[1]))  # unbound: no client, no token
    async with end:  # connects to end.address for the block (token: TRIOQ_TOKEN)
        async for value in end:
            await end.send(value.upper())
    # leaving the block closed the end, then the connection

trio.run(main)
"""


async def simple_queues(client: trioq.Client) -> None:
    # pull: each get asks the scheduler for one item (load-balanced by demand).
    # push: the scheduler deals items to this consumer ahead of its gets, up to
    # ``window``; get takes them from a local buffer.
    for mode in ("pull", "push"):
        async with client.simple_queue(f"jobs-{mode}", mode, window=64) as queue:
            for i in range(100):
                await queue.put(i)
            assert [await queue.get() for _ in range(100)] == list(range(100))
            assert await queue.qsize() == 0


async def echo(end: trioq.PipeEnd) -> int:
    """A task: answer each value until the other end closes."""
    count = 0
    async with end:  # inside a task the end binds to trioq.worker_client()
        async for value in end:
            await end.send(("echo", value))
            count += 1
    return count


async def pipes(client: trioq.Client) -> None:
    # Duplex (the default): each end sends to the other.
    a, b = await client.pipe()
    await a.send("ping")
    assert await b.recv() == "ping"  # recv is receive, under Fiber's name
    await b.send({"pong": [1, 2]})
    assert await a.receive() == {"pong": [1, 2]}
    await a.send("last words")
    await a.aclose()
    assert await b.receive() == "last words"  # what was sent is drained first ...
    try:
        await b.receive()  # ... then the end of the stream
    except trio.EndOfChannel:
        pass
    else:
        raise AssertionError("no EndOfChannel after the other end closed")
    try:
        await b.send("anyone?")
    except trio.BrokenResourceError:
        pass  # the other end no longer receives
    else:
        raise AssertionError("sent to a closed end")
    await b.aclose()
    try:
        await b.receive()
    except trio.ClosedResourceError:
        pass  # this end itself was closed
    else:
        raise AssertionError("received on a closed end")

    # Simplex: the first end only receives, the second only sends.
    reader, writer = await client.pipe(duplex=False)
    try:
        await reader.send("wrong way")
    except TypeError:
        pass  # a programming error, not a state of the stream
    else:
        raise AssertionError("a receive-only end sent")
    async with writer:
        for i in range(3):
            await writer.send(i)
    async with reader:
        assert [value async for value in reader] == [0, 1, 2]  # until EndOfChannel


async def end_as_task_argument(client: trioq.Client) -> None:
    mine, theirs = await client.pipe()
    future = await client.submit(echo, theirs)  # the end travels with the task
    await theirs.aclose()  # our copy was pickled away: closing it ends nothing
    for i in range(5):
        await mine.send(i)
    assert [await mine.recv() for _ in range(5)] == [("echo", i) for i in range(5)]
    await mine.aclose()  # the task's loop ends
    assert await future == 5


async def end_through_a_queue(address: str, client: trioq.Client) -> None:
    mine, theirs = await client.pipe()
    await client.queue("handoff").put(theirs)
    async with trioq.connect(address) as other:  # another client, maybe elsewhere
        end = await other.queue("handoff").get()  # read back by a client: bound to it
        async with end:
            await mine.send("hello")
            assert await end.recv() == "hello"
            await end.send("hello back")
        assert await mine.recv() == "hello back"
    await mine.aclose()


async def in_another_process(cluster: trioq.Cluster, client: trioq.Client) -> None:
    mine, theirs = await client.pipe()
    data = pickle.dumps(theirs)  # the address and the pipe's identity; no token
    assert cluster.token.encode() not in data
    env = dict(os.environ, TRIOQ_TOKEN=cluster.token, PYTHONPATH=os.pathsep.join(sys.path))
    async with trio.open_nursery() as nursery:
        command = [sys.executable, "-c", CHILD, data.hex()]
        child = await nursery.start(functools.partial(trio.run_process, command, env=env))
        for word in ("one", "two", "three"):
            await mine.send(word)
        assert [await mine.recv() for _ in range(3)] == ["ONE", "TWO", "THREE"]
        await mine.aclose()  # the child's loop ends; it closes its end and exits
    assert child.returncode == 0


async def main() -> None:
    async with trioq.open_cluster(workers=1) as cluster:
        with trio.fail_after(30):
            async with trioq.connect(cluster.address) as client:
                await simple_queues(client)
                await pipes(client)
                await end_as_task_argument(client)
                await end_through_a_queue(cluster.address, client)
                await in_another_process(cluster, client)
    print("SimpleQueue in both modes, and Pipe ends in place, in a task, via a queue and a process")


if __name__ == "__main__":
    trio.run(main)
