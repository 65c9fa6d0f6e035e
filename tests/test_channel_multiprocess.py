"""Replayable channels across real processes: one order for every subscriber.

A scheduler process (and, for futures, a ``python -m trioq worker``
process), started, owned and cleaned up through ``tests/procs.py`` (each in
its own session, SIGTERM then SIGKILL on the way out), on 127.0.0.1 port 0.
The client programs are this file run as a script (``python
tests/test_channel_multiprocess.py ROLE ...``), the way ``procs.py`` runs
its own.

What is checked:

* Three subscriber processes follow a channel while two appender processes
  append to it at once (``append`` and ``extend``, pipelined, then
  ``flush``).  After the test stops the channel every subscriber's ``async
  for`` ends, and all three printed the identical sequence: each
  appender's elements in its own order, nothing lost or repeated.  A
  fourth subscriber started after the stop replays the same sequence.
* Futures appended by a process that then exits stay alive on the
  scheduler; another process reads them from the channel and awaits them.
  Half the tasks have ended before the appender exits, the other half wait
  for the test to set the variable ``go`` (no sleeps).  Task functions live
  in the appender's ``__main__``, so cloudpickle sends them by value.

Every wait is bounded; nothing synchronises by sleeping.  What the
scheduler does not tell the test (how many reads wait) is polled, bounded.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import procs
import trio

import trioq

READY_TIMEOUT = 30.0  # worker processes start, import and connect, on a loaded CI box
STEP_TIMEOUT = 15.0  # one client program runs to its end
TEST_TIMEOUT = 60.0  # any one test, whatever it waits for
COUNT = 150  # elements each appender appends
FUTURES = 12  # futures appended; half of their tasks end before the appender exits
SCRIPT = Path(__file__).resolve()  # run as the client programs


# A scheduler process on 127.0.0.1:0 per test (failing it past TEST_TIMEOUT), and
# this file run as the client program ``role``.
scheduler = procs.limited_scheduler_fixture(TEST_TIMEOUT)
program = procs.programs_of(SCRIPT)


def sequence_of(lines: list[str]) -> list[Any]:
    """The elements a subscriber printed (its ``items`` line), after its ``end``."""
    assert lines[-1] == "end", lines
    (items,) = [line.removeprefix("items ") for line in lines if line.startswith("items ")]
    return [tuple(each) for each in json.loads(items)]


async def readers(client: trioq.Client, name: str) -> int:
    """How many reads of channel ``name`` wait at the scheduler now."""
    found = [c for c in (await client.status())["channels"] if c["name"] == name]
    return found[0]["readers"] if found else 0


async def test_three_subscriber_processes_see_the_same_sequence_from_two_appender_processes(
    scheduler: procs.SchedulerProc,
) -> None:
    async with AsyncExitStack() as stack:
        client = await stack.enter_async_context(
            trioq.connect(scheduler.address, token=scheduler.token, name="test")
        )
        chan = client.channel("events")
        await chan.append(("test", "first"))
        await chan.flush()
        with trio.fail_after(STEP_TIMEOUT):
            subscribers = [
                await stack.enter_async_context(
                    program(scheduler, "subscriber", "events", label=f"subscriber-{i}")
                )
                for i in range(3)
            ]

            async def following() -> bool:
                return await readers(client, "events") == 3  # caught up, waiting for more

            await procs.poll_until(following)

        with trio.fail_after(STEP_TIMEOUT):
            async with (
                program(scheduler, "appender", "events", 0, COUNT, label="appender-0") as a0,
                program(scheduler, "appender", "events", 1, COUNT, label="appender-1") as a1,
            ):
                assert await a0.expect("ready") == "" and await a1.expect("ready") == ""
                await client.variable("go").set(True)  # both append at once from here
                assert await procs.finished(a0) == ["done"]
                assert await procs.finished(a1) == ["done"]
            await chan.stop()  # every subscriber's iteration ends
            sequences = [sequence_of(await procs.finished(proc)) for proc in subscribers]

        expected_length = 1 + 2 * COUNT
        assert len(sequences[0]) == expected_length
        assert sequences[0] == sequences[1] == sequences[2]
        assert sequences[0][0] == ("test", "first")
        for appender in (0, 1):
            mine = [seq for who, seq in sequences[0][1:] if who == appender]
            assert mine == list(range(COUNT)), f"appender {appender}'s elements"
        assert {who for who, _ in sequences[0][1:]} == {0, 1}
        assert [tuple(each) for each in await chan.snapshot()] == sequences[0]

        with trio.fail_after(STEP_TIMEOUT):  # a late subscriber replays it all, then ends
            async with program(scheduler, "subscriber", "events", label="late") as late:
                assert sequence_of(await procs.finished(late)) == sequences[0]


async def test_futures_appended_by_a_process_that_exited_are_awaited_by_another(
    scheduler: procs.SchedulerProc,
) -> None:
    async with AsyncExitStack() as stack:
        worker = await stack.enter_async_context(procs.worker_process(scheduler, "worker"))
        client = await stack.enter_async_context(
            trioq.connect(scheduler.address, token=scheduler.token, name="test")
        )
        try:
            with trio.fail_after(READY_TIMEOUT):

                async def up() -> bool:
                    return len((await client.status())["workers"]) == 1

                await procs.poll_until(up)

            with trio.fail_after(STEP_TIMEOUT):
                async with program(scheduler, "future-appender", "futures", FUTURES) as appender:
                    assert await procs.finished(appender) == [f"appended {FUTURES}"]
                status = await client.status()
                assert sum(status["tasks"].values()) == FUTURES, status["tasks"]
                assert status["tasks"].get("finished") == FUTURES // 2, status["tasks"]

            with trio.fail_after(STEP_TIMEOUT):
                async with program(scheduler, "future-reader", "futures", FUTURES) as reader:
                    assert await reader.expect("read ") == str(FUTURES)
                    await client.variable("go").set(True)  # the waiting tasks may end now
                    lines = await procs.finished(reader)
            assert json.loads(lines[-1].removeprefix("results ")) == [i * i for i in range(FUTURES)]
            status = await client.status()
            assert status["tasks"] == {"finished": FUTURES}  # the channel still keeps them
            assert worker.returncode is None
        except BaseException:
            print(worker.describe())
            raise


# -- the client programs (run in child processes) ---------------------------------------------


def _say(*parts: object) -> None:
    print(*parts, flush=True)


async def _subscriber(args: argparse.Namespace) -> None:
    """Read the channel from its oldest element until it is stopped; print them all."""
    async with trioq.connect(args.address, name="subscriber") as client:
        items = [item async for item in client.channel(args.channel)]
        _say("items", json.dumps(items))
        _say("end")


async def _appender(args: argparse.Namespace) -> None:
    """Once the variable ``go`` is set, append ``[id, seq]`` for each seq; flush."""
    async with trioq.connect(args.address, name=f"appender-{args.id}") as client:
        chan = client.channel(args.channel)
        await chan.flush()
        _say("ready")
        await client.variable("go").get()
        seq = 0
        while seq < args.count:
            if seq % 7 == 3:  # now and then two at once
                batch = [[args.id, s] for s in range(seq, min(seq + 2, args.count))]
                await chan.extend(batch)
                seq += len(batch)
            else:
                await chan.append([args.id, seq])
                seq += 1
        await chan.flush()
        _say("done")


def square(x: int) -> int:
    return x * x


async def square_when_told(x: int) -> int:
    """Waits on a worker for the variable ``go``, set by the test."""
    import trioq

    await trioq.worker_client().variable("go").get()
    return x * x


async def _future_appender(args: argparse.Namespace) -> None:
    """Submit ``count`` tasks, half of them ended first; append their futures; exit."""
    async with trioq.connect(args.address, name="future-appender") as client:
        half = args.count // 2
        ended = await client.map(square, range(half))
        await client.gather(ended)
        waiting = [await client.submit(square_when_told, i) for i in range(half, args.count)]
        chan = client.channel(args.channel)
        for i, future in enumerate([*ended, *waiting]):
            await chan.append(future if i % 2 else {"i": i, "future": future})
        await chan.flush()
        _say("appended", args.count)


async def _future_reader(args: argparse.Namespace) -> None:
    """Read the futures from the channel, say so, then await them; print the results."""
    async with trioq.connect(args.address, name="future-reader") as client:
        elements = await client.channel(args.channel).snapshot()
        futures = [each if i % 2 else each["future"] for i, each in enumerate(elements)]
        assert all(isinstance(future, trioq.Future) for future in futures)
        _say("read", len(futures))
        _say("results", json.dumps(await client.gather(futures)))


def _main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="tests/test_channel_multiprocess.py")
    roles = parser.add_subparsers(dest="role", required=True)
    subscriber = roles.add_parser("subscriber")
    appender = roles.add_parser("appender")
    future_appender = roles.add_parser("future-appender")
    future_reader = roles.add_parser("future-reader")
    for role in (subscriber, appender, future_appender, future_reader):
        role.add_argument("address")
        role.add_argument("channel")
    appender.add_argument("id", type=int)
    appender.add_argument("count", type=int)
    future_appender.add_argument("count", type=int)
    future_reader.add_argument("count", type=int)
    args = parser.parse_args(argv)
    roles_run = {
        "subscriber": _subscriber,
        "appender": _appender,
        "future-appender": _future_appender,
        "future-reader": _future_reader,
    }
    trio.run(roles_run[args.role], args)


if __name__ == "__main__":
    _main()
