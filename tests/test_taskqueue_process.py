"""``trioq.TaskQueue`` over ``ProcessWorker``: calls run in child Python processes.

A child shares nothing with the test: the tests meet the calls only through
their return values, files in ``tmp_path`` and streamed items.  Task
functions are made by factories (nested functions), so cloudpickle sends
them by value and the child never needs to import this module.

Each ``ProcessWorker`` costs a child start-up (about half a second), so a
test starts only the children it needs.  Every wait is bounded by
``trio.fail_after``; a condition in another process (a file appearing, a
process gone) is polled with ``procs.poll_until``; nothing synchronises by
sleeping.
"""

from __future__ import annotations

import os
import signal
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import outcome
import procs
import pytest
import trio
import trio.testing

import trioq
from trioq._impl import core

WAIT = 10.0  # seconds any one step may take, child start-up included
STREAM_AHEAD = 2 * 16 + 2  # as in test_taskqueue: a buffer of 16 each side, an item in hand
STREAM_ITEMS = 200
QUIET = 0.05  # seconds all tasks stay blocked before the child counts as stalled
FRAME_LIMIT = core.DEFAULT_MAX_FRAME_SIZE  # bytes a frame between parent and child may carry
TOO_BIG = rf"pickles to \d+ bytes, more than a frame may carry \({FRAME_LIMIT} bytes\)"


def running(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie (Linux /proc)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def count_files(directory: Path, pattern: str) -> int:
    return len(list(directory.glob(pattern)))


def lines(path: Path) -> int:
    """Lines in ``path`` so far (0 if it is not there yet)."""
    try:
        return len(path.read_text().splitlines())
    except FileNotFoundError:
        return 0


class Callers:
    """Calls made in the background, one trio task each, by name."""

    def __init__(self, queue: trioq.TaskQueue, nursery: trio.Nursery) -> None:
        self.queue = queue
        self.nursery = nursery
        self.outcomes: dict[str, outcome.Outcome[Any]] = {}
        self.done: defaultdict[str, trio.Event] = defaultdict(trio.Event)

    def start(self, name: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        async def call() -> None:
            try:
                value = await self.queue.call(fn, *args, **kwargs)
            except Exception as exc:
                self.outcomes[name] = outcome.Error(exc)
            else:
                self.outcomes[name] = outcome.Value(value)
            self.done[name].set()

        self.nursery.start_soon(call)

    async def result(self, name: str) -> Any:
        await self.done[name].wait()
        return self.outcomes[name].unwrap()


# -- task functions, sent by value ------------------------------------------------------------


def make_pid() -> Callable[[], int]:
    def pid() -> int:
        import os

        return os.getpid()

    return pid


def make_async_pid() -> Callable[[], Any]:
    async def async_pid() -> int:
        import os

        import trio

        await trio.lowlevel.checkpoint()
        return os.getpid()

    return async_pid


def make_divide() -> Callable[[float, float], float]:
    def divide(a: float, b: float) -> float:
        return a / b

    return divide


def make_count_to_file() -> Callable[[str, int], Iterator[int]]:
    def count_to_file(path: str, n: int) -> Iterator[int]:
        for i in range(n):
            with open(path, "a") as log:
                log.write(f"{i}\n")
            yield i

    return count_to_file


def make_fail_mid_stream() -> Callable[[int], Iterator[int]]:
    def fail_mid_stream(n: int) -> Iterator[int]:
        yield from range(n)
        raise LookupError("mid-stream")

    return fail_mid_stream


def make_endless() -> Callable[[str], AsyncIterator[int]]:
    async def endless(path: str) -> AsyncIterator[int]:
        import trio

        i = 0
        try:
            while True:
                await trio.lowlevel.checkpoint()
                yield i
                i += 1
        finally:
            with open(path, "w") as marker:  # noqa: ASYNC230 (in the child, even when cancelled)
                marker.write("closed\n")

    return endless


def make_watch_cancellation() -> Callable[[str], Any]:
    async def watch_cancellation(directory: str) -> None:
        import os

        import trio

        with open(os.path.join(directory, "started"), "w") as marker:  # noqa: ASYNC230
            marker.write(f"{os.getpid()}\n")
        try:
            await trio.sleep_forever()
        except trio.Cancelled:
            with open(os.path.join(directory, "cancelled"), "w") as marker:  # noqa: ASYNC230
                marker.write("cancelled\n")
            raise

    return watch_cancellation


def make_stuck() -> Callable[[str], None]:
    def stuck(path: str) -> None:
        """Say which process runs it, then block its thread (the child is killed)."""
        import os
        import time

        with open(path, "w") as marker:
            marker.write(f"{os.getpid()}\n")
        time.sleep(60)

    return stuck


def make_stuck_on_first_run() -> Callable[[str], tuple[int, int]]:
    def stuck_on_first_run(directory: str) -> tuple[int, int]:
        """Run ``n`` leaves ``run-n`` (its pid); the first run then blocks until killed."""
        import os
        import time

        run = len([name for name in os.listdir(directory) if name.startswith("run-")])
        with open(os.path.join(directory, f"run-{run}"), "w") as marker:
            marker.write(f"{os.getpid()}\n")
        if run == 0:
            time.sleep(60)
        return run, os.getpid()

    return stuck_on_first_run


def make_kill_my_process() -> Callable[[str], None]:
    def kill_my_process(directory: str) -> None:
        import os
        import signal

        with open(os.path.join(directory, f"death-{os.getpid()}"), "w") as marker:
            marker.write("dying\n")
        os.kill(os.getpid(), signal.SIGKILL)

    return kill_my_process


def make_too_big() -> Callable[[str, int], Any]:
    def too_big(what: str, size: int) -> Any:
        """Return, raise or stream something of ``size`` bytes."""
        data = b"x" * size
        if what == "result":
            return data
        if what == "error":
            raise ValueError(data)
        return iter([b"small", data])

    return too_big


def make_hold_memory() -> Callable[[int], None]:
    def hold_memory(mib: int) -> None:
        """Keep ``mib`` MiB of written (so resident) bytes alive in this process."""
        import sys

        sys.__dict__.setdefault("_held_by_test", []).append(b"x" * (mib << 20))

    return hold_memory


PID = make_pid()
ASYNC_PID = make_async_pid()
DIVIDE = make_divide()
COUNT_TO_FILE = make_count_to_file()
FAIL_MID_STREAM = make_fail_mid_stream()
ENDLESS = make_endless()
WATCH_CANCELLATION = make_watch_cancellation()
STUCK = make_stuck()
STUCK_ON_FIRST_RUN = make_stuck_on_first_run()
KILL_MY_PROCESS = make_kill_my_process()
TOO_BIG_FN = make_too_big()
HOLD_MEMORY = make_hold_memory()


async def marker_pid(path: Path) -> int:
    """The pid a task wrote to ``path``, once it is there."""
    await procs.poll_until(lambda: path.exists() and path.read_text().endswith("\n"))
    return int(await trio.Path(path).read_text())


# -- running calls ----------------------------------------------------------------------------


async def test_a_process_worker_runs_plain_and_async_functions_in_its_child_process() -> None:
    worker = trioq.ProcessWorker()
    async with trioq.TaskQueue(worker) as queue:
        with trio.fail_after(WAIT):
            plain = await queue.call(PID)
            in_trio = await queue.call(ASYNC_PID)
            assert plain == in_trio != os.getpid()
            assert plain == worker.pid  # the pid the worker exposes
            assert await queue.call(pow, 2, 10) == 1024
            assert await queue.call(sorted, [3, 1, 2], reverse=True) == [3, 2, 1]
            with pytest.raises(ZeroDivisionError) as caught:
                await queue.call(DIVIDE, 1, 0)
            notes = getattr(caught.value, "__notes__", [])
            assert any("divide" in note and "ZeroDivisionError" in note for note in notes)
            assert await queue.call(PID) == plain  # a failure does not cost the child
    assert not running(plain)


async def test_a_process_worker_streams_a_generator_in_order_within_its_credit(
    tmp_path: Path,
) -> None:
    produced = tmp_path / "produced"
    leads = []
    async with trioq.TaskQueue(trioq.ProcessWorker()) as queue:
        with trio.fail_after(WAIT):
            receiver = await queue.call(COUNT_TO_FILE, str(produced), STREAM_ITEMS)
            assert isinstance(receiver, trio.abc.ReceiveChannel)
            items: list[int] = []
            async with receiver:
                while len(items) < STREAM_ITEMS:
                    # Nothing arrived for a while: the child went as far as it may.
                    await trio.testing.wait_all_tasks_blocked(QUIET)
                    leads.append(lines(produced) - len(items))
                    for _ in range(min(60, STREAM_ITEMS - len(items))):
                        items.append(await receiver.receive())
                with pytest.raises(trio.EndOfChannel):
                    await receiver.receive()
            assert items == list(range(STREAM_ITEMS))
            assert lines(produced) == STREAM_ITEMS
            assert max(leads) <= STREAM_AHEAD, f"the child ran ahead by {leads}"

            receiver = await queue.call(FAIL_MID_STREAM, 3)
            async with receiver:
                assert [item async for item in _until_failure(receiver, 3)] == [0, 1, 2]
                with pytest.raises(LookupError, match="mid-stream"):
                    await receiver.receive()
            assert await queue.call(pow, 2, 3) == 8  # the worker is free again


async def _until_failure(receiver: trio.abc.ReceiveChannel[int], n: int) -> AsyncIterator[int]:
    for _ in range(n):
        yield await receiver.receive()


async def test_closing_the_receiver_early_stops_the_generator_in_the_child(
    tmp_path: Path,
) -> None:
    closed = tmp_path / "closed"
    async with trioq.TaskQueue(trioq.ProcessWorker()) as queue:
        with trio.fail_after(WAIT):
            pid = await queue.call(PID)
            receiver = await queue.call(ENDLESS, str(closed))
            async with receiver:
                assert [await receiver.receive() for _ in range(3)] == [0, 1, 2]
            await procs.poll_until(closed.exists)  # its ``finally`` ran in the child
            assert await queue.call(PID) == pid  # the same child takes the next call
            assert queue.pending() == 0


@pytest.mark.parametrize("what", ["result", "error", "item"])
async def test_a_process_outcome_over_the_frame_limit_fails_the_call_and_the_child_lives_on(
    what: str,
) -> None:
    worker = trioq.ProcessWorker()
    async with trioq.TaskQueue(worker) as queue:
        with trio.fail_after(WAIT):
            pid = await queue.call(PID)
            if what == "item":
                receiver = await queue.call(TOO_BIG_FN, what, FRAME_LIMIT)
                async with receiver:
                    assert await receiver.receive() == b"small"
                    with pytest.raises(trioq.SerializationError, match=TOO_BIG):
                        await receiver.receive()
            else:
                with pytest.raises(trioq.SerializationError, match=TOO_BIG) as caught:
                    await queue.call(TOO_BIG_FN, what, FRAME_LIMIT)
                assert f"the call's {'result' if what == 'result' else 'exception'}" in str(
                    caught.value
                )
            assert await queue.call(PID) == pid  # the same child, once: no rerun
    assert worker._inboxes == {}


async def test_a_process_call_over_the_frame_limit_fails_at_once_and_the_worker_goes_on() -> None:
    worker = trioq.ProcessWorker()
    async with trioq.TaskQueue(worker) as queue:
        with trio.fail_after(WAIT):
            pid = await queue.call(PID)
            with pytest.raises(trioq.SerializationError, match=TOO_BIG):
                await queue.call(len, b"x" * FRAME_LIMIT)
            assert worker._inboxes == {}  # no inbox left for a request never sent
            assert await queue.call(PID) == pid
            assert queue.pending() == 0


async def test_mem_usage_is_the_childs_resident_memory_in_kib_and_0_while_no_child_runs() -> None:
    worker = trioq.ProcessWorker()
    assert worker.mem_usage() == 0  # not attached: no child yet
    async with trioq.TaskQueue(worker) as queue:
        with trio.fail_after(WAIT):
            await queue.call(PID)  # the child is up and has run a call
            before = worker.mem_usage()
            assert 1024 < before < 2 * 1024 * 1024, f"{before} KiB"  # 1 MiB .. 2 GiB
            await queue.call(HOLD_MEMORY, 64)
            grown = worker.mem_usage() - before
            assert grown >= 48 * 1024, f"the child holds 64 MiB more, grew by {grown} KiB"
            assert await queue.detach_worker(1) == []
    assert worker.mem_usage() == 0  # its child has exited


# -- timeouts, crashes, shutdown --------------------------------------------------------------


async def test_a_process_call_timeout_cancels_the_async_fn_in_the_child_and_the_worker_goes_on(
    tmp_path: Path,
) -> None:
    async with trioq.TaskQueue(trioq.ProcessWorker()) as queue:
        with trio.fail_after(WAIT):
            pid = await queue.call(PID)  # the child is up
            with pytest.raises(trio.TooSlowError):
                await queue.call(WATCH_CANCELLATION, str(tmp_path), timeout=0.3)
            assert await marker_pid(tmp_path / "started") == pid
            await procs.poll_until((tmp_path / "cancelled").exists)
            assert await queue.call(PID) == pid
            assert queue.pending() == 0


async def test_detaching_a_process_worker_with_crash_kills_its_child_and_loses_its_call(
    tmp_path: Path,
) -> None:
    marker = tmp_path / "stuck"
    async with trioq.TaskQueue(trioq.ProcessWorker()) as queue, trio.open_nursery() as nursery:
        callers = Callers(queue, nursery)
        with trio.fail_after(WAIT):
            callers.start("stuck", STUCK, str(marker), niceness=-5)
            pid = await marker_pid(marker)
            infos = await queue.detach_worker(1, crash=True)
            assert infos == [
                trioq.TaskInfo(fn=STUCK, args=(str(marker),), kwargs={}, niceness=-5, series=None)
            ]
            with pytest.raises(trioq.WorkerLostError):
                await callers.result("stuck")
            await procs.poll_until(lambda: not running(pid))
            assert queue.workers() == [] and queue.pending() == 0


async def test_a_call_whose_child_is_killed_runs_again_on_another_worker(tmp_path: Path) -> None:
    first, second = trioq.ProcessWorker(), trioq.ProcessWorker()
    async with trioq.TaskQueue(first, second) as queue:
        with trio.fail_after(WAIT):
            async with trio.open_nursery() as nursery:
                callers = Callers(queue, nursery)
                callers.start("victim", STUCK_ON_FIRST_RUN, str(tmp_path))
                killed = await marker_pid(tmp_path / "run-0")
                victim, survivor = (first, second) if first.pid == killed else (second, first)
                assert victim.pid == killed
                os.kill(killed, signal.SIGKILL)
                run, pid = await callers.result("victim")
            assert (run, pid) == (1, survivor.pid)
            assert queue.workers() == [survivor]  # the dead worker was detached
            await procs.poll_until(lambda: not running(killed))
            await trio.testing.wait_all_tasks_blocked()
            # Nothing waits for the dead child to report the stopped call.
            assert victim._abandoned == {} and victim._inboxes == {}


async def test_a_stream_stopped_after_its_child_died_leaves_the_worker_nothing_to_wait_for() -> (
    None
):
    # The worker's internal protocol, driven directly: a streamed run blocked
    # handing an item on (nobody reads) outlives its child, then is cancelled.
    from trioq._taskqueue.workers import _Sink

    worker = trioq.ProcessWorker()
    with trio.fail_after(WAIT):
        async with trio.open_nursery() as nursery:
            died = trio.Event()
            await worker._open(nursery, died.set)
            opened = trio.Event()

            def on_open(stream: Any) -> bool:
                opened.set()
                return True  # a reader exists (it never reads)

            sink = _Sink(on_open=on_open)
            run = trio.CancelScope()

            async def stream() -> None:
                with run:
                    await worker._run(ENDLESS, (os.devnull,), {}, sink)

            nursery.start_soon(stream)
            await opened.wait()
            await trio.testing.wait_all_tasks_blocked()  # blocked in sink.send
            assert worker.pid is not None
            os.kill(worker.pid, signal.SIGKILL)
            await died.wait()
            assert worker._done is not None
            await worker._done.wait()  # the child is reaped, the worker is dead
            run.cancel()
            await trio.testing.wait_all_tasks_blocked()
            assert worker._abandoned == {}
            await worker._ready()  # nothing to wait for
            await worker._close(crash=True)


async def test_a_call_that_kills_every_child_it_runs_in_fails_after_three_deaths(
    tmp_path: Path,
) -> None:
    workers = [trioq.ProcessWorker() for _ in range(5)]
    async with trioq.TaskQueue(*workers) as queue:
        with trio.fail_after(WAIT):
            with pytest.raises(trioq.WorkerLostError):
                await queue.call(KILL_MY_PROCESS, str(tmp_path))
            deaths = count_files(tmp_path, "death-*")
            assert deaths == 3, f"it ran {deaths} times, expected 3 (as cluster tasks)"
            assert len(queue.workers()) == 2  # two workers never ran it, and live
            assert await queue.call(PID) in {w.pid for w in workers}


async def test_shutdown_with_a_stuck_process_call_kills_the_child_after_the_timeout(
    tmp_path: Path,
) -> None:
    grace = 0.5
    marker = tmp_path / "stuck"
    async with (
        trioq.TaskQueue(trioq.ProcessWorker(), timeout=grace) as queue,
        trio.open_nursery() as nursery,
    ):
        callers = Callers(queue, nursery)
        with trio.fail_after(WAIT):
            callers.start("stuck", STUCK, str(marker))
            pid = await marker_pid(marker)
            started = trio.current_time()
            await queue.shutdown()
            elapsed = trio.current_time() - started
            assert grace <= elapsed < grace + 3.0
            with pytest.raises(trioq.TaskCancelledError):
                await callers.result("stuck")
            assert not running(pid), "shutdown left the child behind"
