"""FLAG_AWAITED: a lone request and its answer skip write gathering; a stream does not.

A client flags a request when it has nothing else in flight (someone waits on
that answer alone: latency matters); the scheduler then sends that answer at
once.  Requests issued while others are in flight, and their answers, are
left to write gathering (throughput).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import trio
import trio.testing

import trioq
from trioq._wire.messages import FLAG_AWAITED, Op

TIMEOUT = 10  # whole-test bound


@pytest.fixture
async def cluster() -> AsyncIterator[Any]:
    async with trioq.open_cluster() as cluster:
        yield cluster
        cluster.scheduler.state.validate()


@contextmanager
def recorded_sends(connection: Any) -> Iterator[list[tuple[int, int, int, bool]]]:
    """Every frame ``connection.send`` is given: (op, request id, flags, urgent)."""
    sent: list[tuple[int, int, int, bool]] = []
    original = connection.send

    def send(op: int, request_id: int, payload: bytes = b"", flags: int = 0, **kw: Any) -> None:
        sent.append((int(op), request_id, flags, bool(kw.get("urgent", False))))
        original(op, request_id, payload, flags, **kw)

    connection.send = send
    try:
        yield sent
    finally:
        del connection.send  # the bound method of the class again


async def test_a_lone_request_is_flagged_awaited_and_written_urgently(cluster: Any) -> None:
    with trio.fail_after(TIMEOUT):
        async with trioq.connect(cluster.address) as client:
            queue = client.queue("lone")
            await queue.qsize()  # the open's answer is in: nothing in flight
            with recorded_sends(client._session.connection) as sent:
                assert await queue.qsize() == 0
    ((_, _, flags, urgent),) = [s for s in sent if s[0] == Op.QUEUE_SIZE]
    assert flags & FLAG_AWAITED and urgent


async def test_requests_issued_while_others_are_in_flight_are_not_flagged(
    cluster: Any,
) -> None:
    with trio.fail_after(TIMEOUT):
        async with trioq.connect(cluster.address) as client:
            queue = client.queue("stream")
            await queue.qsize()
            with recorded_sends(client._session.connection) as sent:
                async with trio.open_nursery() as nursery:
                    for _ in range(5):
                        nursery.start_soon(queue.qsize)  # five at once: four join a stream
    sizes = [s for s in sent if s[0] == Op.QUEUE_SIZE]
    assert len(sizes) == 5
    assert sum(1 for _, _, flags, _ in sizes if flags & FLAG_AWAITED) == 1
    assert [urgent for _, _, flags, urgent in sizes] == [
        bool(flags & FLAG_AWAITED) for _, _, flags, _ in sizes
    ]


async def test_the_scheduler_answers_a_flagged_request_urgently_and_others_not(
    cluster: Any,
) -> None:
    with trio.fail_after(TIMEOUT):
        async with trioq.connect(cluster.address) as client:
            queue = client.queue("answers")
            await queue.qsize()
            server_side = cluster.scheduler._connections[client.id]
            with recorded_sends(server_side) as answered:
                await queue.qsize()  # flagged
                async with trio.open_nursery() as nursery:
                    for _ in range(3):
                        nursery.start_soon(queue.qsize)  # one flagged, two not
            assert not cluster.scheduler._awaited[client.id], "a flag outlived its answer"
    replies = [urgent for op, _, _, urgent in answered if op == Op.REPLY]
    assert len(replies) == 4
    assert replies.count(True) == 2


async def test_a_flagged_request_answered_later_is_still_answered_urgently(
    cluster: Any,
) -> None:
    # A get that waits in the scheduler: its answer comes with another client's put.
    with trio.fail_after(TIMEOUT):
        async with (
            trioq.connect(cluster.address) as getter,
            trioq.connect(cluster.address) as putter,
        ):
            queue = getter.queue("later", prefetch=1)
            await queue.qsize()
            getter_side = cluster.scheduler._connections[getter.id]
            with recorded_sends(getter_side) as answered:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(queue.get)
                    await trio.testing.wait_all_tasks_blocked()
                    assert cluster.scheduler._awaited[getter.id], "the get was not flagged"
                    await putter.queue("later").put("x")
            assert not cluster.scheduler._awaited[getter.id]
    assert [urgent for op, _, _, urgent in answered if op == Op.REPLY] == [True]


async def test_a_get_parked_in_the_background_does_not_unflag_a_lone_request(
    cluster: Any,
) -> None:
    # A request the scheduler holds (a waiting get) may stay pending for long;
    # it does not make the client's other lone requests part of a stream.
    with trio.fail_after(TIMEOUT):
        async with trioq.connect(cluster.address) as client:
            waiting = client.queue("parked", prefetch=1)
            other = client.queue("other")
            await other.qsize()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(waiting.get)
                await trio.testing.wait_all_tasks_blocked()
                assert client._session.parked == 1
                with recorded_sends(client._session.connection) as sent:
                    await other.qsize()
                parked = cluster.scheduler.state._conns[client.id].parked
                assert cluster.scheduler._awaited[client.id] <= set(parked)
                nursery.cancel_scope.cancel()
    ((_, _, flags, urgent),) = [s for s in sent if s[0] == Op.QUEUE_SIZE]
    assert flags & FLAG_AWAITED and urgent


async def test_a_request_nobody_awaits_is_not_flagged(cluster: Any) -> None:
    # An answer handled by a callback (opening a queue, a top-up) is not urgent.
    with trio.fail_after(TIMEOUT):
        async with trioq.connect(cluster.address) as client:
            with recorded_sends(client._session.connection) as sent:
                client.queue("opened-in-passing")
            await client.queue("opened-in-passing").qsize()
    ((_, _, flags, urgent),) = [s for s in sent if s[0] == Op.QUEUE_OPEN]
    assert not flags & FLAG_AWAITED and not urgent
