"""A future read from a queue, a variable or a channel knows how its task ended, at once.

The scheduler tells a connection how each task it hands a reference to
has ended (``TaskFinished``) ahead of the answer carrying the reference,
and the client keeps what it was told until it makes the future: so
``fut.status`` is right the moment the item is read, with no await.

Two layers:

* ``SchedulerState`` (sans-IO, ``validate()`` after every step): the notice
  comes before the reply carrying the item, for "finished" and "error",
  and not at all for a task still pending.
* End to end in one process (``trioq.open_cluster`` with a worker): client A
  puts a future, client B reads it and looks at ``status`` before any
  await.  The status is the scheduler's, not what A knew when it put it;
  an item prefetched while its task ran learns the end too.

Every wait is bounded by ``trio.fail_after``; nothing sleeps.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio
from gated_tasks import GATES, add, gated

import trioq
from trioq._scheduler.state import Notice, Reply, SchedulerState
from trioq._wire.messages import (
    Items,
    Message,
    QueueGet,
    QueueOpen,
    QueuePut,
    Value,
    VariableGet,
    VariableSet,
)
from trioq._wire.serialize import Reference, Serializer
from trioq._wire.task_messages import (
    Scatter,
    Submit,
    TaskAssign,
    TaskDone,
    TaskFinished,
    WorkerHello,
    WorkerReady,
)

WAIT = 10.0  # seconds any one step may take


def fail(message: str) -> None:
    """A task that raises (module level: the in-process worker imports it)."""
    raise ValueError(message)


# -- the scheduler's side (sans-IO) ----------------------------------------------------------

A, B, WORKER = 1, 2, 9


class Harness:
    """A ``SchedulerState`` with clients A and B and a worker; ``validate()`` after each step."""

    def __init__(self) -> None:
        self.state = SchedulerState()
        self.rids = itertools.count(1)
        for conn in (A, B, WORKER):
            self.state.connect(conn, f"conn-{conn}", f"127.0.0.1:{1000 + conn}")
        self.send(WORKER, WorkerHello("w", 1, []))

    def send(self, conn: int, message: Message) -> tuple[int, list[Any]]:
        rid = next(self.rids)
        out = self.state.handle(conn, rid, message)
        self.state.validate()
        return rid, out

    def failed_task(self, key: str) -> None:
        """Submit ``key`` from A and have the worker report it failed."""
        self.send(A, Submit(key, b"payload", 0, None, 0))
        _, out = self.send(WORKER, WorkerReady(1))
        assert [i.message.key for i in out if isinstance(i.message, TaskAssign)] == [key]
        self.send(WORKER, TaskDone(key, False, b"error"))


def referring_to(key: str) -> bytes:
    """An item holding a reference to ``key``, as a client's ``dumps_item`` makes it."""
    return Serializer().dumps_item(["a future", Reference(key)])


def told(out: list[Any], conn: int) -> list[tuple[int, TaskFinished]]:
    """(position, notice) of each ``TaskFinished`` for ``conn`` in ``out``."""
    return [
        (index, i.message)
        for index, i in enumerate(out)
        if isinstance(i, Notice) and i.conn == conn and isinstance(i.message, TaskFinished)
    ]


def position_of_reply(out: list[Any], conn: int, rid: int, kind: type[Message]) -> int:
    (index,) = [
        index
        for index, i in enumerate(out)
        if isinstance(i, Reply) and (i.conn, i.request_id) == (conn, rid)
        if isinstance(i.message, kind)
    ]
    return index


@pytest.mark.parametrize("status", ["finished", "error"])
def test_the_end_of_a_task_goes_ahead_of_the_item_that_refers_to_it(status: str) -> None:
    h = Harness()
    if status == "finished":
        h.send(A, Scatter("t", b"\x05"))  # a data future: finished at once
    else:
        h.failed_task("t")
    h.send(A, Submit("pending", b"payload", 0, None, 0))  # no worker asks for it: it waits
    h.send(A, QueueOpen("q", 0))
    h.send(A, QueuePut("q", [referring_to("t"), referring_to("pending")], False, True))
    h.send(B, QueueOpen("q", 0))
    rid, out = h.send(B, QueueGet("q", 2, True))
    reply_at = position_of_reply(out, B, rid, Items)
    assert len(out[reply_at].message.items) == 2
    [(notice_at, notice)] = told(out, B)  # of the ended task only
    assert notice == TaskFinished("t", status)
    assert notice_at < reply_at


def test_a_value_read_is_preceded_by_the_end_of_its_task_too() -> None:
    h = Harness()
    h.failed_task("t")
    h.send(A, VariableSet("v", referring_to("t")))
    rid, out = h.send(B, VariableGet("v", False))
    [(notice_at, notice)] = told(out, B)
    assert notice == TaskFinished("t", "error")
    assert notice_at < position_of_reply(out, B, rid, Value)


# -- end to end -------------------------------------------------------------------------------


@pytest.fixture
async def clients() -> AsyncIterator[tuple[trioq.Client, trioq.Client]]:
    """Clients A and B of an embedded cluster with one worker."""
    async with (
        trioq.open_cluster(workers=1) as cluster,
        trioq.connect(cluster.address, name="A") as a,
        trioq.connect(cluster.address, name="B") as b,
    ):
        yield a, b
        cluster.scheduler.state.validate()


async def test_a_finished_future_read_from_a_queue_is_finished_at_once(
    clients: tuple[trioq.Client, trioq.Client],
) -> None:
    a, b = clients
    with trio.fail_after(WAIT):
        fut = await a.submit(add, 1, 2)
        assert await fut == 3
        await a.queue("futures").put(fut)
        read = await b.queue("futures").get()
        assert (read.status, read.done()) == ("finished", True)  # no await in between
        assert await read == 3


async def test_a_finished_future_read_from_a_variable_is_finished_at_once(
    clients: tuple[trioq.Client, trioq.Client],
) -> None:
    a, b = clients
    with trio.fail_after(WAIT):
        fut = await a.submit(add, 4, 5)
        await fut
        await a.variable("result").set({"future": fut})
        read = (await b.variable("result").get())["future"]
        assert read.status == "finished"
        assert await read == 9


async def test_a_failed_future_read_from_a_queue_or_variable_has_status_error_at_once(
    clients: tuple[trioq.Client, trioq.Client],
) -> None:
    a, b = clients
    with trio.fail_after(WAIT):
        fut = await a.submit(fail, "boom")
        with pytest.raises(ValueError, match="boom"):
            await fut
        await a.queue("failures").put(fut)
        await a.variable("failure").set(fut)
        from_queue = await b.queue("failures").get()
        assert from_queue.status == "error"
        await from_queue.release()  # B lets go; reading it again must still know
        from_variable = await b.variable("failure").get()
        assert from_variable.status == "error"
        with pytest.raises(ValueError, match="boom"):
            await from_variable


async def test_a_finished_future_read_from_a_channel_is_finished_at_once(
    clients: tuple[trioq.Client, trioq.Client],
) -> None:
    a, b = clients
    with trio.fail_after(WAIT):
        fut = await a.submit(add, 2, 2)
        await fut
        channel = a.channel("events")
        await channel.append(fut)
        await channel.flush()
        async for read in b.channel("events"):
            assert read.status == "finished"
            break


async def test_the_status_is_the_schedulers_when_read_not_the_putters_when_put(
    clients: tuple[trioq.Client, trioq.Client],
) -> None:
    a, b = clients
    with trio.fail_after(WAIT):
        fut = await a.submit(gated, "go", "late")
        await a.queue("futures").put(fut)  # pending when put
        assert fut.status == "pending"
        GATES["go"].set()
        assert await fut == "late"  # ended now; the item in the queue still says nothing
        read = await b.queue("futures").get()
        assert read.status == "finished"


async def test_a_future_prefetched_while_its_task_ran_learns_the_end_before_it_is_read(
    clients: tuple[trioq.Client, trioq.Client],
) -> None:
    a, b = clients
    with trio.fail_after(WAIT):
        fut = await a.submit(gated, "go", "done")
        await a.queue("mixed").put_batch(["plain", fut])
        queue_b = b.queue("mixed", prefetch=2)
        assert await queue_b.get() == "plain"  # the future came along, still running
        GATES["go"].set()
        await fut
        await queue_b.qsize()  # a round trip: B's notice of the end is in by now
        read = await queue_b.get()  # from B's prefetch buffer
        assert read.status == "finished"
