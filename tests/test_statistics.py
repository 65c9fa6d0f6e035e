"""Statistics in trio's shape, with ``peak_buffer_used`` (issue #12 items 7 and 13).

Queue endpoints answer with the cluster's figures (queued and leased apart);
a stage's output answers locally, like a memory channel.

Run the file with ``TRIOQ_PURE_PYTHON=1`` too: the cluster uses the core
selected at import.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import attrs
import trio
import trio.testing
from clusters import cluster, connect

import trioq
from trioq import streams
from trioq._client.queue_link import IDLE_RETURN

__all__ = ["cluster"]

TIMEOUT = 10
#: trio's ``MemoryChannelStatistics`` fields (``peak_buffer_used`` among them in recent trio).
TRIO_FIELDS = {
    field.name for field in attrs.fields(type(trio.open_memory_channel[int](1)[0].statistics()))
}


def test_the_statistics_have_every_field_of_trios_and_the_peak() -> None:
    assert "current_buffer_used" in TRIO_FIELDS
    names = {f.name for f in dataclasses.fields(trioq.QueueStatistics)}
    assert names == TRIO_FIELDS | {"peak_buffer_used", "queued", "leased"}
    assert {f.name for f in dataclasses.fields(trioq.ChannelStatistics)} == TRIO_FIELDS | {
        "peak_buffer_used"
    }


async def test_queue_endpoint_statistics_count_endpoints_buffer_and_peak(cluster: Any) -> None:
    with trio.fail_after(TIMEOUT):
        async with connect(cluster) as a, connect(cluster) as b:
            send, receive = a.queue("q", 10).open_channels()
            b.queue("q").open_send_channel()
            for item in range(5):
                await send.send(item)
            for _ in range(3):
                await receive.receive()
            stats = await receive.statistics()
            assert stats.max_buffer_size == 10
            assert (stats.open_send_channels, stats.open_receive_channels) == (2, 1)
            assert stats.current_buffer_used == 2 == stats.queued + stats.leased
            assert stats.peak_buffer_used == 5
            assert stats.leased == 2  # prefetched by ``a`` with the first three
            assert (stats.tasks_waiting_send, stats.tasks_waiting_receive) == (0, 0)


async def test_an_unbounded_queue_reports_an_infinite_buffer_like_trio(cluster: Any) -> None:
    async with connect(cluster) as client:
        stats = await client.queue("q").statistics()
        assert stats.max_buffer_size == math.inf
        assert stats.current_buffer_used == 0 and stats.peak_buffer_used == 0


async def test_waiting_tasks_are_counted_on_each_side(cluster: Any) -> None:
    with trio.fail_after(TIMEOUT):
        async with connect(cluster) as consumer, connect(cluster) as producer:
            queue = consumer.queue("q", 1)
            async with trio.open_nursery() as nursery:
                for _ in range(3):
                    nursery.start_soon(queue.get)
                await trio.testing.wait_all_tasks_blocked()
                stats = await producer.queue("q").statistics()
                assert stats.tasks_waiting_receive == 1  # the consumer's one request
                stats = await queue.statistics()
                assert stats.tasks_waiting_receive == 3  # its own three tasks
                nursery.cancel_scope.cancel()
            out = producer.queue("q", 1)
            await out.put("fills it")
            async with trio.open_nursery() as nursery:
                nursery.start_soon(out.put, "waits")
                await trio.testing.wait_all_tasks_blocked()
                assert (await out.statistics()).tasks_waiting_send == 1
                nursery.cancel_scope.cancel()


async def test_items_prefetched_by_an_idle_client_go_back_after_a_short_while(
    cluster: Any,
) -> None:
    with trio.fail_after(TIMEOUT):
        async with connect(cluster) as idle, connect(cluster) as producer:
            await producer.queue("q").put_batch(range(10))
            assert await idle.queue("q").get() == 0  # prefetches the other nine
            await idle.queue("q").qsize()  # its acknowledgement of the first is in
            stats = await producer.queue("q").statistics()
            assert (stats.queued, stats.leased) == (0, 9)
            await trio.sleep(2 * IDLE_RETURN)  # untouched for longer than IDLE_RETURN
            await idle.queue("q").qsize()  # whatever it gave back is in
            stats = await producer.queue("q").statistics()
            assert (stats.queued, stats.leased) == (9, 0)
            assert await producer.queue("q").get() == 1


async def test_a_stage_output_reports_its_buffer_and_peak_locally(cluster: Any) -> None:
    with trio.fail_after(TIMEOUT):
        async with trioq.open_cluster(workers=1) as local, trioq.connect(local.address) as client:
            send, source = trio.open_memory_channel[int](10)
            for item in range(4):
                send.send_nowait(item)
            send.close()
            output = await streams.scatter(client, source, buffer=4)
            await trio.testing.wait_all_tasks_blocked()  # the stage filled its buffer
            stats = output.statistics()  # type: ignore[attr-defined]
            assert stats.max_buffer_size == 4 and stats.current_buffer_used == 4
            for _ in range(4):
                await output.receive()
            stats = output.statistics()  # type: ignore[attr-defined]
            assert (stats.current_buffer_used, stats.peak_buffer_used) == (0, 4)
