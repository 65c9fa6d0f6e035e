"""Faults on each link, counted exactly (issue #13, item 6).

For the worker-side link (cut, and frozen past the heartbeat limit) and
for a scheduler stopped with SIGSTOP (shorter, and longer, than the
limit), every task and every item is counted: each future resolves once
with its own value, each item arrives once, in order, and what ``flush``
confirmed is never lost.  The promises checked are the ones written in
docs/operations.rst ("Failures") and docs/queues.rst (``flush``).

Faults are real: the worker's link goes through ``FaultProxy``, and the
scheduler is a ``python -m trioq scheduler`` process that is sent SIGSTOP
(and always SIGCONT again, in a ``finally``).  Workers run in this
process, so a task records its runs in ``LEDGER`` (its function travels
by reference, the worker calls this module's own object): reruns are
counted, not guessed.  Conditions nobody notifies us of (a worker joined,
a task is running) are polled; each test is bounded by ``fail_after``.
Figures (reruns, detection times) go to ``record_property``.

A worker whose reconnect handshake is cut keeps trying: a handshake cut off
is not a refused token (``AuthenticationError.refused``).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import procs
import pytest
import trio
from faultproxy import FaultProxy

import trioq
from trioq._wire.heartbeat import MISSED_BEATS

INTERVAL = 0.2  # a short heartbeat so that detection is quick
LIMIT = MISSED_BEATS * INTERVAL + INTERVAL  # silent this long: gone (the loop looks twice a beat)
MARGIN = 1.0  # scheduling slack on a loaded 2-core machine
TIMEOUT = 30  # any one test


class Ledger:
    """Which task arguments started and finished, and how often (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.started: Counter[int] = Counter()
        self.finished: Counter[int] = Counter()

    def clear(self) -> None:
        with self._lock:
            self.started.clear()
            self.finished.clear()

    def start(self, i: int) -> None:
        with self._lock:
            self.started[i] += 1

    def finish(self, i: int) -> None:
        with self._lock:
            self.finished[i] += 1

    def running(self) -> set[int]:
        """Arguments with a run started and not finished, now."""
        with self._lock:
            return {i for i, n in self.started.items() if n > self.finished[i]}

    def total_finished(self) -> int:
        with self._lock:
            return sum(self.finished.values())


LEDGER = Ledger()


@pytest.fixture(autouse=True)
def _fresh_ledger() -> None:
    LEDGER.clear()


def recorded(i: int, seconds: float) -> int:
    """A task: runs for ``seconds`` in its worker thread, noted in LEDGER; returns ``i``."""
    LEDGER.start(i)
    time.sleep(seconds)
    LEDGER.finish(i)
    return i


async def tasks_running_after(finished: int) -> set[int]:
    """Once ``finished`` runs ended and some are running: the running ones.

    Returns without a checkpoint after looking, so a fault caused right
    after the call comes before any of their results is sent.
    """
    while True:
        running = LEDGER.running()
        if running and LEDGER.total_finished() >= finished:
            return running
        await trio.sleep(procs.POLL_INTERVAL)


async def _workers_are(client: trioq.Client, names: list[str]) -> bool:
    return sorted(worker["name"] for worker in (await client.status())["workers"]) == names


async def each_once(client: trioq.Client, futures: list[Any]) -> list[int]:
    """Every future's value, by submission order, as each completes.

    (A result applied twice shows in the scheduler's task counts, which the
    tests check: a future itself completes once by construction.)
    """
    position = {id(future): n for n, future in enumerate(futures)}
    values: dict[int, int] = {}
    async for future in client.as_completed(futures):
        values[position[id(future)]] = await future
    return [values[n] for n in range(len(futures))]


@asynccontextmanager
async def cluster_behind_proxy() -> AsyncIterator[tuple[Any, FaultProxy, trio.Nursery]]:
    """An embedded cluster with no workers, a proxy to it, and a nursery for workers."""
    async with (
        trioq.open_cluster(heartbeat_interval=INTERVAL) as cluster,
        trio.open_nursery() as nursery,
    ):
        proxy = FaultProxy.to(cluster.address)
        await nursery.start(proxy.serve)
        yield cluster, proxy, nursery
        nursery.cancel_scope.cancel()


# -- the worker-side link ---------------------------------------------------------------------


def worker_behind(proxy: FaultProxy, cluster: Any, name: str, nthreads: int = 1) -> trioq.Worker:
    """A worker that reaches ``cluster`` through ``proxy``, quick to notice and to come back."""
    return trioq.Worker(
        proxy.address,
        token=cluster.token,
        name=name,
        nthreads=nthreads,
        heartbeat_interval=INTERVAL,
        reconnect_timeout=10,
    )


async def test_a_cut_worker_link_reconnects_and_every_task_resolves_once_with_its_value(
    record_property: Any,
) -> None:
    n = 30
    with trio.fail_after(TIMEOUT):
        async with cluster_behind_proxy() as (cluster, proxy, nursery):
            worker = worker_behind(proxy, cluster, "behind-proxy", nthreads=4)
            await nursery.start(worker.run)
            async with trioq.connect(cluster.address) as client:
                futures = [await client.submit(recorded, i, 0.05) for i in range(n)]
                with trio.fail_after(10):
                    running_at_cut = await tasks_running_after(8)
                proxy.cut()  # at once: their results are still to come
                assert await each_once(client, futures) == list(range(n))
                # The worker is back, registered afresh through a new link.
                assert await _workers_are(client, ["behind-proxy"])
                assert (await client.status())["workers"][0]["restarts"] >= 1
                assert proxy.connections >= 2
                assert worker.lost is None  # it never gave up
            cluster.scheduler.state.validate()
        runs = sum(LEDGER.started.values())
        assert set(LEDGER.started) == set(range(n))  # each ran, at least once
        # A task running when the link was cut could only report on that link: it ran again.
        assert all(LEDGER.started[i] >= 2 for i in running_at_cut), running_at_cut
        assert runs >= n + len(running_at_cut)
        record_property("running_at_cut", len(running_at_cut))
        record_property("reruns_after_cut", runs - n)


async def test_a_worker_link_frozen_past_the_limit_drops_the_worker_and_reruns_its_tasks(
    record_property: Any,
) -> None:
    n = 20
    with trio.fail_after(TIMEOUT):
        async with cluster_behind_proxy() as (cluster, proxy, nursery):
            frozen = worker_behind(proxy, cluster, "frozen", nthreads=2)
            await nursery.start(frozen.run)
            async with trioq.connect(cluster.address) as client:
                futures = [await client.submit(recorded, i, 0.1) for i in range(n)]
                with trio.fail_after(10):
                    stuck = await tasks_running_after(4)
                proxy.freeze()  # at once: their results can only cross the frozen link
                frozen_at = trio.current_time()
                direct = trioq.Worker(
                    cluster.address, name="direct", nthreads=4, heartbeat_interval=INTERVAL
                )
                await nursery.start(direct.run)
                with trio.fail_after(LIMIT + MARGIN):
                    await procs.poll_until(lambda: _workers_are(client, ["direct"]))
                dropped_after = trio.current_time() - frozen_at
                assert await each_once(client, futures) == list(range(n))
                for i in stuck:
                    assert LEDGER.started[i] >= 2, f"task {i} was not run again"
                # Thawed, the frozen worker's late results change nothing; it rejoins.
                proxy.thaw()
                with trio.fail_after(10):
                    await procs.poll_until(lambda: _workers_are(client, ["direct", "frozen"]))
                assert await client.gather(futures) == list(range(n))
                assert (await client.status())["tasks"] == {"finished": n}
            cluster.scheduler.state.validate()
        record_property("dropped_after_s", round(dropped_after, 3))
        record_property("stuck_at_freeze", len(stuck))
        record_property("reruns_after_freeze", sum(LEDGER.started.values()) - n)


async def test_a_worker_whose_reconnect_handshake_is_cut_keeps_trying_and_rejoins() -> None:
    n = 10
    with trio.fail_after(TIMEOUT):
        async with cluster_behind_proxy() as (cluster, proxy, nursery):
            worker = worker_behind(proxy, cluster, "behind-proxy")
            returned = trio.Event()

            async def run(task_status: trio.TaskStatus[None]) -> None:
                try:
                    await worker.run(task_status=task_status)
                finally:
                    returned.set()

            await nursery.start(run)
            async with trioq.connect(cluster.address) as client:
                proxy.freeze()
                proxy.cut()  # the worker's link: it dials again, into a frozen proxy
                with trio.fail_after(5):
                    # Linked through (not just accepted), so the cut reaches it.
                    await procs.poll_until(lambda: proxy.connections >= 2 and proxy.live >= 1)
                proxy.cut()  # its handshake, mid-way
                proxy.thaw()
                futures = [await client.submit(recorded, i, 0) for i in range(n)]

                async def rejoined() -> bool:
                    return returned.is_set() or await _workers_are(client, ["behind-proxy"])

                with trio.fail_after(10):
                    await procs.poll_until(rejoined)
                assert not returned.is_set(), f"the worker gave up: {worker.lost!r}"
                assert await each_once(client, futures) == list(range(n))
                assert proxy.connections >= 3


# -- a scheduler stopped with SIGSTOP ----------------------------------------------------------


@contextmanager
def stopped(pid: int) -> Iterator[float]:
    """The process ``pid`` stopped (SIGSTOP) for the block; SIGCONT however it ends.

    Yields the trio time it was stopped at.
    """
    os.kill(pid, signal.SIGSTOP)
    try:
        yield trio.current_time()
    finally:
        os.kill(pid, signal.SIGCONT)


async def test_a_scheduler_stopped_shorter_than_the_limit_delivers_every_item_once_in_order(
    tmp_path: Path, record_property: Any
) -> None:
    total, pause = 2000, 0.5
    with trio.fail_after(TIMEOUT):
        extra = ["--heartbeat-interval", "1"]
        async with (
            procs.scheduler_process(tmp_path, extra_args=extra) as scheduler,
            trioq.connect(
                scheduler.address, token=scheduler.token, heartbeat_interval=1
            ) as producer,
            trioq.connect(
                scheduler.address, token=scheduler.token, heartbeat_interval=1
            ) as consumer,
        ):
            halfway, stopped_now = trio.Event(), trio.Event()
            stopped_for: list[float] = []
            got: list[int] = []

            async def produce() -> None:
                queue = producer.queue("stream")
                for i in range(total // 2):
                    await queue.put(i)
                await stopped_now.wait()  # ... and the rest while the scheduler is stopped
                for i in range(total // 2, total):
                    await queue.put(i)
                await producer.flush()

            async def consume() -> None:
                queue = consumer.queue("stream")
                for _ in range(total):
                    got.append(await queue.get())
                    if len(got) == total // 4:
                        halfway.set()

            async def stop_and_continue() -> None:
                await halfway.wait()
                with stopped(scheduler.proc.pid) as began:
                    stopped_now.set()
                    await trio.sleep(pause)
                    stopped_for.append(trio.current_time() - began)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(produce)
                nursery.start_soon(consume)
                nursery.start_soon(stop_and_continue)
            assert got == list(range(total))  # none lost, none twice, in order
            await consumer.flush()  # its acknowledgements are applied
            figures = await producer.queue("stream").statistics()
            assert (figures.queued, figures.leased) == (0, 0)  # nothing left over
            assert scheduler.proc.returncode is None
        record_property("stopped_for_s", round(stopped_for[0], 3))


async def test_a_scheduler_stopped_past_the_limit_breaks_the_clients_and_keeps_flushed_items(
    tmp_path: Path, record_property: Any
) -> None:
    batch = 100
    with trio.fail_after(TIMEOUT):
        extra = ["--heartbeat-interval", str(INTERVAL)]
        async with procs.scheduler_process(tmp_path, extra_args=extra) as scheduler:
            confirmed = 0  # items 0 .. confirmed-1: a flush that returned covered them
            sent = 0  # items whose put returned
            enough = trio.Event()
            broken: dict[str, trio.Event] = {"producer": trio.Event(), "getter": trio.Event()}
            broke: dict[str, tuple[float, BaseException]] = {}

            async def produce(client: trioq.Client) -> None:
                nonlocal confirmed, sent
                queue = client.queue("q")
                try:
                    while True:
                        for _ in range(batch):
                            await queue.put(sent)
                            sent += 1
                        await client.flush()
                        confirmed = sent
                        if confirmed >= 10 * batch:
                            enough.set()
                except trio.BrokenResourceError as exc:
                    broke["producer"] = (trio.current_time(), exc)
                    broken["producer"].set()

            async def get_from_empty(client: trioq.Client) -> None:
                try:
                    await client.queue("idle").get()
                except trio.BrokenResourceError as exc:
                    broke["getter"] = (trio.current_time(), exc)
                    broken["getter"].set()

            async with (
                trioq.connect(
                    scheduler.address, token=scheduler.token, heartbeat_interval=INTERVAL
                ) as producer,
                trioq.connect(
                    scheduler.address, token=scheduler.token, heartbeat_interval=INTERVAL
                ) as getter,
                trio.open_nursery() as nursery,
            ):
                nursery.start_soon(produce, producer)
                nursery.start_soon(get_from_empty, getter)
                await enough.wait()
                with stopped(scheduler.proc.pid) as began:
                    with trio.fail_after(LIMIT + MARGIN):
                        for event in broken.values():
                            await event.wait()
                detected = {who: at - began for who, (at, _) in broke.items()}
            for who, (_, exc) in broke.items():
                assert "nothing from the scheduler" in str(exc), (who, exc)
            # Resumed, the scheduler closes the old connections; then count what it kept.
            async with trioq.connect(scheduler.address, token=scheduler.token) as fresh:

                async def only_fresh() -> bool:
                    return len((await fresh.status())["clients"]) == 1

                with trio.fail_after(10):
                    await procs.poll_until(only_fresh)
                queue = fresh.queue("q")
                size = await queue.qsize()
                kept: list[int] = []
                while len(kept) < size:
                    kept += await queue.get_batch(size - len(kept))
                assert await queue.qsize() == 0
                assert kept == list(range(len(kept)))  # none twice, in order: a prefix
                assert confirmed <= len(kept) <= sent  # every flushed item is there
        record_property("confirmed", confirmed)
        record_property("sent", sent)
        record_property("kept", len(kept))
        for who, seconds in detected.items():
            record_property(f"{who}_detected_after_s", round(seconds, 3))
            assert seconds < LIMIT + MARGIN, (who, seconds)
