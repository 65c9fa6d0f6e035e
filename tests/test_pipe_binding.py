"""A pipe end read back by a client is bound to that client, as a future is.

Fiber's ends reconnect wherever they are unpickled.  Here an end that a
trioq client reads (a queue's ``get``, a variable's ``get``, a channel's
elements, a task's result) comes back bound to that client's connection,
so it works at once, with no ``bind``.  An end that ``pickle.loads``
restores, or one whose scheduler is another address, stays unbound:
``bind`` (or a task's ``worker_client``, or ``async with end:``) is for
those.  Every wait is bounded by ``trio.fail_after``.
"""

from __future__ import annotations

import pickle
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio

import trioq
from trioq._client.pipe import PipeEnd
from trioq._client.session import session_of

WAIT = 10.0


@pytest.fixture
async def cluster() -> AsyncIterator[Any]:
    async with trioq.open_cluster(workers=1) as cluster:
        yield cluster
        cluster.scheduler.state.validate()


async def round_trip(end: PipeEnd, peer: PipeEnd) -> None:
    await peer.send("to the end read back")
    assert await end.recv() == "to the end read back"
    await end.send("from it")
    assert await peer.recv() == "from it"


def bound_to(end: PipeEnd, client: trioq.Client) -> bool:
    return "bound" in repr(end) and end._session is session_of(client)


@pytest.mark.parametrize("through", ["queue", "variable", "channel"])
async def test_an_end_read_by_another_client_is_bound_to_it(cluster: Any, through: str) -> None:
    with trio.fail_after(WAIT):
        async with trioq.connect(cluster.address) as one, trioq.connect(cluster.address) as two:
            a, b = await one.pipe()
            if through == "queue":
                await one.queue("handoff").put(b)
                end = await two.queue("handoff").get()
            elif through == "variable":
                await one.variable("handoff").set(b)
                end = await two.variable("handoff").get()
            else:
                channel = one.channel("handoff")
                await channel.append({"end": b})
                await channel.flush()
                (element,) = await two.channel("handoff").snapshot()
                end = element["end"]
            assert bound_to(end, two)
            await round_trip(end, a)
            assert end.bind(two) is end  # binding again to the same client: a no-op
            with pytest.raises(RuntimeError, match="already bound"):
                end.bind(one)
            await end.aclose()
            await a.aclose()


async def test_an_end_read_back_by_the_client_that_made_it_is_bound_to_it(
    cluster: Any,
) -> None:
    with trio.fail_after(WAIT):
        async with trioq.connect(cluster.address) as client:
            a, b = await client.pipe()
            await client.queue("loop").put([b])
            (end,) = await client.queue("loop").get()
            assert end is not b and bound_to(end, client)
            await round_trip(end, a)


def hand_back(end: PipeEnd) -> PipeEnd:
    """A task that returns the (unused) end it was given."""
    return end


async def test_an_end_in_a_task_result_is_bound_to_the_client_awaiting_it(cluster: Any) -> None:
    with trio.fail_after(WAIT):
        async with trioq.connect(cluster.address) as client:
            a, b = await client.pipe()
            end = await (await client.submit(hand_back, b))
            assert bound_to(end, client)
            await round_trip(end, a)


async def test_an_end_of_another_scheduler_read_back_stays_unbound(cluster: Any) -> None:
    with trio.fail_after(WAIT):
        async with trioq.connect(cluster.address) as client:
            stranger = PipeEnd("tcp://127.0.0.1:9", "pipe-elsewhere-0", "pipe-elsewhere-1")
            await client.queue("handoff").put(stranger)
            end = await client.queue("handoff").get()
            assert end._session is None and "unbound" in repr(end)
            assert end.address == "tcp://127.0.0.1:9"


async def test_an_end_restored_by_pickle_loads_stays_unbound(cluster: Any) -> None:
    async with trioq.connect(cluster.address) as client:
        _, b = await client.pipe()
        copy = pickle.loads(pickle.dumps(b))
        assert copy._session is None and "unbound" in repr(copy)
