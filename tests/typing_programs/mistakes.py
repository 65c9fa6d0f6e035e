"""A user's program with mistakes that ``mypy --strict`` must report (``tests/test_typing.py``).

Each mistake is on one line, marked ``# error: <mypy's error code>``; the
test requires that error on every marked line and no error on any other
line.  It is only type-checked, never run.
"""

from __future__ import annotations

import trioq


def inc(x: int) -> int:
    return x + 1


async def fetch(x: int) -> bytes:
    return bytes([x])


async def mistakes(client: trioq.Client, tq: trioq.TaskQueue) -> None:
    await client.submit(inc, "one")  # error: arg-type
    await client.submit(inc, 1, base=10)  # error: call-arg
    await client.submit(inc, 1, priority="high")  # error: call-arg
    await client.submit(fetch)  # error: call-arg
    await client.map(inc, ["a", "b"])  # error: arg-type
    await client.map(fetch, [1], [2])  # error: arg-type
    await tq.call(inc, "x")  # error: arg-type
    await tq.call(inc, 1, niceness="low")  # error: call-arg
    fut = await client.submit(inc, 1)
    x: str = await fut  # error: assignment
    y: bytes = await fut.result()  # error: assignment
    words = await client.scatter(["a", "b"])
    await client.submit(inc, words[0])  # error: arg-type
    z: list[str] = await client.gather([fut])  # error: list-item
    error: ValueError = await fut.exception()  # error: assignment
    w: str = await tq.call(fetch, 1)  # error: arg-type
    print(x, y, z, error, w)
