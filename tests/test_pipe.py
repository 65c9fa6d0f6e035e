"""Pipes end to end in one process: ``open_cluster(workers=1)`` plus ``connect``.

The worker runs in this process, so a task defined at module level is
pickled by reference; the pipe end it gets as an argument is pickled by
value (address and queue names) and binds to the worker's connection.
Every wait is bounded by ``trio.fail_after``; nothing synchronises by
sleeping.  Both ends bound to one client share one ordered connection, so
a close on one end is applied before the other end's next request.
"""

from __future__ import annotations

import pickle
import random
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio
import trio.testing

import trioq
from trioq._client.session import session_of

WAIT = 10.0  # seconds any one test may take


@pytest.fixture
async def cluster() -> AsyncIterator[Any]:
    async with trioq.open_cluster(workers=1) as cluster:
        yield cluster
        cluster.scheduler.state.validate()


@pytest.fixture
async def client(cluster: Any) -> AsyncIterator[trioq.Client]:
    async with trioq.connect(cluster.address) as client:
        yield client


def pipe_queues(cluster: Any) -> list[str]:
    return [q["name"] for q in cluster.scheduler.state.status()["queues"]]


async def echo_through(end: trioq.PipeEnd) -> int:
    """A task: send back ``("echo", value)`` for each value until the stream ends."""
    count = 0
    async with end:
        async for value in end:
            await end.send(("echo", value))
            assert end._session is session_of(trioq.worker_client())  # no connection of its own
            count += 1
    return count


# -- directions ------------------------------------------------------------------------


async def test_duplex_pipe_carries_values_both_ways_in_order(client: trioq.Client) -> None:
    with trio.fail_after(WAIT):
        a, b = await client.pipe()
        for i in range(5):
            await a.send(i)
        await b.send({"from": "b"})
        assert [await b.recv() for _ in range(5)] == [0, 1, 2, 3, 4]
        assert await a.recv() == {"from": "b"}
        assert (a.readable, a.writable, b.readable, b.writable) == (True, True, True, True)
        await a.aclose()
        await b.aclose()


async def test_simplex_pipe_first_end_receives_and_second_sends(client: trioq.Client) -> None:
    with trio.fail_after(WAIT):
        reader, writer = await client.pipe(duplex=False)
        assert (reader.readable, reader.writable) == (True, False)
        assert (writer.readable, writer.writable) == (False, True)
        await writer.send("one")
        await writer.send("two")
        await writer.aclose()
        assert [value async for value in reader] == ["one", "two"]
        await reader.aclose()


async def test_simplex_ends_refuse_the_wrong_direction_with_type_error(
    client: trioq.Client,
) -> None:
    with trio.fail_after(WAIT):
        reader, writer = await trioq.Pipe(client, duplex=False)
        with pytest.raises(TypeError, match=r"^this pipe end is receive-only$"):
            await reader.send(1)
        with pytest.raises(TypeError, match=r"^this pipe end is send-only$"):
            await writer.recv()
        with pytest.raises(TypeError, match=r"^this pipe end is send-only$"):
            async for _ in writer:
                pass
        # The refusal touched nothing: the pipe still works the right way.
        await writer.send("ok")
        assert await reader.recv() == "ok"


async def test_pipe_refuses_a_duplex_flag_that_is_not_a_bool(client: trioq.Client) -> None:
    with pytest.raises(TypeError, match=r"^duplex must be a bool, got str$"):
        await client.pipe("no")  # type: ignore[arg-type]


# -- ends of the stream -------------------------------------------------------------------


async def test_receive_drains_then_gets_end_of_channel_after_the_peer_closes(
    client: trioq.Client,
) -> None:
    with trio.fail_after(WAIT):
        a, b = await client.pipe()
        await a.send(1)
        await a.send(2)
        await a.aclose()
        assert await b.recv() == 1
        assert await b.recv() == 2
        with pytest.raises(trio.EndOfChannel):
            await b.recv()
        with pytest.raises(trio.EndOfChannel):
            await b.recv()  # and it stays ended


async def test_closing_an_end_that_never_sent_still_ends_the_peers_stream(
    client: trioq.Client,
) -> None:
    with trio.fail_after(WAIT):
        a, b = await client.pipe()
        await a.aclose()
        with pytest.raises(trio.EndOfChannel):
            await b.recv()


async def test_sending_to_an_end_that_closed_raises_broken_resource_error(
    client: trioq.Client,
) -> None:
    with trio.fail_after(WAIT):
        a, b = await client.pipe()
        await b.aclose()
        with pytest.raises(trio.BrokenResourceError):
            await a.send("nobody reads this")


async def test_send_and_receive_after_own_close_raise_closed_resource_error(
    client: trioq.Client,
) -> None:
    with trio.fail_after(WAIT):
        a, b = await client.pipe()
        await a.send("before")
        await a.aclose()
        await a.aclose()  # idempotent
        assert a.closed
        with pytest.raises(trio.ClosedResourceError, match=r"^this pipe end was closed$"):
            await a.send("after")
        with pytest.raises(trio.ClosedResourceError, match=r"^this pipe end was closed$"):
            await a.recv()
        with pytest.raises(trio.ClosedResourceError):
            pickle.dumps(a)
        assert await b.recv() == "before"


async def test_async_for_yields_every_value_until_the_peer_closes(client: trioq.Client) -> None:
    with trio.fail_after(WAIT):
        a, b = await client.pipe()
        async with a:
            for i in range(20):
                await a.send(i)
        assert a.closed
        async with b:
            assert [value async for value in b] == list(range(20))


async def test_end_closing_after_end_of_channel_deletes_the_pipes_queues(
    cluster: Any, client: trioq.Client
) -> None:
    with trio.fail_after(WAIT):
        a, b = await client.pipe()
        await a.send("x")
        await b.send("y")  # never read: a closes first
        assert len([n for n in pipe_queues(cluster) if n.startswith("pipe-")]) == 2
        await a.aclose()
        async with b:
            assert [value async for value in b] == ["x"]
        await client.status()  # a round trip: the deletions were applied
        assert not [n for n in pipe_queues(cluster) if n.startswith("pipe-")]


async def test_simplex_reader_closing_after_end_of_channel_deletes_the_queue(
    cluster: Any, client: trioq.Client
) -> None:
    with trio.fail_after(WAIT):
        reader, writer = await client.pipe(duplex=False)
        async with writer:
            await writer.send(1)
        async with reader:
            assert [value async for value in reader] == [1]
        await client.status()
        assert not [n for n in pipe_queues(cluster) if n.startswith("pipe-")]


# -- pickling and binding ---------------------------------------------------------------------


async def test_pickled_end_holds_address_and_queue_names_but_no_token(
    cluster: Any, client: trioq.Client
) -> None:
    _, b = await client.pipe()
    data = pickle.dumps(b)
    assert cluster.token.encode() not in data
    copy = pickle.loads(data)
    assert copy.address == cluster.address
    assert (copy._send_name, copy._receive_name) == (b._send_name, b._receive_name)
    assert "unbound" in repr(copy)


async def test_unbound_end_outside_a_task_says_how_to_bind_it(client: trioq.Client) -> None:
    _, b = await client.pipe()
    copy = pickle.loads(pickle.dumps(b))
    for use in (copy.recv, lambda: copy.send(1)):
        with pytest.raises(RuntimeError, match=r"call end\.bind\(client\).*async with end:"):
            await use()


async def test_bind_refuses_a_second_client(cluster: Any, client: trioq.Client) -> None:
    a, _ = await client.pipe()
    async with trioq.connect(cluster.address) as other:
        with pytest.raises(RuntimeError, match="already bound to another client"):
            a.bind(other)
    assert a.bind(client) is a


async def test_end_sent_to_a_worker_as_a_task_argument_echoes_through_it(
    client: trioq.Client,
) -> None:
    with trio.fail_after(WAIT):
        a, b = await client.pipe()
        future = await client.submit(echo_through, b)
        for i in range(5):
            await a.send(i)
        assert [await a.recv() for _ in range(5)] == [("echo", i) for i in range(5)]
        await a.aclose()  # the task's loop ends, its `async with` closes its end
        assert await future == 5


async def test_end_passed_through_a_queue_to_another_client_works_once_bound(
    cluster: Any, client: trioq.Client
) -> None:
    with trio.fail_after(WAIT):
        a, b = await client.pipe()
        await client.queue("handoff").put(b)
        await b.aclose()  # the local copy was pickled away: closing it ends nothing
        async with trioq.connect(cluster.address) as other:
            end = (await other.queue("handoff").get()).bind(other)
            await a.send("hello")
            assert await end.recv() == "hello"
            await end.send("back")
            assert await a.recv() == "back"
            await end.aclose()
            with pytest.raises(trio.EndOfChannel):
                await a.recv()


async def test_async_with_connects_an_unbound_end_for_the_block(cluster: Any) -> None:
    with trio.fail_after(WAIT):
        async with trioq.connect(cluster.address) as client:
            a, b = await client.pipe()
            copy = pickle.loads(pickle.dumps(b))
            async with copy:
                own = copy._session
                assert own is not None and own is not session_of(client)
                await copy.send("from the copy")
                assert await a.recv() == "from the copy"
                await a.send("to the copy")
                assert await copy.recv() == "to the copy"
            assert own.closed  # the block's connection ended with it
            with pytest.raises(trio.EndOfChannel):
                await a.recv()
            clients = (await client.status())["clients"]
            assert len(clients) == 2  # this client and the worker: none left over


async def test_error_in_a_connected_block_propagates_and_still_closes(cluster: Any) -> None:
    with trio.fail_after(WAIT):
        async with trioq.connect(cluster.address) as client:
            a, b = await client.pipe()
            copy = pickle.loads(pickle.dumps(b))
            with pytest.raises(ValueError, match=r"^inside$"):
                async with copy:
                    await copy.send(1)
                    raise ValueError("inside")
            assert copy.closed and copy._session is not None and copy._session.closed
            assert [value async for value in a] == [1]


# -- cancellation -------------------------------------------------------------------------------


async def test_cancelled_receives_lose_and_duplicate_no_value(client: trioq.Client) -> None:
    count = 300
    rng = random.Random(7)
    received: list[int] = []
    cancelled = 0
    with trio.fail_after(WAIT * 2):
        a, b = await client.pipe()

        async def produce() -> None:
            async with a:
                for i in range(count):
                    await a.send(i)
                    if i % 10 == 0:  # pacing (not synchronisation): the receiver
                        await trio.sleep(rng.choice([0, 1e-4, 1e-3]))  # waits parked too

        async with trio.open_nursery() as nursery:
            nursery.start_soon(produce)
            while True:
                with trio.move_on_after(rng.choice([0, 0, 1e-5, 1e-4, 1e-3])) as scope:
                    try:
                        received.append(await b.recv())
                    except trio.EndOfChannel:
                        break
                cancelled += scope.cancelled_caught
    assert received == list(range(count))
    assert cancelled > 0


async def test_cancelled_receive_parked_for_a_value_takes_nothing(client: trioq.Client) -> None:
    with trio.fail_after(WAIT):
        a, b = await client.pipe()
        async with trio.open_nursery() as nursery:
            scope = trio.CancelScope()

            async def wait_for_one() -> None:
                with scope:
                    await b.recv()

            nursery.start_soon(wait_for_one)
            await trio.testing.wait_all_tasks_blocked()  # parked in the scheduler
            scope.cancel()
        assert scope.cancelled_caught
        await a.send("kept")
        assert await b.recv() == "kept"


async def test_send_cancelled_before_it_starts_sends_nothing(client: trioq.Client) -> None:
    with trio.fail_after(WAIT):
        a, b = await client.pipe()
        with trio.CancelScope() as scope:
            scope.cancel()
            await a.send("never")
        assert scope.cancelled_caught
        await a.send("sent")
        await a.aclose()
        assert [value async for value in b] == ["sent"]


async def test_a_cancelled_aclose_still_closes_both_directions(client: trioq.Client) -> None:
    with trio.fail_after(WAIT):
        a, b = await client.pipe()
        await a.send("first")
        assert await b.receive() == "first"  # both of b's endpoints are open
        with trio.CancelScope() as scope:
            scope.cancel()
            await b.aclose()
        with pytest.raises(trio.EndOfChannel):  # b's sending side was closed
            await a.receive()
        with pytest.raises(trio.BrokenResourceError):  # and its receiving side
            for _ in range(3):  # a put is refused on the send after its answer came
                await a.send("nobody reads this")
                await client.status()
        await a.aclose()
