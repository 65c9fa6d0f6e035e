"""trioq across real processes: a scheduler process, producer and consumer processes, the CLI.

Each test starts ``python -m trioq scheduler`` on 127.0.0.1, port 0, and
client processes (``tests/procs.py``) that print what they do, flushed, one
line at a time; the test process takes part as a "coordinator" client.
Every process is cleaned up by the context manager that started it, and
every wait is bounded, so a bug shows as a failure with the processes'
stderr, never as a hung run.

Endpoint counting carries the end of the stream: the coordinator holds one
send and one receive endpoint while producers open their send endpoints and
consumers their receive endpoints, then lets go; the last producer to close
its send endpoint ends every consumer's ``async for``.
"""

from __future__ import annotations

import json
import signal
import subprocess
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from pathlib import Path
from typing import Any

import procs
import pytest
import trio

import trioq

READY_TIMEOUT = 30.0  # process start-up, import and first round trips, on a loaded CI box
RUN_TIMEOUT = 40.0  # a whole pipeline
STUCK_TIMEOUT = 10.0  # a small pipeline that should take well under a second
EXIT_TIMEOUT = 5.0  # a scheduler told to stop; a killed process to be reaped
CLI_TIMEOUT = 30.0  # one ``python -m trioq`` command
TEST_TIMEOUT = 120.0  # any one test, whatever it waits for


async def _fail_when_too_slow() -> None:
    await trio.sleep(TEST_TIMEOUT)
    raise AssertionError(f"the test was still running after {TEST_TIMEOUT}s")


@pytest.fixture
async def deadline() -> AsyncIterator[None]:
    """Cancel the test (its processes are then cleaned up) if it runs past TEST_TIMEOUT.

    The net under the explicit bounds on every wait for another process.
    """
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_fail_when_too_slow)
        yield
        nursery.cancel_scope.cancel()


@pytest.fixture
async def scheduler(tmp_path: Path, deadline: None) -> AsyncIterator[procs.SchedulerProc]:
    """A scheduler process on 127.0.0.1:0 with a fresh token, stopped after the test."""
    async with procs.scheduler_process(tmp_path / "cluster") as running:
        yield running
    # Shown by pytest only when the test failed.
    print(running.proc.describe())


def coordinator(scheduler: procs.SchedulerProc) -> AbstractAsyncContextManager[trioq.Client]:
    """The test process's own client connection."""
    return trioq.connect(scheduler.address, token=scheduler.token, name="coordinator")


async def queue_status(client: trioq.Client, name: str) -> dict[str, Any] | None:
    with trio.move_on_after(EXIT_TIMEOUT):
        for row in (await client.status())["queues"]:
            if row["name"] == name:
                return dict(row)
    return None


async def wait_until_client_gone(client: trioq.Client, name: str) -> None:
    """Poll the scheduler until no client called ``name`` is connected."""

    async def gone() -> bool:
        return all(c["name"] != name for c in (await client.status())["clients"])

    with trio.fail_after(EXIT_TIMEOUT):
        await procs.poll_until(gone)


async def wait_until_queue(client: trioq.Client, name: str, **expected: Any) -> None:
    """Poll the scheduler until queue ``name`` shows every ``expected`` field.

    Callers bound it: how long depends on what the other processes are doing.
    """

    async def shows() -> bool:
        row = await queue_status(client, name)
        return row is not None and all(row[key] == value for key, value in expected.items())

    await procs.poll_until(shows)


async def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``python -m trioq ARGS`` to completion (killed after CLI_TIMEOUT)."""
    with trio.fail_after(CLI_TIMEOUT):
        return await procs.run_python(["-m", "trioq", *args], env=env)


# -- producers and consumers ---------------------------------------------------------------


async def run_pipeline(
    scheduler: procs.SchedulerProc,
    *,
    queue: str,
    producers: int,
    consumers: int,
    count: int,
    maxsize: int,
    stuck_after: float,
) -> list[list[tuple[int, int]]]:
    """Run producer and consumer processes through ``queue``; each consumer's items, in order.

    The consumers have opened the queue before the producers start.
    Fails (with the queue's status and the processes' stderr) unless every
    process exits 0 within ``stuck_after`` seconds and the queue ends empty;
    meanwhile the scheduler is polled: a bounded queue never holds more than
    ``maxsize`` items, queued and leased together.
    """
    async with coordinator(scheduler) as client, AsyncExitStack() as stack:
        handle = client.queue(queue, maxsize)
        hold_send, hold_receive = handle.open_channels()
        await handle.qsize()
        consumer_procs = [
            await stack.enter_async_context(
                procs.client_process(
                    scheduler,
                    "consumer",
                    queue,
                    f"consumer-{c}",
                    maxsize,
                    16,
                    label=f"consumer-{c}",
                )
            )
            for c in range(consumers)
        ]
        with trio.fail_after(READY_TIMEOUT):
            for proc in consumer_procs:
                await proc.expect("ready")
        producer_procs = [
            await stack.enter_async_context(
                procs.client_process(
                    scheduler, "producer", queue, p, count, maxsize, label=f"producer-{p}"
                )
            )
            for p in range(producers)
        ]
        everyone = [*consumer_procs, *producer_procs]
        with trio.fail_after(READY_TIMEOUT):
            for proc in producer_procs:
                await proc.expect("ready")
        # Every endpoint that matters is counted: let go of the coordinator's.
        await hold_send.aclose()
        await hold_receive.aclose()

        outputs: dict[str, tuple[int, list[str]]] = {}
        peak = 0  # most items seen queued or leased at once

        async def finish(proc: procs.Proc) -> None:
            outputs[proc.label] = await proc.finish()

        async def watch_size() -> None:
            nonlocal peak
            while True:
                row = await queue_status(client, queue)
                if row is not None:
                    peak = max(peak, row["size"] + row["leased"])
                await trio.sleep(procs.POLL_INTERVAL)

        with trio.move_on_after(stuck_after) as waiting:
            async with trio.open_nursery() as watching:
                watching.start_soon(watch_size)
                async with trio.open_nursery() as nursery:
                    for proc in everyone:
                        nursery.start_soon(finish, proc)
                watching.cancel_scope.cancel()
        if waiting.cancelled_caught:
            status = await queue_status(client, queue)
            unfinished = [p.label for p in everyone if p.label not in outputs]
            raise AssertionError(
                f"{unfinished} still running after {stuck_after}s; queue {queue!r}: {status}"
            )
        print(f"queue {queue!r}: at most {peak} items queued or leased at once")
        if maxsize:
            assert peak <= maxsize, f"queue {queue!r} held {peak} items, maxsize {maxsize}"

        for proc in everyone:
            code, _ = outputs[proc.label]
            assert code == 0, proc.describe()
        for proc in producer_procs:
            assert outputs[proc.label][1][-1:] == ["done"], proc.describe()
        received = []
        for proc in consumer_procs:
            lines = outputs[proc.label][1]
            assert lines[-1:] == ["end"], proc.describe()
            [payload] = [line.removeprefix("items ") for line in lines if line.startswith("items ")]
            received.append([(p, s) for p, s in json.loads(payload)])
        assert await handle.qsize() == 0
        return received


def check_exactly_once_and_fifo_per_producer(
    received: list[list[tuple[int, int]]], producers: int, count: int
) -> None:
    counts = Counter(item for items in received for item in items)
    expected = {(p, s) for p in range(producers) for s in range(count)}
    missing = sorted(expected - counts.keys())
    duplicated = sorted(item for item, n in counts.items() if n > 1)
    unexpected = sorted(counts.keys() - expected)
    assert not (missing or duplicated or unexpected), (
        f"{len(missing)} lost (first {missing[:5]}), {len(duplicated)} duplicated "
        f"(first {duplicated[:5]}), {len(unexpected)} unexpected (first {unexpected[:5]})"
    )
    for c, items in enumerate(received):
        for p in range(producers):
            seqs = [s for q, s in items if q == p]
            assert seqs == sorted(seqs), f"consumer {c} got producer {p}'s items out of order"


@pytest.mark.parametrize("maxsize", [0, 50], ids=["unbounded", "bounded-50"])
async def test_three_producer_and_two_consumer_processes_get_every_item_once_in_producer_order(
    scheduler: procs.SchedulerProc, maxsize: int
) -> None:
    producers, consumers, count = 3, 2, 2_000
    received = await run_pipeline(
        scheduler,
        queue=f"jobs-{maxsize}",
        producers=producers,
        consumers=consumers,
        count=count,
        maxsize=maxsize,
        stuck_after=RUN_TIMEOUT,
    )
    check_exactly_once_and_fifo_per_producer(received, producers, count)


async def test_bounded_put_is_not_blocked_by_put_credit_idle_in_consumer_processes(
    scheduler: procs.SchedulerProc,
) -> None:
    """maxsize=2: clients that only consume must not hold the room a producer needs."""
    received = await run_pipeline(
        scheduler,
        queue="tiny",
        producers=1,
        consumers=2,
        count=200,
        maxsize=2,
        stuck_after=STUCK_TIMEOUT,
    )
    check_exactly_once_and_fifo_per_producer(received, 1, 200)


# -- a consumer that dies ------------------------------------------------------------------


def item_of(line: str) -> int:
    """The item in a ``--stream`` consumer's ``item JSON [padding]`` line."""
    return int(json.loads(line.split()[1]))


async def read_items(proc: procs.Proc, n: int) -> list[int]:
    """The next ``n`` items a ``--stream`` consumer prints."""
    items = []
    while len(items) < n:
        items.append(item_of("item " + await proc.expect("item ")))
    return items


async def kill_and_collect(proc: procs.Proc, printed: list[int]) -> None:
    """SIGKILL ``proc``; add every item it printed before dying to ``printed``."""
    proc.send_signal(signal.SIGKILL)
    with trio.fail_after(EXIT_TIMEOUT):
        code, lines = await proc.finish()
    assert code == -signal.SIGKILL, proc.describe()
    printed += [item_of(line) for line in lines if line.startswith("item ")]


def check_survivor_accounting(
    total: int, printed: list[int], survivor: list[int], record_property: Any
) -> set[int]:
    """Items the killed consumer printed count as consumed, but may come again (once).

    An item handed to the killed consumer's code whose acknowledgement had not
    reached the scheduler is legitimately redelivered; every other item must
    reach the survivor exactly once.  Returns the redelivered items.
    """
    assert len(printed) == len(set(printed)), "the killed consumer got an item twice"
    counts = Counter(survivor)
    printed_set = set(printed)
    lost = [i for i in range(total) if i not in printed_set and counts[i] == 0]
    duplicated = sorted(i for i, n in counts.items() if n > 1)
    unexpected = sorted(set(counts) - set(range(total)))
    redelivered = printed_set & counts.keys()
    record_property("redelivered_after_kill", len(redelivered))
    print(f"killed consumer printed {len(printed)}; {len(redelivered)} of them redelivered")
    assert not (lost or duplicated or unexpected), (
        f"{len(lost)} lost (first {lost[:5]}), {len(duplicated)} duplicated "
        f"(first {duplicated[:5]}), {len(unexpected)} unexpected"
    )
    return redelivered


@pytest.mark.parametrize("when", ["paused-holding-prefetched-items", "blocked-mid-batch"])
async def test_items_leased_to_a_killed_consumer_process_reach_the_survivor_exactly_once(
    scheduler: procs.SchedulerProc, when: str, record_property: Any
) -> None:
    """A consumer with prefetch 64 is SIGKILLed, then the stream goes on and ends.

    ``paused``: it stopped taking items after 10 and holds the rest of its
    batch.  ``blocked``: it prints every item with padding and nobody reads
    its output until the pipe is (nearly) full, so it dies blocked in a write
    in the middle of a batch, holding items it was handed but whose
    acknowledgement may not be sent yet.
    """
    first, second = 5_000, 1_000
    total = first + second
    if when.startswith("paused"):
        options, survivor_prefetch = ["--pause-after", "10"], 16
    else:
        # A survivor taking one item per round trip leaves the doomed consumer
        # enough items to fill its pipe.
        options, survivor_prefetch = ["--pad", "200"], 1
    async with coordinator(scheduler) as client, AsyncExitStack() as stack:
        handle = client.queue("work")
        send, receive = handle.open_channels()
        survivor = await stack.enter_async_context(
            procs.client_process(
                scheduler, "consumer", "work", "survivor", 0, survivor_prefetch, label="survivor"
            )
        )
        doomed = await stack.enter_async_context(
            procs.client_process(
                scheduler,
                "consumer",
                "work",
                "doomed",
                0,
                64,
                "--stream",
                *options,
                label="doomed",
            )
        )
        with trio.fail_after(READY_TIMEOUT):
            await survivor.expect("ready")
            await doomed.expect("ready")
        await handle.put_batch(range(first))
        with trio.fail_after(RUN_TIMEOUT):
            if when.startswith("paused"):
                printed = await read_items(doomed, 10)
                await doomed.expect("paused")
                # The survivor waits on the empty queue: the doomed consumer's
                # prefetched, never handed out items are recalled from it.
                await wait_until_queue(client, "work", size=0)

                async def recalled() -> bool:
                    rows = (await client.status())["clients"]
                    return [c["leases"] for c in rows if c["name"] == "doomed"] == [0]

                await procs.poll_until(recalled)
            else:
                printed = []
                await procs.poll_until(doomed.stdout_nearly_full)
            await kill_and_collect(doomed, printed)
            assert printed, doomed.describe()
            # Its leases go back before the stream ends (see the next test for the other order).
            await wait_until_client_gone(client, "doomed")
            await handle.put_batch(range(first, total))
            await send.aclose()
            await receive.aclose()
            code, lines = await survivor.finish()
        assert code == 0 and lines[-1:] == ["end"], survivor.describe()
        [payload] = [line.removeprefix("items ") for line in lines if line.startswith("items ")]
        check_survivor_accounting(total, printed, json.loads(payload), record_property)
        assert await handle.qsize() == 0


async def test_end_of_channel_waits_for_items_leased_to_a_consumer_process_that_then_dies(
    scheduler: procs.SchedulerProc, record_property: Any
) -> None:
    """The last sender closes while a consumer holds prefetched items, then that consumer dies.

    Its items go back to the queue: the surviving receiver must get them
    before ``EndOfChannel``, or they are stranded in a queue nobody reads.
    """
    total = 500
    async with coordinator(scheduler) as client, AsyncExitStack() as stack:
        handle = client.queue("tail")
        send, receive = handle.open_channels()
        await handle.put_batch(range(total))
        doomed = await stack.enter_async_context(
            procs.client_process(
                scheduler,
                "consumer",
                "tail",
                "doomed",
                0,
                64,
                "--stream",
                "--pause-after",
                "10",
                label="doomed",
            )
        )
        with trio.fail_after(RUN_TIMEOUT):
            printed = await read_items(doomed, 10)
            await doomed.expect("paused")
        survivor = await stack.enter_async_context(
            procs.client_process(scheduler, "consumer", "tail", "survivor", 0, 16, label="survivor")
        )
        with trio.fail_after(RUN_TIMEOUT):
            await survivor.expect("ready")
            await wait_until_queue(client, "tail", size=0)  # all that is left is leased to doomed
            await send.aclose()  # the last send endpoint: drain, then EndOfChannel
            await receive.aclose()
            await kill_and_collect(doomed, printed)
            code, lines = await survivor.finish()
        assert code == 0 and lines[-1:] == ["end"], survivor.describe()
        [payload] = [line.removeprefix("items ") for line in lines if line.startswith("items ")]
        survivor_items = json.loads(payload)
        await wait_until_client_gone(client, "doomed")
        stranded = await queue_status(client, "tail")
        assert len(printed) + len(survivor_items) >= total, (
            f"the survivor got EndOfChannel after {len(survivor_items)} items while "
            f"{total - len(printed) - len(survivor_items)} were still leased to the consumer "
            f"that then died; they are stranded in the closed queue: {stranded}"
        )
        check_survivor_accounting(total, printed, survivor_items, record_property)


async def test_scheduler_process_keeps_serving_after_a_client_connection_is_reset(
    scheduler: procs.SchedulerProc,
) -> None:
    """A killed client with unread data on its socket resets the connection (RST).

    The scheduler must treat that like any other disconnect: forget that
    client, and keep serving everyone else.
    """
    async with coordinator(scheduler) as client:
        handle = client.queue("survives")
        await handle.put("still here")
        async with procs.client_process(scheduler, "reset", label="reset") as reset:
            with trio.fail_after(READY_TIMEOUT):
                await reset.expect("connected")
                code, _ = await reset.finish()
            assert code == -signal.SIGKILL, reset.describe()
        try:
            await wait_until_client_gone(client, "reset")
            assert await handle.get() == "still here"
        except trio.BrokenResourceError:
            with trio.move_on_after(EXIT_TIMEOUT):
                await scheduler.proc.wait()
            raise AssertionError(
                f"the scheduler process went away (exit {scheduler.proc.returncode}) when "
                f"one client's connection was reset; its stderr ends:\n"
                f"{scheduler.proc.stderr()[-1500:]}"
            ) from None
    assert scheduler.proc.returncode is None, scheduler.proc.describe()


async def test_a_killed_scheduler_process_fails_client_calls_without_crashing_the_connect_block(
    tmp_path: Path,
    deadline: None,
) -> None:
    """The scheduler dies with unread data on its sockets, so the client sees a reset.

    The waiting call raises ``trio.BrokenResourceError``; a caller that
    handles it leaves ``async with trioq.connect(...)`` normally.
    """
    async with procs.scheduler_process(tmp_path / "cluster") as running:
        port = int(running.address.rsplit(":", 1)[1])
        errors: list[BaseException] = []

        async def ask(client: trioq.Client) -> None:
            try:
                await client.status()
            except trio.BrokenResourceError as exc:
                errors.append(exc)

        try:
            async with coordinator(running) as client:
                await client.queue("q").qsize()
                running.proc.send_signal(signal.SIGSTOP)
                with trio.fail_after(EXIT_TIMEOUT):
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(ask, client)
                        # Wait until the request sits unread on the stopped scheduler's socket.
                        await procs.poll_until(lambda: procs.unread_bytes(port) > 0)
                        running.proc.send_signal(signal.SIGKILL)
        except BaseExceptionGroup as group:
            raise AssertionError(
                "leaving the connect() block raised the connection's own failure "
                f"although the caller handled BrokenResourceError: {group!r}"
            ) from group
        with trio.fail_after(EXIT_TIMEOUT):
            assert await running.proc.wait() == -signal.SIGKILL
        assert len(errors) == 1, errors


# -- the command line ----------------------------------------------------------------------


def queue_rows(status_output: str) -> dict[str, dict[str, str]]:
    """The ``queues:`` table of ``python -m trioq status``, by queue name."""
    lines = status_output.splitlines()
    start = lines.index("queues:") + 1
    end = lines.index("variables:")
    table = [line.split() for line in lines[start:end]]
    if table == [["(none)"]]:
        return {}
    header, *rows = table
    return {row[0]: dict(zip(header, row, strict=True)) for row in rows}


@pytest.mark.parametrize("token_from", ["env", "file"])
async def test_status_command_shows_the_queue_with_its_size(
    scheduler: procs.SchedulerProc, token_from: str
) -> None:
    async with coordinator(scheduler) as client:
        handle = client.queue("cli-jobs", maxsize=7)
        await handle.put_batch(["a", "b", "c"])
        assert await handle.qsize() == 3
        if token_from == "env":
            args, env = [], procs.client_env(scheduler.token)
        else:
            args = ["--token-file", str(scheduler.directory / "scheduler.token")]
            env = procs.base_env()
        result = await run_cli("status", scheduler.address, *args, env=env)
    assert result.returncode == 0, result.stderr
    rows = queue_rows(result.stdout)
    assert "cli-jobs" in rows, result.stdout
    assert rows["cli-jobs"]["size"] == "3", result.stdout
    assert rows["cli-jobs"]["maxsize"] == "7", result.stdout
    assert "coordinator" in result.stdout.split("clients:")[1], result.stdout


async def test_status_command_with_a_wrong_token_exits_non_zero_with_a_clear_message(
    scheduler: procs.SchedulerProc,
) -> None:
    result = await run_cli("status", scheduler.address, env=procs.client_env("not-the-token"))
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr
    message = result.stderr.strip()
    assert message.startswith("trioq status:") and "token" in message, message
    assert len(message.splitlines()) == 1, message
    # The refused stranger did not disturb the scheduler.
    again = await run_cli("status", scheduler.address, env=procs.client_env(scheduler.token))
    assert again.returncode == 0, again.stderr


async def test_status_command_without_any_token_names_where_to_put_one(
    scheduler: procs.SchedulerProc,
) -> None:
    result = await run_cli("status", scheduler.address, env=procs.base_env())
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr
    assert "TRIOQ_TOKEN" in result.stderr, result.stderr


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
async def test_scheduler_process_exits_zero_promptly_on_signal_and_leaves_no_processes(
    tmp_path: Path, deadline: None, signum: signal.Signals
) -> None:
    async with procs.scheduler_process(tmp_path / "cluster") as running:
        proc = running.proc
        broken: list[BaseException] = []
        async with coordinator(running) as client:
            handle = client.queue("pending")
            await handle.put("left behind")

            async def wait_for_item() -> None:
                try:
                    await client.queue("empty").get()
                except (trio.BrokenResourceError, trio.EndOfChannel) as exc:
                    broken.append(exc)

            with trio.fail_after(READY_TIMEOUT):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(wait_for_item)
                    await wait_until_queue(client, "empty", getters=1)
                    proc.send_signal(signum)
                    with trio.move_on_after(EXIT_TIMEOUT):
                        await proc.wait()
                    assert proc.returncode is not None, f"still running {EXIT_TIMEOUT}s later"
        assert proc.returncode == 0, proc.describe()
        with trio.fail_after(EXIT_TIMEOUT):  # end of file: nothing else holds its stdout
            assert await proc.read_rest() == ["trioq scheduler stopped"], proc.describe()
        assert procs.process_group_members(proc.pid) == []
        assert broken, "a get parked in the stopped scheduler did not fail"
        assert isinstance(broken[0], trio.BrokenResourceError), repr(broken[0])


async def test_scheduler_refuses_a_non_loopback_host_without_a_token(deadline: None) -> None:
    result = await run_cli("scheduler", "--host", "0.0.0.0", "--port", "0", env=procs.base_env())
    assert result.returncode != 0
    assert "listening" not in result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    message = result.stderr.strip()
    assert "refusing" in message and "0.0.0.0" in message and "token" in message, message
