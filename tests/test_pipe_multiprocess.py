"""Pipe ends pickled into separate client processes.

A scheduler process on 127.0.0.1 port 0 (``procs.scheduler_process``); the
test process is one client, and this file run as a script is the other
(``python tests/test_pipe_multiprocess.py ROLE ADDRESS ...``).  The end
travels as a pickle: on the command line (hex) or through a queue.  The
child's token comes only from ``TRIOQ_TOKEN`` (``procs.client_env``): the
pickle holds none.  Processes are owned by ``procs.started`` (SIGTERM, then
SIGKILL, on the way out); every wait is bounded; nothing sleeps to
synchronise: the test reads the lines the child prints.
"""

from __future__ import annotations

import json
import pickle
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import procs
import pytest
import trio

import trioq

WAIT = 30.0  # a child process starts, imports trioq and connects on a loaded box
SCRIPT = Path(__file__).resolve()


@pytest.fixture
async def scheduler(tmp_path: Path) -> AsyncIterator[procs.SchedulerProc]:
    async with procs.scheduler_process(tmp_path / "cluster") as running:
        yield running
    print(running.proc.describe())  # shown by pytest only when the test failed


def child(scheduler: procs.SchedulerProc, role: str, *args: str) -> Any:
    """This file as a client program, with the token in its environment only."""
    return procs.script_process(scheduler, SCRIPT, role, *args)


async def test_end_pickled_to_another_process_carries_values_both_ways(
    scheduler: procs.SchedulerProc,
) -> None:
    with trio.fail_after(WAIT):
        async with trioq.connect(scheduler.address, token=scheduler.token) as client:
            mine, theirs = await client.pipe()
            data = pickle.dumps(theirs)
            assert scheduler.token.encode() not in data
            async with child(scheduler, "echo", data.hex()) as proc:
                await proc.expect("ready")
                for i in range(10):
                    await mine.send(i)
                assert [await mine.recv() for _ in range(10)] == [2 * i for i in range(10)]
                await mine.aclose()  # the child's loop ends and it closes its end
                status, lines = await proc.finish()
                assert status == 0, proc.describe()
                assert lines == ["received 10"]


async def test_simplex_ends_in_another_process_send_and_receive(
    scheduler: procs.SchedulerProc,
) -> None:
    with trio.fail_after(WAIT):
        async with trioq.connect(scheduler.address, token=scheduler.token) as client:
            # Out: the child receives, through an end given on its command line.
            reader, writer = await client.pipe(duplex=False)
            async with child(scheduler, "consume", pickle.dumps(reader).hex()) as proc:
                async with writer:
                    for i in range(5):
                        await writer.send({"n": i})
                status, lines = await proc.finish()
                assert status == 0, proc.describe()
                assert lines == ["items " + json.dumps([{"n": i} for i in range(5)])]
            # Back: the child sends, through an end it takes from a queue.
            reader, writer = await client.pipe(duplex=False)
            await client.queue("handoff").put(writer)
            async with child(scheduler, "produce", "handoff", "5") as proc:
                async with reader:
                    assert [value async for value in reader] == [f"item {i}" for i in range(5)]
                status, lines = await proc.finish()
                assert status == 0, proc.describe()


# -- the client programs (run in the child process) -------------------------------------------


def _say(*parts: object) -> None:
    print(*parts, flush=True)


async def _echo(address: str, data: str) -> None:
    """Send back twice each value until the stream ends, on its own connection."""
    end = pickle.loads(bytes.fromhex(data))
    assert end.address == address
    count = 0
    async with end:  # unbound: connects with TRIOQ_TOKEN for the block
        _say("ready")
        async for value in end:
            await end.send(2 * value)
            count += 1
    _say("received", count)


async def _consume(address: str, data: str) -> None:
    """Receive until the stream ends; print the items as JSON."""
    end = pickle.loads(bytes.fromhex(data))
    async with end:
        items = [value async for value in end]
    _say("items", json.dumps(items))


async def _produce(address: str, queue: str, count: str) -> None:
    """Take a send-only end from ``queue``, bind it to this client, send ``count`` items."""
    async with trioq.connect(address) as client:
        end = (await client.queue(queue).get()).bind(client)
        async with end:
            for i in range(int(count)):
                await end.send(f"item {i}")


if __name__ == "__main__":
    role, *arguments = sys.argv[1:]
    trio.run({"echo": _echo, "consume": _consume, "produce": _produce}[role], *arguments)
