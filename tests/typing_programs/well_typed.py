"""A user's program that ``mypy --strict`` must accept, as is (``tests/test_typing.py``).

Every ``assert_type`` pins a type a user relies on; ``main`` also runs, so
the types are checked against what trioq really returns.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import assert_type

import trio

import trioq


def inc(x: int) -> int:
    return x + 1


def scale(x: int, factor: float = 2.0) -> float:
    return x * factor


def label(name: str, count: int) -> str:
    return f"{name}:{count}"


async def fetch(x: int) -> bytes:
    await trio.lowlevel.checkpoint()
    return bytes([x])


def count_to(n: int) -> Iterator[int]:
    yield from range(n)


def fail(text: str) -> int:
    raise ValueError(text)


def first_key(futures: list[trioq.Future]) -> str:
    """A bare ``Future`` (``Future[Any]``) is still a valid annotation."""
    return futures[0].key


async def use_a_cluster(client: trioq.Client) -> None:
    future = await client.submit(inc, 1)
    assert_type(future, trioq.Future[int])
    assert_type(await future, int)
    assert_type(await future.result(), int)
    assert await future == 2

    assert_type(await client.submit(fetch, 3), trioq.Future[bytes])  # the coroutine's result
    assert_type(await client.submit(scale, 2, factor=0.5), trioq.Future[float])
    assert_type(await client.submit(inc, 4, priority=2, key="inc-4"), trioq.Future[int])
    assert_type(await client.submit(label, "a", future), trioq.Future[str])  # a dependency
    partial = functools.partial(scale, factor=3.0)
    assert_type(await client.submit(partial, 2, retries=1), trioq.Future[float])

    futures = await client.map(inc, range(3))
    assert_type(futures, list[trioq.Future[int]])
    assert_type(await client.map(fetch, [1, 2], priority=1), list[trioq.Future[bytes]])
    assert_type(await client.map(label, ["a", "b"], futures), list[trioq.Future[str]])
    results = await client.gather(futures)
    assert_type(results, list[int])
    assert results == [1, 2, 3]
    assert first_key(futures) == futures[0].key
    async for done in client.as_completed(futures):
        assert_type(done, trioq.Future[int])

    data = await client.scatter(10)
    assert_type(data, trioq.Future[int])
    assert_type(await client.scatter(["x", "y"]), list[trioq.Future[str]])
    assert_type(await client.submit(inc, data), trioq.Future[int])
    assert await (await client.submit(inc, data)) == 11

    failed = await client.submit(fail, "no")
    error = await failed.exception()
    assert_type(error, BaseException | None)
    assert isinstance(error, ValueError)
    assert await future.exception() is None


async def use_a_task_queue() -> None:
    async with trioq.TaskQueue(trioq.ThreadWorker()) as tq:
        assert_type(await tq.call(inc, 1), int)
        assert_type(await tq.call(scale, 1, factor=1.5), float)
        assert_type(await tq.call(fetch, 1, niceness=-5, timeout=10.0), bytes)
        items = await tq.call(count_to, 3)
        assert_type(items, trio.abc.ReceiveChannel[int])
        assert [item async for item in items] == [0, 1, 2]


async def main() -> None:
    with trio.fail_after(30):
        async with (
            trioq.open_cluster(workers=1) as cluster,
            trioq.connect(cluster.address) as client,
        ):
            await use_a_cluster(client)
        await use_a_task_queue()


if __name__ == "__main__":
    trio.run(main)
