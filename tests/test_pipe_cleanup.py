"""A pipe leaves nothing on the scheduler once both of its ends are closed.

A pipe is built from scheduler state: one or two queues, a link variable
(end 0's address for the direct link) and, once an end has closed, a
close tally (a channel).  These tests check that all of it is gone once
both ends closed, wherever the ends are (one client, two clients, a
worker child process through ``open_cluster(processes=True)``), whichever
end closes first and whether or not anything was read to the end; that it
stays while an end is open, so a peer can still drain what was sent; and
that an end pickled away and not yet used keeps the pipe.

The scheduler's state is read directly (``status()``); "gone" is checked
after a round trip of the client that closed last, so its deletions were
applied.  Every wait is bounded; nothing synchronises by sleeping.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import AsyncIterator
from typing import Any

import procs
import pytest
import trio

import trioq

WAIT = 10.0
PROCESS_WAIT = 60.0  # a worker child process starts, imports and connects


@pytest.fixture
async def cluster() -> AsyncIterator[Any]:
    async with trioq.open_cluster() as cluster:
        yield cluster
        cluster.scheduler.state.validate()


@pytest.fixture
async def client(cluster: Any) -> AsyncIterator[trioq.Client]:
    async with trioq.connect(cluster.address) as client:
        yield client


def pipe_state(cluster: Any) -> dict[str, list[str]]:
    """What of any pipe the scheduler holds: queue, variable and channel names."""
    report = cluster.scheduler.state.status()
    return {
        "queues": [q["name"] for q in report["queues"] if q["name"].startswith("pipe-")],
        "variables": [v for v in report["variables"] if v.startswith("pipe-")],
        "channels": [c["name"] for c in report["channels"] if c["name"].startswith("pipe-")],
    }


NOTHING: dict[str, list[str]] = {"queues": [], "variables": [], "channels": []}


@pytest.mark.parametrize("first", [0, 1], ids=["first-end-first", "second-end-first"])
async def test_both_ends_closing_without_reading_to_the_end_remove_everything(
    cluster: Any, client: trioq.Client, first: int
) -> None:
    with trio.fail_after(WAIT):
        ends = await client.pipe()
        await ends[0].send("never read")
        await ends[1].send("never read either")
        assert len(pipe_state(cluster)["queues"]) == 2
        await ends[first].aclose()
        state = pipe_state(cluster)
        assert len(state["queues"]) == 2  # the other end may still read
        assert state["channels"] == [f"{ends[0]._pipe}/closed"]
        await ends[1 - first].aclose()
        await client.status()
        assert pipe_state(cluster) == NOTHING


async def test_the_link_variable_goes_too_when_the_link_was_never_made(
    cluster: Any, client: trioq.Client
) -> None:
    with trio.fail_after(WAIT):
        a, b = await client.pipe()
        await a.send(1)  # end 0 in use: it publishes its address for end 1
        await procs.poll_until(lambda: pipe_state(cluster)["variables"] != [])
        await b.aclose()  # never used, never pickled: it counts as closed
        await a.aclose()
        await client.status()
        assert pipe_state(cluster) == NOTHING


async def test_a_linked_pipe_leaves_nothing_after_both_close(
    cluster: Any, client: trioq.Client
) -> None:
    with trio.fail_after(WAIT):
        a, b = await client.pipe()
        await a.send(1)
        assert await b.recv() == 1
        await b.send(2)
        assert await a.recv() == 2
        for end in (a, b):
            assert end._maker is not None
            await end._maker.settled.wait()
        async with a, b:
            await a.send(3)
            assert await b.recv() == 3
        await client.status()
        assert pipe_state(cluster) == NOTHING


async def test_a_simplex_pipe_removes_its_queue_once_both_close(
    cluster: Any, client: trioq.Client
) -> None:
    with trio.fail_after(WAIT):
        reader, writer = await client.pipe(duplex=False)
        await writer.send("left behind")
        await writer.aclose()
        assert len(pipe_state(cluster)["queues"]) == 1
        await reader.aclose()
        await client.status()
        assert pipe_state(cluster) == NOTHING


async def test_ends_in_two_clients_clean_up_whichever_closes_last(cluster: Any) -> None:
    with trio.fail_after(WAIT):
        async with trioq.connect(cluster.address) as one, trioq.connect(cluster.address) as two:
            a, b = await one.pipe()
            await one.queue("handoff").put(b)
            await b.aclose()  # pickled away: this copy does not count
            theirs = await two.queue("handoff").get()
            await a.send("hi")
            assert await theirs.recv() == "hi"
            await a.aclose()
            assert pipe_state(cluster)["queues"]  # the other end is still open
            await theirs.aclose()
            await two.status()
            assert pipe_state(cluster) == NOTHING


async def test_an_end_pickled_away_and_not_used_yet_keeps_the_pipe(
    cluster: Any, client: trioq.Client
) -> None:
    with trio.fail_after(WAIT):
        a, b = await client.pipe()
        data = pickle.dumps(b)
        await b.aclose()  # a copy exists: closing this one counts for nothing
        await a.send("for the copy")
        await a.aclose()
        await client.status()
        assert len(pipe_state(cluster)["queues"]) == 2
        copy = pickle.loads(data).bind(client)
        assert [value async for value in copy] == ["for the copy"]
        await copy.aclose()
        await client.status()
        assert pipe_state(cluster) == NOTHING


async def test_an_end_closed_by_a_cancellation_still_counts(
    cluster: Any, client: trioq.Client
) -> None:
    with trio.fail_after(WAIT):
        a, b = await client.pipe()
        await a.send("x")
        with trio.CancelScope() as scope:
            async with a:
                scope.cancel()
                await trio.sleep_forever()
        assert a.closed
        await b.aclose()
        await client.status()
        assert pipe_state(cluster) == NOTHING


async def echo_once(end: trioq.PipeEnd) -> int:
    """A task for a worker process: echo one value, close its end, say where it ran."""
    async with end:
        await end.send(("echo", await end.recv()))
    return os.getpid()


async def test_an_end_closed_in_a_worker_process_counts_across_processes() -> None:
    with trio.fail_after(PROCESS_WAIT):
        async with (
            trioq.open_cluster(workers=1, processes=True) as cluster,
            trioq.connect(cluster.address) as client,
        ):
            mine, theirs = await client.pipe()
            task = await client.submit(echo_once, theirs)
            await mine.send("ping")
            assert await mine.recv() == ("echo", "ping")
            assert await task != os.getpid()  # the other end closed in another process
            await mine.aclose()
            await client.status()
            assert pipe_state(cluster) == NOTHING
