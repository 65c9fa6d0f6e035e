"""Tasks on workers: submit, map, gather, as_completed, errors and cancellation;
futures as references (through a queue and a variable, as task arguments);
tasks that use the cluster themselves through ``trioq.worker_client()``.

Runs an embedded scheduler with two in-process workers:
``python docs/examples/tasks_and_futures.py``.  It checks its own results
and exits 0 only if they hold.
"""

from __future__ import annotations

import trio

import trioq


def square(x: int) -> int:
    return x * x


def add(*numbers: int) -> int:
    return sum(numbers)


async def slow_double(x: int) -> int:
    await trio.sleep(0.01 * x)  # an async task runs as a trio task on the worker
    return 2 * x


def fails() -> None:
    raise KeyError("missing")


async def fan_out(n: int) -> int:
    """A task that submits tasks of its own and reports through a queue."""
    client = trioq.worker_client()  # the worker's connection: no token, no connect
    parts = await client.map(square, range(n))
    total = sum(await client.gather(parts))
    await client.queue("reports").put(f"fan_out({n}) = {total}")
    return total


def count_in_thread(name: str) -> int:
    """A plain function runs in a worker thread: it reaches trio through trio.from_thread."""
    client = trioq.worker_client()
    queue = trio.from_thread.run_sync(client.queue, name)  # making a handle is sync
    return trio.from_thread.run(queue.qsize)  # awaiting goes through trio.from_thread.run


async def basics(client: trioq.Client) -> None:
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
    else:
        raise AssertionError("the cancelled task returned")


async def dependencies(client: trioq.Client) -> None:
    # A future given to submit (anywhere in the arguments) is a dependency:
    # the task waits for it, then receives its *result* in its place.
    a, b = await client.submit(square, 3), await client.submit(square, 4)
    total = await client.submit(add, a, b, 1)
    assert await total == 9 + 16 + 1

    # map over futures: one dependent task per future.
    squares = await client.map(square, range(5))
    plus_one = await client.map(add, squares, [1] * 5)
    assert await client.gather(plus_one) == [x * x + 1 for x in range(5)]

    # A failed dependency fails its dependents with the same error; they never run.
    broken = await client.submit(fails)
    dependent = await client.submit(add, broken, 1)
    try:
        await dependent
    except KeyError:
        pass
    else:
        raise AssertionError("a task with a failed dependency ran")


async def references(address: str) -> None:
    # A future is a reference: it can be put in a queue or a variable (or a
    # channel) like any value.  The scheduler keeps the task's result while
    # something refers to it, even after the submitting client has gone.
    async with trioq.connect(address, name="submitter") as submitter:
        future = await submitter.submit(square, 12)
        await submitter.queue("futures").put({"answer": future})
        await submitter.variable("latest").set([future])
    # The submitter has left; the queued item and the variable keep the task alive.
    async with trioq.connect(address, name="reader") as reader:
        item = await reader.queue("futures").get()
        assert isinstance(item["answer"], trioq.Future)
        assert await item["answer"] == 144  # bound to the reader's own connection
        (again,) = await reader.variable("latest").get()
        assert await again == 144
        await reader.variable("latest").delete()  # the last reference to the value
        await item["answer"].release()  # ... and to this client's copy


async def inside_tasks(client: trioq.Client) -> None:
    # worker_client() lets a task submit tasks, use queues, variables, channels.
    assert await (await client.submit(fan_out, 4)) == 0 + 1 + 4 + 9
    assert await client.queue("reports").get() == "fan_out(4) = 14"

    # A thread task goes through trio.from_thread to use it.
    queue = client.queue("counted")
    await queue.put_batch(["x", "y", "z"])
    assert await (await client.submit(count_in_thread, "counted")) == 3
    await queue.delete()


async def main() -> None:
    async with trioq.open_cluster(workers=2) as cluster:
        with trio.fail_after(30):
            async with trioq.connect(cluster.address) as client:
                await basics(client)
                await dependencies(client)
                await inside_tasks(client)
            await references(cluster.address)
    print("tasks, dependencies, futures as references and worker_client() checked out")


if __name__ == "__main__":
    trio.run(main)
