"""A TaskQueue over a thread, a child process and a cluster: priorities, series,
updates, streaming, timeouts, detaching workers, failures and shutdown.

Run it with ``python docs/examples/taskqueue.py``.  It checks its own
results and exits 0 only if they hold.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator

import trio
import trio.testing

import trioq

ran: list[str] = []  # what the calls on this process's workers did, in order
gates: dict[str, trio.Event] = {}  # async calls on a ThreadWorker run in this trio run


def gate(name: str) -> trio.Event:
    return gates.setdefault(name, trio.Event())


async def blocker(name: str) -> str:
    """Occupy a worker until the example says "go"."""
    gate(f"{name}:started").set()
    await gate(f"{name}:go").wait()
    return name


async def record(name: str) -> str:
    ran.append(name)  # async: a ThreadWorker runs it as a trio task in this run
    return name


def configure(greeting: str) -> None:
    """An update: runs once on every worker, in that worker's process."""
    os.environ["TASKQUEUE_EXAMPLE_GREETING"] = greeting


def greet(name: str) -> tuple[str, int]:
    return f"{os.environ['TASKQUEUE_EXAMPLE_GREETING']}, {name}", os.getpid()


def count_up(n: int) -> Iterator[int]:
    yield from range(n)  # a generator's items are streamed to the caller


runs: dict[str, int] = {}


async def stuck_the_first_time(name: str) -> str:
    """The first run never ends (until cancelled); a second run returns."""
    runs[name] = runs.get(name, 0) + 1
    if runs[name] == 1:
        gate(f"{name}:started").set()
        await trio.sleep_forever()
    return f"{name}: run {runs[name]}"


class Refused(Exception):
    pass


def refuse(why: str) -> None:
    raise Refused(why)


async def queued(tq: trioq.TaskQueue, nursery: trio.Nursery, fn, *args, **options) -> None:
    """Start ``tq.call`` in the background and return once it is queued."""
    expected = tq.pending() + 1
    nursery.start_soon(lambda: tq.call(fn, *args, **options))
    await trio.testing.wait_all_tasks_blocked()
    assert tq.pending() == expected  # calls queued or running


async def three_kinds_of_worker(address: str) -> None:
    thread = trioq.ThreadWorker()
    child = trioq.ProcessWorker(series=["child"])  # also runs calls without a series
    remote = trioq.RemoteWorker(address, slots=2)  # two tasks at once on the cluster
    async with trioq.TaskQueue(thread, child, remote) as tq:
        assert tq.workers() == [thread, child, remote] and tq.workers(2) is child

        # update: run now on every worker, and first on any worker attached later.
        await tq.update(configure, "hello")
        greeting, pid = await tq.call(greet, "child", series="child")  # only the child may
        assert greeting == "hello, child" and pid == child.pid != os.getpid()
        late_id = await tq.attach_worker(trioq.ThreadWorker(series=["late"]))
        assert (await tq.call(greet, "late", series="late"))[0] == "hello, late"
        await tq.detach_worker(late_id)  # gracefully: waits for its calls, then stops it

        # A generator is streamed: the call returns a trio ReceiveChannel at once.
        receiver = await tq.call(count_up, 100)
        async with receiver:
            assert [item async for item in receiver] == list(range(100))

        # A timeout withdraws the call; a running async call is cancelled on its worker.
        try:
            await tq.call(trio.sleep_forever, timeout=0.2)
        except trio.TooSlowError:
            pass
        else:
            raise AssertionError("no timeout")

        # Plain calls go wherever a slot is free, and their exceptions come back.
        assert sorted(await trio_gather(tq, 8)) == list(range(8))
        try:
            await tq.call(refuse, "no")
        except Refused as exc:
            assert str(exc) == "no"
        else:
            raise AssertionError("the call's exception was not raised")
    assert not tq.is_running()  # leaving the block shut it down (children stopped)


async def trio_gather(tq: trioq.TaskQueue, n: int) -> list[int]:
    results: list[int] = []

    async def one(i: int) -> None:
        results.append(await tq.call(abs, -i))

    async with trio.open_nursery() as nursery:
        for i in range(n):
            nursery.start_soon(one, i)
    return results


async def order_and_series() -> None:
    worker = trioq.ThreadWorker(series=["a", "b"])
    async with trioq.TaskQueue(worker) as tq, trio.open_nursery() as nursery:
        nursery.start_soon(tq.call, blocker, "busy")  # the only worker is busy ...
        await gate("busy:started").wait()
        # ... so everything below is queued, and then runs in the queue's order.
        await queued(tq, nursery, record, "nice 5", niceness=5)
        await queued(tq, nursery, record, "nice -10", niceness=-10)
        for i in range(4):
            await queued(tq, nursery, record, f"a{i}", series="a")
        for i in range(2):
            await queued(tq, nursery, record, f"b{i}", series="b")
        await queued(tq, nursery, record, "db", series="db")  # no worker qualified yet
        gate("busy:go").set()
        await trio.testing.wait_all_tasks_blocked()
        # Lower niceness first.  Among equals, series share the worker fairly:
        # "b", queued after all of "a", interleaves with it instead of waiting.
        expected = ["nice -10", "a0", "b0", "a1", "b1", "a2", "a3", "nice 5"]
        assert ran == expected, ran
        assert tq.pending() == 1  # "db" still waits for a worker qualified for it
        tq.qualify_worker(worker, "db")  # by the worker object, or by its id
        await trio.testing.wait_all_tasks_blocked()
        assert ran[-1] == "db" and tq.pending() == 0


async def detaching() -> None:
    async with trioq.TaskQueue(trioq.ThreadWorker()) as tq, trio.open_nursery() as nursery:
        fragile_id = await tq.attach_worker(trioq.ThreadWorker(series=["fragile"]))

        # crash=True, reassign=True: the running call goes back to the queue,
        # in its place, and runs again on the next qualified worker.
        results: list[str] = []

        async def call_and_keep(name: str) -> None:
            results.append(await tq.call(stuck_the_first_time, name, series="fragile"))

        nursery.start_soon(call_and_keep, "x")
        await gate("x:started").wait()
        assert await tq.detach_worker(fragile_id, crash=True, reassign=True) == []
        tq.qualify_worker(1, "fragile")  # worker 1 may run it now
        await trio.testing.wait_all_tasks_blocked()
        assert results == ["x: run 2"]

        # crash=True alone: the unfinished calls come back as TaskInfo, and
        # their callers get WorkerLostError.
        lost: list[BaseException] = []

        async def call_and_lose() -> None:
            try:
                await tq.call(blocker, "doomed", niceness=3)
            except trioq.WorkerLostError as exc:
                lost.append(exc)

        nursery.start_soon(call_and_lose)
        await gate("doomed:started").wait()
        (info,) = await tq.detach_worker(1, crash=True)
        assert info.fn is blocker and info.args == ("doomed",) and info.niceness == 3
        await trio.testing.wait_all_tasks_blocked()
        assert len(lost) == 1 and tq.workers() == []


async def failures_and_shutdown() -> None:
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("trioq.taskqueue")
    logger.addHandler(handler)
    logger.propagate = False  # keep this example's output quiet
    try:
        # return_failure=False: a failed call is logged (ERROR) and returns None.
        async with trioq.TaskQueue(trioq.ThreadWorker(), return_failure=False) as tq:
            assert await tq.call(refuse, "quietly") is None
            assert [r.levelno for r in records] == [logging.ERROR]

            # shutdown: new calls are refused at once; queued and running ones
            # get the grace period, then are cancelled; workers are stopped.
            await tq.shutdown(timeout=1)
            assert not tq.is_running()
            try:
                await tq.call(abs, 1)
            except trio.ClosedResourceError:
                pass
            else:
                raise AssertionError("a call after shutdown was accepted")
    finally:
        logger.removeHandler(handler)
        logger.propagate = True


async def main() -> None:
    with trio.fail_after(30):
        async with trioq.open_cluster(workers=1) as cluster:
            await three_kinds_of_worker(cluster.address)
        await order_and_series()
        await detaching()
        await failures_and_shutdown()
    print("TaskQueue: workers, order, series, updates, streams, timeouts, detach, shutdown ok")


if __name__ == "__main__":
    trio.run(main)
