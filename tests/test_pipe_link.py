"""A pipe's direct link: made once both ends are used, order kept across the switch.

The ends of a pipe start on scheduler queues and move to a direct TCP
connection (see ``trioq._client.pipe_link``).  These tests check the switch
happens, keeps every value in order, ends and breaks as the queues did, and
that a pipe whose link cannot be made goes on over its queues.  Every wait
is bounded by ``trio.fail_after``.
"""

from __future__ import annotations

import pickle
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio

import trioq
from trioq._client import pipe_link as _pipe_link

WAIT = 10.0


@pytest.fixture
async def cluster() -> AsyncIterator[Any]:
    async with trioq.open_cluster() as cluster:
        yield cluster
        cluster.scheduler.state.validate()


@pytest.fixture
async def client(cluster: Any) -> AsyncIterator[trioq.Client]:
    async with trioq.connect(cluster.address) as client:
        yield client


async def exchange(a: trioq.PipeEnd, b: trioq.PipeEnd, first: Any = 1, second: Any = 2) -> None:
    """One value each way: both ends are in use, so they start making the link."""
    await a.send(first)
    assert await b.receive() == first
    await b.send(second)
    assert await a.receive() == second


async def linked_pipe(client: trioq.Client) -> tuple[trioq.PipeEnd, trioq.PipeEnd]:
    """A duplex pipe whose ends have switched to their direct link."""
    a, b = await client.pipe()
    await exchange(a, b)
    await wait_linked(a, b)
    return a, b


async def wait_linked(*ends: trioq.PipeEnd) -> None:
    for end in ends:
        assert end._maker is not None
        await end._maker.ready.wait()


async def test_both_ends_in_use_switch_to_a_direct_link_and_keep_every_value_in_order(
    client: trioq.Client,
) -> None:
    with trio.fail_after(WAIT):
        a, b = await client.pipe()
        n = 500
        received: list[int] = []
        async with trio.open_nursery() as nursery:

            async def read_all() -> None:
                async for value in b:
                    received.append(value)

            nursery.start_soon(read_all)
            sent = 0

            async def send() -> None:
                nonlocal sent
                await a.send(sent)
                sent += 1

            for _ in range(n):  # over the queues while the link comes up
                await send()
            while not a._switched_out:
                await send()
                await trio.lowlevel.checkpoint()  # sends need not switch; the setup must run
            for _ in range(n):  # over the link
                await send()
            await a.aclose()
        assert received == list(range(sent))
        assert a._switched_out and b._switched_in


async def test_values_go_both_ways_over_the_link_once_it_is_up(client: trioq.Client) -> None:
    with trio.fail_after(WAIT):
        a, b = await linked_pipe(client)
        for i in range(50):
            await a.send(i)
            assert await b.receive() == i
            await b.send(-i)
            assert await a.receive() == -i
        assert a._switched_out and b._switched_out and a._switched_in and b._switched_in
        await a.aclose()
        await b.aclose()


async def test_a_linked_end_that_closes_gives_end_of_channel_after_what_it_sent(
    client: trioq.Client,
) -> None:
    with trio.fail_after(WAIT):
        a, b = await linked_pipe(client)
        for i in range(10):
            await a.send(i)
        await a.aclose()
        assert [await b.receive() for _ in range(10)] == list(range(10))
        with pytest.raises(trio.EndOfChannel):
            await b.receive()
        await b.aclose()


async def test_sending_over_a_link_whose_peer_closed_raises_broken_resource_error(
    client: trioq.Client,
) -> None:
    with trio.fail_after(WAIT):
        a, b = await linked_pipe(client)
        await a.send(3)  # switched: over the link
        assert await b.receive() == 3
        await b.aclose()
        with pytest.raises(trio.EndOfChannel):  # the peer's end of stream has arrived
            await a.receive()
        with pytest.raises(trio.BrokenResourceError):
            await a.send("into the void")
        await a.aclose()


async def test_a_pipe_whose_link_cannot_be_made_goes_on_over_its_queues(
    client: trioq.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def no_listeners(*args: Any, **kwargs: Any) -> Any:
        raise OSError("no listening allowed here")

    monkeypatch.setattr(_pipe_link.trio, "open_tcp_listeners", no_listeners)
    with trio.fail_after(WAIT):
        a, b = await client.pipe()
        for i in range(20):
            await a.send(i)
            await b.send(-i)
        assert [await b.receive() for _ in range(20)] == list(range(20))
        assert [await a.receive() for _ in range(20)] == [-i for i in range(20)]
        assert not (a._switched_out or b._switched_out)
        await a.aclose()
        with pytest.raises(trio.EndOfChannel):
            await b.receive()
        await b.aclose()


async def test_a_stranger_without_the_secret_is_refused_and_the_peer_still_links(
    cluster: Any, client: trioq.Client
) -> None:
    with trio.fail_after(WAIT):
        a, b = await client.pipe()
        await a.send("first")  # end 0 listens and publishes its address
        address, _secret = await client.variable(f"{a._pipe}/link").get()
        host, _, port = address.rpartition(":")
        stranger = await trio.open_tcp_stream(host, int(port))
        from trioq._wire.transport import FramedConnection

        with pytest.raises(trioq.AuthenticationError):
            await FramedConnection(stranger).client_handshake("not the secret", "stranger")
        await trio.aclose_forcefully(stranger)
        assert await b.receive() == "first"
        await b.send("linked")
        assert await a.receive() == "linked"
        await wait_linked(a, b)
        await a.send("direct")
        assert await b.receive() == "direct"
        assert a._switched_out
        await a.aclose()
        await b.aclose()


async def test_an_end_that_was_used_cannot_be_pickled(client: trioq.Client) -> None:
    with trio.fail_after(WAIT):
        a, b = await client.pipe()
        await a.send(1)
        with pytest.raises(RuntimeError, match="used cannot be pickled"):
            pickle.dumps(a)
        pickle.dumps(b)  # unused: it may still be passed on
        await a.aclose()


async def test_closing_linked_ends_leaves_no_pipe_state_on_the_scheduler(
    cluster: Any, client: trioq.Client
) -> None:
    with trio.fail_after(WAIT):
        a, b = await linked_pipe(client)
        await a.aclose()
        with pytest.raises(trio.EndOfChannel):
            await b.receive()
        await b.aclose()
        await client.status()  # every close above is applied
        status = cluster.scheduler.state.status()
        assert status["queues"] == [] and status["variables"] == []


async def test_an_unexpected_error_while_linking_leaves_the_pipe_on_its_queues(
    client: trioq.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken_connect(self: Any) -> Any:
        raise ValueError("not an address")

    monkeypatch.setattr(_pipe_link.LinkMaker, "_connect", broken_connect)
    with trio.fail_after(WAIT):
        a, b = await client.pipe()
        await exchange(a, b)
        assert a._maker is not None and b._maker is not None
        await b._maker.settled.wait()
        assert b._maker.failed and not b._switched_out
        for i in range(10):
            await a.send(i)
        assert [await b.receive() for _ in range(10)] == list(range(10))
        assert await client.status()  # the client is alive and well
        await a.aclose()
        await b.aclose()


async def test_an_end_that_fails_after_the_handshake_leaves_both_ends_on_their_queues(
    client: trioq.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def connect_without_confirming(self: Any) -> Any:
        connection = await self._connect_to_peer(confirm=False)
        await connection.aclose()
        raise OSError("lost after the handshake")

    monkeypatch.setattr(_pipe_link.LinkMaker, "_connect", connect_without_confirming)
    with trio.fail_after(WAIT):
        a, b = await client.pipe()
        await exchange(a, b, "first", "back")
        assert a._maker is not None and b._maker is not None
        await a._maker.settled.wait()
        await b._maker.settled.wait()
        assert a._maker.failed and b._maker.failed
        for i in range(10):
            await a.send(i)
            await b.send(-i)
        assert [await b.receive() for _ in range(10)] == list(range(10))
        assert [await a.receive() for _ in range(10)] == [-i for i in range(10)]
        await a.aclose()
        await b.aclose()
