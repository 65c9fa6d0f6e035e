"""Queue, Variable and queue endpoint handles pickle, and attach where they are unpickled.

A handle pickles as names (a queue's ``maxsize`` and ``prefetch`` too),
never as a connection.  Unpickled by a client's serializer (an item or
value read, a task's arguments) it attaches to that client; by plain
``pickle.loads``, to the client of the trioq task running it; with
neither, unpickling raises ``RuntimeError``.  An unpickled endpoint is one
more endpoint, counted across the cluster until it is closed; the original
stays counted until it is closed.

Two layers:

* One process (``trioq.open_cluster``, an in-process worker): handles read
  back by another client, ``.client``, the error without a client, plain
  ``pickle`` inside a task, and the endpoint counts the scheduler keeps.
* Real processes (``tests/procs.py``: a scheduler and a ``python -m trioq
  worker`` process, each in its own session, SIGTERM then SIGKILL on the
  way out, on 127.0.0.1 port 0): a queue, a variable and a send endpoint
  passed as task arguments to the worker process and used there; and a
  queue, a variable and a receive endpoint read from a queue by another
  client process (this file run as its client program).  Task functions
  come from a factory, so cloudpickle sends them by value: the worker
  cannot import this module.

Every wait is bounded by ``trio.fail_after``; nothing sleeps.  Conditions
in other processes are polled (bounded) or read from their printed lines.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import re
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import procs
import pytest
import trio
from clusters import queue_status

import trioq
from trioq import SerializationError

WAIT = 10.0  # seconds any one in-process step may take
READY_TIMEOUT = 30.0  # a worker process starts, imports and connects, on a loaded CI box
STEP_TIMEOUT = 15.0  # one cross-process step
TEST_TIMEOUT = 90.0  # any one multi-process test, whatever it waits for
SCRIPT = Path(__file__).resolve()  # run as the client program


def is_worker_client(*handles: Any) -> list[bool]:
    """Whether each handle uses the connection of the worker running this task."""
    me = trioq.worker_client()
    return [handle.client is me for handle in handles]


async def unpickle_here(data: bytes) -> list[Any]:
    """A task: ``pickle.loads`` a queue and use it through the worker's connection."""
    queue = pickle.loads(data)
    await queue.put("put by the task")
    return [queue.name, queue.maxsize, queue._prefetch, *is_worker_client(queue)]


def unpickle_in_a_thread(data: bytes) -> str:
    """A plain-function task (a worker thread): a handle cannot be made here."""
    try:
        pickle.loads(data)
    except RuntimeError as exc:
        return str(exc)
    return "unpickled"


# -- one process -------------------------------------------------------------------------------


@pytest.fixture
async def cluster() -> AsyncIterator[Any]:
    """An embedded cluster with one worker; its state is checked at the end."""
    async with trioq.open_cluster(workers=1) as cluster:
        yield cluster
        cluster.scheduler.state.validate()


async def test_handles_name_the_client_they_were_made_by(cluster: Any) -> None:
    async with trioq.connect(cluster.address) as client:
        queue = client.queue("jobs")
        send, receive = queue.open_channels()
        variable = client.variable("config")
        assert [h.client for h in (queue, send, receive, variable)] == [client] * 4
        assert all(h.client is client for h in (queue, send, receive, variable))
        await send.aclose()
        await receive.aclose()


async def test_a_queue_read_from_a_queue_attaches_to_the_reader_with_its_sizes(
    cluster: Any,
) -> None:
    async with (
        trioq.connect(cluster.address) as a,
        trioq.connect(cluster.address) as b,
    ):
        with trio.fail_after(WAIT):
            jobs = a.queue("jobs", maxsize=3, prefetch=5)
            await a.queue("handles").put({"jobs": jobs})
            read = (await b.queue("handles").get())["jobs"]
            assert isinstance(read, trioq.Queue)
            assert read.client is b
            assert (read.name, read.maxsize, read._prefetch) == ("jobs", 3, 5)
            await read.put("from b")
            assert await jobs.get() == "from b"


async def test_a_variable_read_from_a_variable_attaches_to_the_reader(cluster: Any) -> None:
    async with (
        trioq.connect(cluster.address) as a,
        trioq.connect(cluster.address) as b,
    ):
        with trio.fail_after(WAIT):
            config = a.variable("config")
            await a.variable("handles").set([config])
            [read] = await b.variable("handles").get()
            assert isinstance(read, trioq.Variable)
            assert (read.name, read.client) == ("config", b)
            await read.set("set by b")
            assert await config.get() == "set by b"


async def test_plain_pickle_needs_a_client_to_attach_to(cluster: Any) -> None:
    async with trioq.connect(cluster.address) as client:
        queue = client.queue("jobs", maxsize=2)
        data = [pickle.dumps(h) for h in (queue, client.variable("v"), queue.open_send_channel())]
        names = ["Queue 'jobs'", "Variable 'v'", "Queue 'jobs'"]  # an endpoint: its queue
        for what, pickled in zip(names, data, strict=True):
            with pytest.raises(RuntimeError, match=re.escape(f"cannot unpickle trioq.{what} here")):
                pickle.loads(pickled)


async def test_plain_pickle_inside_a_task_attaches_to_the_workers_client(cluster: Any) -> None:
    async with trioq.connect(cluster.address) as client:
        with trio.fail_after(WAIT):
            queue = client.queue("jobs", maxsize=7, prefetch=3)
            data = pickle.dumps(queue)  # plain bytes: the submit does not see a queue
            assert await (await client.submit(unpickle_here, data)) == ["jobs", 7, 3, True]
            assert await queue.get() == "put by the task"


async def test_plain_pickle_in_a_worker_thread_is_refused_with_the_way_out(cluster: Any) -> None:
    async with trioq.connect(cluster.address) as client:
        with trio.fail_after(WAIT):
            data = pickle.dumps(client.queue("jobs"))
            message = await (await client.submit(unpickle_in_a_thread, data))
            assert message == (
                "cannot unpickle trioq.Queue 'jobs' outside trio's thread: use "
                "trio.from_thread.run_sync(pickle.loads, data)"
            )


async def test_a_closed_endpoint_refuses_to_pickle(cluster: Any) -> None:
    async with trioq.connect(cluster.address) as client:
        send, receive = client.queue("jobs").open_channels()
        await send.aclose()
        await receive.aclose()
        with pytest.raises(trio.ClosedResourceError, match="a closed send endpoint"):
            pickle.dumps(send)
        with pytest.raises(trio.ClosedResourceError, match="a closed receive endpoint"):
            pickle.dumps(receive)
        with pytest.raises(SerializationError):
            await client.queue("handles").put(send)


async def test_an_unpickled_endpoint_counts_as_one_more_until_it_is_closed(cluster: Any) -> None:
    async with (
        trioq.connect(cluster.address) as a,
        trioq.connect(cluster.address) as b,
    ):
        with trio.fail_after(WAIT):
            send, receive = a.queue("stream").open_channels()
            await a.queue("handles").put(send)
            copy = await b.queue("handles").get()
            assert isinstance(copy, trioq.QueueSendChannel)
            assert copy.client is b
            await b.queue("stream").qsize()  # a round trip: the copy's open is in
            assert queue_status(cluster, "stream")["senders"] == 2
            await send.aclose()  # the original: the copy keeps the stream open
            await a.queue("stream").qsize()
            assert queue_status(cluster, "stream")["senders"] == 1
            await copy.send("after the original closed")
            assert await receive.receive() == "after the original closed"
            await copy.aclose()  # the last one: the stream ends
            with pytest.raises(trio.EndOfChannel):
                await receive.receive()
            await receive.aclose()


# -- real processes ---------------------------------------------------------------------------


scheduler = procs.limited_scheduler_fixture(TEST_TIMEOUT)
program = procs.programs_of(SCRIPT)


def make_producer_task() -> Callable[..., Any]:
    """The task the worker process runs (nested, so cloudpickle sends it by value)."""

    async def produce(jobs: Any, gate: Any, send: Any) -> int:
        import os

        import trioq

        me = trioq.worker_client()
        async with send:
            await send.send(["attached", [h.client is me for h in (jobs, gate, send)]])
            await send.send(["sizes", jobs.maxsize, jobs._prefetch])
            await send.send(["got", await jobs.get()])
            await gate.get()  # set by the test once it closed its own send endpoint
            await send.send(["after the original closed"])
        return os.getpid()

    return produce


async def workers_up(client: trioq.Client, count: int) -> None:
    async def up() -> bool:
        return len((await client.status())["workers"]) == count

    await procs.poll_until(up)


async def endpoints(client: trioq.Client, name: str) -> tuple[int, int]:
    """(senders, receivers) the scheduler counts for queue ``name``."""
    for entry in (await client.status())["queues"]:
        if entry["name"] == name:
            return entry["senders"], entry["receivers"]
    raise AssertionError(f"queue {name!r} is not on the scheduler")


async def test_a_worker_process_uses_a_queue_a_variable_and_an_endpoint_given_as_arguments(
    scheduler: procs.SchedulerProc,
) -> None:
    async with AsyncExitStack() as stack:
        await stack.enter_async_context(procs.worker_process(scheduler, "worker-0"))
        client = await stack.enter_async_context(
            trioq.connect(scheduler.address, token=scheduler.token, name="test")
        )
        with trio.fail_after(READY_TIMEOUT):
            await workers_up(client, 1)
        with trio.fail_after(STEP_TIMEOUT):
            jobs = client.queue("jobs", maxsize=4, prefetch=2)
            gate = client.variable("gate")
            send, receive = client.queue("stream").open_channels()
            future = await client.submit(make_producer_task(), jobs, gate, send)
            assert await receive.receive() == ["attached", [True, True, True]]
            assert await receive.receive() == ["sizes", 4, 2]
            assert await endpoints(client, "stream") == (2, 1)  # the task's copy counts
            await jobs.put("job")
            assert await receive.receive() == ["got", "job"]
            await send.aclose()  # the original goes; the task's copy keeps the stream
            await gate.set(True)
            assert await receive.receive() == ["after the original closed"]
            with pytest.raises(trio.EndOfChannel):  # the task closed its copy
                await receive.receive()
            assert await future != os.getpid()
            assert await endpoints(client, "stream") == (0, 1)
            await receive.aclose()


async def test_a_client_process_reads_handles_from_a_queue_and_uses_them(
    scheduler: procs.SchedulerProc,
) -> None:
    async with trioq.connect(scheduler.address, token=scheduler.token, name="test") as client:
        with trio.fail_after(STEP_TIMEOUT):
            replies = client.queue("replies", maxsize=5, prefetch=3)
            report = client.variable("report")
            stream = client.queue("stream")
            send, receive = stream.open_channels()
            await client.queue("handles").put([replies, report, receive])
            async with program(scheduler, "reader") as reader:
                line = await reader.expect("attached ")
                assert json.loads(line) == [True, True, True, 5, 3]
                assert await endpoints(client, "stream") == (1, 2)  # the reader's copy counts
                await receive.aclose()  # the original; the reader's copy still reads
                async with send:
                    for n in range(3):
                        await send.send(n)  # would raise BrokenResourceError with no reader
                assert await procs.finished(reader) == ["done"]
            assert await report.get() == [0, 1, 2]
            assert await replies.get() == "bye"

            async def reader_closed() -> bool:
                return await endpoints(client, "stream") == (0, 0)

            await procs.poll_until(reader_closed)  # its copy was counted until it closed


# -- the client program (run in the child process) --------------------------------------------


async def _reader(args: argparse.Namespace) -> None:
    """Read [queue, variable, receive endpoint] from "handles"; drain the endpoint
    into the variable, then put "bye" in the queue.  Prints ``attached JSON``
    once its endpoint is counted, ``done`` at the end."""
    async with trioq.connect(args.address, name="reader") as client:
        replies, report, receive = await client.queue("handles").get()
        await replies.qsize()  # a round trip: the endpoint opened on unpickling is counted
        attached = [h.client is client for h in (replies, report, receive)]
        print("attached", json.dumps([*attached, replies.maxsize, replies._prefetch]), flush=True)
        async with receive:
            items = [item async for item in receive]
        await report.set(items)
        await replies.put("bye")
    print("done", flush=True)


def _main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="tests/test_handle_pickling.py")
    roles = parser.add_subparsers(dest="role", required=True)
    reader = roles.add_parser("reader")
    reader.add_argument("address")
    args = parser.parse_args(argv)
    trio.run(_reader, args)


if __name__ == "__main__":
    _main()
