"""Silent peers are noticed in bounded time, and a caller's own deadline wins (issue #13, item 3).

Faults are caused for real: a link frozen by ``FaultProxy`` (sockets open,
nothing forwarded) and a scheduler process stopped with SIGSTOP.  Each
test counts its items and bounds itself in time.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import procs
import pytest
import trio
import trio.testing
from faultproxy import FaultProxy

import trioq
from trioq._wire.heartbeat import MISSED_BEATS

INTERVAL = 0.2  # a short heartbeat so detection is quick
LIMIT = MISSED_BEATS * INTERVAL + INTERVAL  # silent this long: gone (the loop looks twice a beat)
MARGIN = 1.0  # scheduling slack on a loaded 2-core machine
TIMEOUT = 30


async def test_a_frozen_link_breaks_the_waiting_get_and_frees_the_clients_items() -> None:
    with trio.fail_after(TIMEOUT):
        async with (
            trioq.open_cluster(heartbeat_interval=INTERVAL) as cluster,
            trio.open_nursery() as nursery,
        ):
            proxy = FaultProxy.to(cluster.address)
            await nursery.start(proxy.serve)
            async with (
                trioq.connect(cluster.address) as producer,
                trioq.connect(
                    proxy.address, token=cluster.token, heartbeat_interval=INTERVAL
                ) as far,
            ):
                await producer.queue("q").put_batch(range(10))
                far_queue = far.queue("q")
                assert await far_queue.get() == 0  # nine more prefetched behind the proxy
                await far_queue.qsize()  # a round trip: the acknowledgement of 0 is in
                proxy.freeze()
                frozen_at = trio.current_time()
                with pytest.raises(trio.BrokenResourceError, match="nothing from the scheduler"):
                    for _ in range(20):
                        await far_queue.get_nowait()  # the prefetched ones, then the scheduler
                    await far_queue.get()
                assert trio.current_time() - frozen_at < LIMIT + MARGIN
                # The scheduler dropped the frozen client too: its nine leases are back.
                got = [await producer.queue("q").get() for _ in range(9)]
            assert sorted(got) == list(range(1, 10))
            assert trio.current_time() - frozen_at < 2 * (LIMIT + MARGIN)
            nursery.cancel_scope.cancel()


async def test_a_get_under_a_deadline_on_a_frozen_link_raises_too_slow_and_loses_nothing() -> None:
    with trio.fail_after(TIMEOUT):
        async with (
            trioq.open_cluster() as cluster,  # default heartbeats: far slower than the deadline
            trio.open_nursery() as nursery,
        ):
            proxy = FaultProxy.to(cluster.address)
            await nursery.start(proxy.serve)
            async with (
                trioq.connect(cluster.address) as producer,
                trioq.connect(proxy.address, token=cluster.token) as far,
            ):
                queue = far.queue("q")
                await queue.qsize()
                proxy.freeze()
                began = trio.current_time()
                with pytest.raises(trio.TooSlowError):
                    with trio.fail_after(0.5):
                        await queue.get()
                assert trio.current_time() - began < 0.5 + MARGIN
                await producer.queue("q").put("after")
                proxy.thaw()
                assert await queue.get() == "after"  # the withdrawn get took nothing
                assert await queue.qsize() == 0
            nursery.cancel_scope.cancel()


async def test_a_deadline_beats_a_stopped_scheduler_and_a_long_stop_breaks_the_session(
    tmp_path: Path,
) -> None:
    with trio.fail_after(TIMEOUT):
        extra = ["--heartbeat-interval", str(INTERVAL)]
        async with procs.scheduler_process(tmp_path, extra_args=extra) as scheduler:
            pid = scheduler.proc.pid
            async with trioq.connect(
                scheduler.address, token=scheduler.token, heartbeat_interval=INTERVAL
            ) as client:
                queue = client.queue("q")
                await queue.put("kept")
                os.kill(pid, signal.SIGSTOP)
                try:
                    began = trio.current_time()
                    with pytest.raises(trio.TooSlowError):
                        with trio.fail_after(0.3):
                            await client.queue("empty").get()
                    assert trio.current_time() - began < 0.3 + MARGIN
                    with pytest.raises(
                        trio.BrokenResourceError, match="nothing from the scheduler"
                    ):
                        await queue.get_batch(5)
                    assert trio.current_time() - began < LIMIT + 0.3 + MARGIN
                finally:
                    os.kill(pid, signal.SIGCONT)
            async with trioq.connect(scheduler.address, token=scheduler.token) as again:
                assert await again.queue("q").get() == "kept"
                assert await again.queue("empty").qsize() == 0


async def test_an_idle_connection_is_kept_alive_by_pings_across_many_intervals() -> None:
    with trio.fail_after(TIMEOUT):
        async with (
            trioq.open_cluster(heartbeat_interval=INTERVAL) as cluster,
            trioq.connect(cluster.address, heartbeat_interval=INTERVAL) as client,
        ):
            await trio.sleep(4 * LIMIT)  # idle, but neither side goes silent
            await client.queue("q").put(1)
            assert await client.queue("q").get() == 1


@pytest.mark.parametrize("bad", [0, -1.0, "2", True])
def test_a_heartbeat_interval_that_is_not_a_positive_number_is_refused(bad: Any) -> None:
    with pytest.raises(ValueError, match="heartbeat_interval must be a positive number"):
        trioq.Scheduler(heartbeat_interval=bad)


async def test_the_scheduler_answers_a_clients_first_ping_with_its_own_interval() -> None:
    """So a client set slower beats at the scheduler's pace from the start."""
    from trioq._client.session import session_of

    with trio.fail_after(TIMEOUT):
        async with (
            trioq.open_cluster(heartbeat_interval=INTERVAL) as cluster,
            trioq.connect(cluster.address, heartbeat_interval=30) as client,
        ):
            await trio.testing.wait_all_tasks_blocked()  # its first ping has gone out
            await client.status()  # a round trip after it: the answer came before
            assert session_of(client).connection.peer_interval == INTERVAL
            await trio.sleep(4 * LIMIT)  # quiet at its own 30 s pace, it would be dropped
            await client.queue("q").put(1)
            assert await client.queue("q").get() == 1
