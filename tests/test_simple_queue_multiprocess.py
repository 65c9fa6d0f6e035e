"""A push-mode ``SimpleQueue`` consumer process killed while holding pushed items.

A scheduler process (``tests/procs.py``, 127.0.0.1 port 0, a token file) and
two client programs, this file run as a script (``python
tests/test_simple_queue_multiprocess.py ROLE ...``), each started in its own
session and cleaned up (SIGTERM, then SIGKILL) by the context manager that
owns it:

* ``holder`` subscribes in push mode with a wide window and then never
  consumes: its first ``get`` (which subscribes) is cancelled once the
  subscription is confirmed and before any item exists, so it takes
  nothing, and every item pushed to it afterwards stays in its buffer.
* ``survivor`` subscribes in push mode with a narrow window and takes items
  until the sentinel ``"stop"``, then prints them all.

The holder is SIGKILLed while the scheduler shows it holding a full window.
Because it never consumed anything, counting is exact: the survivor must
receive every item exactly once.  Every wait is bounded; nothing sleeps to
synchronise (the test polls the scheduler's status, and reads the lines the
programs print).
"""

from __future__ import annotations

import argparse
import json
import signal
from collections import Counter
from collections.abc import Sequence
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import procs
import trio
import trio.testing

import trioq

READY_TIMEOUT = 20.0  # a program starts, imports trioq and subscribes, on a loaded CI box
STEP_TIMEOUT = 10.0  # one step between the programs and the scheduler
TEST_TIMEOUT = 60.0  # any one test, whatever it waits for
QUEUE = "pushed"
COUNT = 40  # items put
HOLDER_WINDOW = 16  # pushed to the holder and never consumed
SURVIVOR_WINDOW = 4
SENTINEL = "stop"
SCRIPT = Path(__file__).resolve()  # run as the client programs


# A scheduler process on 127.0.0.1:0 per test (failing it past TEST_TIMEOUT), and
# this file run as the client program ``role``.
scheduler = procs.limited_scheduler_fixture(TEST_TIMEOUT)
program = procs.programs_of(SCRIPT)


async def queue_row(client: trioq.Client, name: str) -> dict[str, Any]:
    for row in (await client.status())["queues"]:
        if row["name"] == name:
            return dict(row)
    return {}


async def leases_of(client: trioq.Client, name: str) -> int | None:
    """Leases the scheduler counts for the client called ``name``; None once it is gone."""
    for row in (await client.status())["clients"]:
        if row["name"] == name:
            count: int = row["leases"]
            return count
    return None


async def test_items_pushed_to_a_killed_consumer_process_reach_the_survivor_exactly_once(
    scheduler: procs.SchedulerProc,
) -> None:
    async with (
        trioq.connect(scheduler.address, token=scheduler.token, name="test") as client,
        AsyncExitStack() as stack,
    ):
        holder = await stack.enter_async_context(program(scheduler, "holder", QUEUE, HOLDER_WINDOW))
        with trio.fail_after(READY_TIMEOUT):
            await holder.expect("subscribed")
        survivor = await stack.enter_async_context(
            program(scheduler, "survivor", QUEUE, SURVIVOR_WINDOW)
        )
        with trio.fail_after(READY_TIMEOUT):

            async def both_subscribed() -> bool:
                return (await queue_row(client, QUEUE)).get("subscribers") == 2

            await procs.poll_until(both_subscribed)

        await client.queue(QUEUE).put_batch(range(COUNT))
        with trio.fail_after(STEP_TIMEOUT):

            async def holder_full() -> bool:
                return await leases_of(client, "holder") == HOLDER_WINDOW

            await procs.poll_until(holder_full)

        holder.send_signal(signal.SIGKILL)
        with trio.fail_after(STEP_TIMEOUT):
            code, lines = await holder.finish()
        assert code == -signal.SIGKILL, holder.describe()
        assert lines == [], f"the holder consumed something: {lines}"

        with trio.fail_after(STEP_TIMEOUT):

            async def holder_gone() -> bool:
                return await leases_of(client, "holder") is None

            await procs.poll_until(holder_gone)
        # Its pushed items are back at the head of the queue (and on their way to
        # the survivor): the sentinel goes behind them.
        await client.queue(QUEUE).put(SENTINEL)
        with trio.fail_after(STEP_TIMEOUT):
            code, lines = await survivor.finish()
        assert code == 0 and lines[-1:] == ["end"], survivor.describe()

        [payload] = [line.removeprefix("items ") for line in lines if line.startswith("items ")]
        received = json.loads(payload)
        counts = Counter(received)
        duplicated = sorted(item for item, n in counts.items() if n > 1)
        lost = sorted(set(range(COUNT)) - set(counts))
        assert not duplicated and not lost, f"lost {lost}, duplicated {duplicated}"
        assert counts == Counter(range(COUNT))
        assert await client.queue(QUEUE).qsize() == 0
        assert (await queue_row(client, QUEUE))["subscribers"] == 0


# -- the client programs (run in the child processes) ------------------------------------------


def _say(*parts: object) -> None:
    print(*parts, flush=True)


async def _holder(args: argparse.Namespace) -> None:
    """Subscribe in push mode, consume nothing, print ``subscribed``, wait to be killed."""
    async with trioq.connect(args.address, name="holder") as client:
        q = client.simple_queue(args.queue, "push", window=args.window)
        await q.qsize()  # the queue is open
        async with trio.open_nursery() as nursery:
            nursery.start_soon(q.get)  # subscribes, then waits for a first item
            await trio.testing.wait_all_tasks_blocked()
            await q.qsize()  # a round trip after the subscribe: it is confirmed ...
            await trio.testing.wait_all_tasks_blocked()  # ... and the get waits for an item
            nursery.cancel_scope.cancel()  # nothing was put yet: it takes nothing
        _say("subscribed")
        await trio.sleep_forever()


async def _survivor(args: argparse.Namespace) -> None:
    """Take items in push mode until the sentinel; print ``items JSON-LIST`` and ``end``."""
    async with trioq.connect(args.address, name="survivor") as client:
        items: list[Any] = []
        async with client.simple_queue(args.queue, "push", window=args.window) as q:
            while (item := await q.get()) != SENTINEL:
                items.append(item)
        _say("items", json.dumps(items))
    _say("end")


def _main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="tests/test_simple_queue_multiprocess.py")
    parser.add_argument("role", choices=["holder", "survivor"])
    parser.add_argument("address")
    parser.add_argument("queue")
    parser.add_argument("window", type=int)
    args = parser.parse_args(argv)
    trio.run({"holder": _holder, "survivor": _survivor}[args.role], args)


if __name__ == "__main__":
    _main()
