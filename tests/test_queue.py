"""Named queues, channels and variables end to end: an embedded cluster, real clients.

Each test runs against ``open_cluster()`` in this process and is bounded by
``trio.fail_after``, so a lost wake-up fails instead of hanging.  Waiting is
observed with ``trio.testing.wait_all_tasks_blocked`` (everything, scheduler
included, runs in this trio run) and with round trips: ``await q.qsize()``
returns only after the scheduler applied every earlier frame from that
client and every earlier answer to it has arrived.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import trio
import trio.testing
from clusters import connect, queue_status

import trioq
from trioq._client.dial import register_local_token
from trioq._scheduler.server import Scheduler

TIMEOUT = 10  # whole-test bound
INSTANT = 2  # bound for something that must not wait at all


async def until(predicate: Callable[[], bool]) -> None:
    """Wait (bounded by the caller's deadline) until ``predicate()`` holds."""
    while not predicate():
        await trio.testing.wait_all_tasks_blocked(cushion=0.001)


async def channels(*roles: tuple[Any, str]) -> list[Any]:
    """One endpoint per ``(queue handle, "send" | "receive")``, each applied.

    Opened with the single-half openers, so no unwanted half is ever counted.
    """
    kept = [
        q.open_send_channel() if role == "send" else q.open_receive_channel() for q, role in roles
    ]
    for q, _ in roles:
        await q.qsize()  # a round trip: the open (a one-way frame) is applied
    return kept


@dataclass
class Point:
    x: int
    y: int


def square(v: int) -> int:
    return v * v


# -- round trips -------------------------------------------------------------------------


async def test_put_and_get_round_trip_plain_and_pickled_values(cluster: Any) -> None:
    values = [
        None,
        True,
        -(2**63),
        1.5,
        "text",
        b"\x00bytes",
        [1, [2, 3]],
        {"k": (1, 2)},
        (1, "a"),
        Point(1, 2),
        square,
    ]
    with trio.fail_after(TIMEOUT):
        async with connect(cluster) as a, connect(cluster) as b:
            qa, qb = a.queue("values"), b.queue("values")
            for value in values:
                await qa.put(value)
            got = [await qb.get() for _ in values]
    assert got[:-1] == values[:-1]
    assert type(got[8]) is tuple and type(got[9]) is Point
    assert got[-1](7) == 49


async def test_put_batch_and_get_batch_round_trip_in_order(cluster: Any) -> None:
    with trio.fail_after(TIMEOUT):
        async with connect(cluster) as a, connect(cluster) as b:
            qa, qb = a.queue("batch"), b.queue("batch")
            await qa.put_batch(range(10))
            await qa.put_batch([])  # nothing, and no error
            assert await qa.qsize() == 10
            got: list[int] = []
            while len(got) < 10:
                got.extend(await qb.get_batch(4))
    assert got == list(range(10))


async def test_items_from_one_producer_reach_another_client_in_fifo_order(cluster: Any) -> None:
    with trio.fail_after(TIMEOUT):
        async with connect(cluster) as a, connect(cluster) as b:
            qa, qb = a.queue("fifo"), b.queue("fifo", prefetch=3)
            for i in range(0, 60, 3):
                await qa.put(i)
                await qa.put_batch([i + 1, i + 2])
            got = [await qb.get() for _ in range(60)]
    assert got == list(range(60))


async def test_async_for_yields_every_item_and_stops_when_the_last_sender_closes(
    cluster: Any,
) -> None:
    with trio.fail_after(TIMEOUT):
        async with connect(cluster) as a, connect(cluster) as b:
            qb = b.queue("iter")
            send, _ = await channels((a.queue("iter"), "send"), (qb, "receive"))
            async with send:
                for i in range(5):
                    await send.send(i)
            got = [item async for item in qb]
    assert got == [0, 1, 2, 3, 4]


# -- sizes and back pressure ------------------------------------------------------------------


async def test_put_on_a_full_queue_waits_until_a_get_frees_room(cluster: Any) -> None:
    with trio.fail_after(TIMEOUT):
        async with connect(cluster) as producer, connect(cluster) as consumer:
            qp = producer.queue("bp", maxsize=2)
            await qp.qsize()
            for i in range(2):
                await qp.put(i)
                await qp.qsize()  # the put's answer (and the credit it grants) is in
            done = trio.Event()

            async def third_put() -> None:
                await qp.put(2)
                done.set()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(third_put)
                await trio.testing.wait_all_tasks_blocked()
                assert not done.is_set(), "a put on a full queue did not wait"
                assert queue_status(cluster, "bp")["putters"] == 1
                qc = consumer.queue("bp")  # opened only now: the queue is full, no credit
                assert await qc.get() == 0
                await done.wait()
            assert await qc.get() == 1
            assert await qc.get() == 2
            assert await qc.qsize() == 0


@pytest.mark.parametrize("maxsize", [1, 4])
async def test_one_client_fills_a_bounded_queue_to_maxsize_without_waiting(
    cluster: Any, maxsize: int
) -> None:
    async with connect(cluster) as client:
        q = client.queue("fill", maxsize=maxsize)
        with trio.fail_after(INSTANT):  # there is room for every one of these puts
            for i in range(maxsize):
                await q.put(i)
        assert await q.qsize() == maxsize


async def test_put_nowait_on_an_empty_bounded_queue_succeeds(cluster: Any) -> None:
    async with connect(cluster) as client:
        q = client.queue("nowait-empty", maxsize=1)
        with trio.fail_after(INSTANT):
            await q.put_nowait("x")
            assert await q.qsize() == 1
            assert await q.get() == "x"


async def test_a_consumer_that_opened_the_queue_first_does_not_starve_a_producer(
    cluster: Any,
) -> None:
    async with connect(cluster) as consumer, connect(cluster) as producer:
        qc = consumer.queue("starve", maxsize=1)
        await qc.qsize()
        qp = producer.queue("starve", maxsize=1)
        await qp.qsize()
        got: list[Any] = []
        with trio.fail_after(INSTANT):  # the queue is empty: the put must go through
            async with trio.open_nursery() as nursery:
                nursery.start_soon(lambda: _append_get(qc, got))
                await qp.put("item")
        assert got == ["item"]


async def _append_get(q: Any, out: list[Any]) -> None:
    out.append(await q.get())


async def test_concurrent_puts_from_one_client_fill_a_bounded_queue_exactly(
    cluster: Any,
) -> None:
    with trio.fail_after(TIMEOUT):
        async with connect(cluster) as producer, connect(cluster) as consumer:
            qp = producer.queue("concurrent", maxsize=4)
            await qp.qsize()
            done: list[int] = []

            async def put(i: int) -> None:
                await qp.put(i)
                done.append(i)

            async with trio.open_nursery() as nursery:
                for i in range(6):
                    nursery.start_soon(put, i)
                await trio.testing.wait_all_tasks_blocked()
                assert queue_status(cluster, "concurrent")["size"] == 4
                assert len(done) == 4, f"{len(done)} of 6 puts returned on a queue of maxsize 4"
                qc = consumer.queue("concurrent")
                got = [await qc.get() for _ in range(6)]
            assert sorted(got) == list(range(6))
            assert await qc.qsize() == 0  # (its own acknowledgements go first)


async def test_put_nowait_raises_would_block_on_a_full_queue_and_puts_nothing(
    cluster: Any,
) -> None:
    with trio.fail_after(TIMEOUT):
        async with connect(cluster) as client:
            q = client.queue("full", maxsize=2)
            await q.qsize()
            for i in range(2):
                await q.put(i)
                await q.qsize()
            with pytest.raises(trio.WouldBlock):
                await q.put_nowait(99)
            assert await q.qsize() == 2
            assert [await q.get(), await q.get()] == [0, 1]


async def test_get_nowait_raises_would_block_when_empty_and_takes_an_available_item(
    cluster: Any,
) -> None:
    with trio.fail_after(TIMEOUT):
        async with connect(cluster) as a, connect(cluster) as b:
            qa, qb = a.queue("gn"), b.queue("gn")
            with pytest.raises(trio.WouldBlock):
                await qa.get_nowait()
            await qb.put("x")
            await qb.qsize()
            assert await qa.get_nowait() == "x"
            with pytest.raises(trio.WouldBlock):
                await qa.get_nowait()
            assert queue_status(cluster, "gn")["getters"] == 0


async def test_get_batch_returns_one_to_n_items_and_waits_for_the_first(cluster: Any) -> None:
    with trio.fail_after(TIMEOUT):
        async with connect(cluster) as a, connect(cluster) as b:
            qa, qb = a.queue("gb"), b.queue("gb", prefetch=1)
            await qa.put_batch(range(5))
            assert await qb.get_batch(3) == [0, 1, 2]
            assert await qb.get_batch(10) == [3, 4]
            got: list[list[int]] = []

            async def waiter() -> None:
                got.append(await qb.get_batch(4))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(waiter)
                await trio.testing.wait_all_tasks_blocked()
                assert got == [], "get_batch returned without any item"
                await qa.put(5)
            assert got == [[5]]


async def test_qsize_counts_items_prefetched_by_another_client(cluster: Any) -> None:
    with trio.fail_after(TIMEOUT):
        async with connect(cluster) as a, connect(cluster) as b:
            qa, qb = a.queue("qs"), b.queue("qs", prefetch=16)
            await qa.put_batch(range(5))
            assert await qb.get() == 0  # takes all five, hands out one
            await qb.qsize()  # its acknowledgement is applied
            status = queue_status(cluster, "qs")
            assert (status["size"], status["leased"]) == (0, 4)
            assert await qa.qsize() == 4


async def test_items_prefetched_by_a_client_that_leaves_return_to_the_queue_in_order(
    cluster: Any,
) -> None:
    with trio.fail_after(TIMEOUT):
        async with connect(cluster) as a:
            qa = a.queue("ret")
            await qa.put_batch(range(6))
            async with connect(cluster) as b:
                qb = b.queue("ret", prefetch=4)
                assert await qb.get() == 0
            await until(lambda: queue_status(cluster, "ret")["leased"] == 0)
            assert await qa.qsize() == 5
            assert [await qa.get() for _ in range(5)] == [1, 2, 3, 4, 5]


# -- channels -----------------------------------------------------------------------------------


async def test_send_and_receive_channels_round_trip(cluster: Any) -> None:
    with trio.fail_after(TIMEOUT):
        async with connect(cluster) as a, connect(cluster) as b:
            send, receive = await channels((a.queue("ch"), "send"), (b.queue("ch"), "receive"))
            assert isinstance(send, trio.abc.SendChannel)
            assert isinstance(receive, trio.abc.ReceiveChannel)
            await send.send({"n": 1})
            assert await receive.receive() == {"n": 1}


async def test_end_of_channel_only_after_every_clone_closes_and_the_queue_drains(
    cluster: Any,
) -> None:
    with trio.fail_after(TIMEOUT):
        async with connect(cluster) as a, connect(cluster) as b:
            qa = a.queue("clones")
            send, receive = await channels((qa, "send"), (b.queue("clones"), "receive"))
            send2 = send.clone()
            await send.send(1)
            await send.aclose()
            await send2.send(2)  # the clone still counts
            await qa.qsize()
            assert queue_status(cluster, "clones")["senders"] == 1
            assert await receive.receive() == 1
            await send2.send(3)
            await send2.aclose()
            assert await receive.receive() == 2
            assert await receive.receive() == 3
            with pytest.raises(trio.EndOfChannel):
                await receive.receive()
            assert queue_status(cluster, "clones")["closed"] is True


async def test_send_endpoints_are_counted_across_clients(cluster: Any) -> None:
    with trio.fail_after(TIMEOUT):
        async with connect(cluster) as a, connect(cluster) as b, connect(cluster) as c:
            qa, qb, qc = a.queue("across"), b.queue("across"), c.queue("across")
            send_a, send_b, receive = await channels((qa, "send"), (qb, "send"), (qc, "receive"))
            await send_a.aclose()
            await qa.qsize()
            with pytest.raises(trio.WouldBlock):  # b's sender is still open: not the end
                await qc.get_nowait()
            await send_b.send("last")
            await send_b.aclose()
            assert await receive.receive() == "last"
            with pytest.raises(trio.EndOfChannel):
                await receive.receive()


async def test_waiting_receiver_gets_end_of_channel_when_the_last_sender_closes(
    cluster: Any,
) -> None:
    with trio.fail_after(TIMEOUT):
        async with connect(cluster) as a, connect(cluster) as b:
            send, receive = await channels((a.queue("eoc"), "send"), (b.queue("eoc"), "receive"))
            ended = trio.Event()

            async def receive_until_the_end() -> None:
                with pytest.raises(trio.EndOfChannel):
                    await receive.receive()
                ended.set()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(receive_until_the_end)
                await trio.testing.wait_all_tasks_blocked()
                assert queue_status(cluster, "eoc")["getters"] == 1
                assert not ended.is_set()
                await send.aclose()
                await ended.wait()


async def test_send_after_the_last_receiver_closed_raises_broken_resource_error(
    cluster: Any,
) -> None:
    with trio.fail_after(TIMEOUT):
        async with connect(cluster) as client:
            q = client.queue("broken")
            send, receive = q.open_channels()
            await receive.aclose()
            await client.status()  # the close is applied
            assert queue_status(cluster, "broken")["receivers"] == 0
            with pytest.raises(trio.BrokenResourceError):
                await send.send("nobody will read this")
            assert queue_status(cluster, "broken")["size"] == 0


async def test_put_after_the_last_sender_closed_raises_closed_resource_error(
    cluster: Any,
) -> None:
    with trio.fail_after(TIMEOUT):
        async with connect(cluster) as client:
            q = client.queue("closed")
            await q.qsize()
            send, _ = q.open_channels()
            await send.aclose()
            await q.qsize()
            with pytest.raises(trio.ClosedResourceError):
                await q.put("too late")


async def test_closed_endpoints_raise_closed_resource_error(cluster: Any) -> None:
    with trio.fail_after(TIMEOUT):
        async with connect(cluster) as client:
            q = client.queue("local-close")
            send, receive = q.open_channels()
            await send.aclose()
            await send.aclose()  # idempotent
            await receive.aclose()
            with pytest.raises(trio.ClosedResourceError):
                await send.send(1)
            with pytest.raises(trio.ClosedResourceError):
                send.clone()
            with pytest.raises(trio.ClosedResourceError):
                await receive.receive()
            with pytest.raises(trio.ClosedResourceError):
                receive.clone()


async def test_a_client_leaving_counts_as_closing_its_send_endpoints(cluster: Any) -> None:
    with trio.fail_after(TIMEOUT):
        async with connect(cluster) as consumer:
            qc = consumer.queue("leave-send")
            async with connect(cluster) as producer:
                send, receive = await channels(
                    (producer.queue("leave-send"), "send"), (qc, "receive")
                )
                await send.send("a")
                await send.send("b")
                # leaves without closing ``send``
            assert await receive.receive() == "a"
            assert await receive.receive() == "b"
            with pytest.raises(trio.EndOfChannel):
                await receive.receive()


async def test_a_client_leaving_counts_as_closing_its_receive_endpoints(cluster: Any) -> None:
    with trio.fail_after(TIMEOUT):
        async with connect(cluster) as producer:
            qp = producer.queue("leave-receive", maxsize=1)
            await qp.qsize()
            await qp.put("fills it")
            await qp.qsize()
            failed = trio.Event()

            async def blocked_put() -> None:
                with pytest.raises(trio.BrokenResourceError):
                    await qp.put("never read")
                failed.set()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(blocked_put)
                async with connect(cluster) as consumer:
                    qc = consumer.queue("leave-receive")
                    consumer_endpoints = qc.open_channels()  # its only receiver (and a sender)
                    await qc.qsize()
                    await trio.testing.wait_all_tasks_blocked()
                    assert queue_status(cluster, "leave-receive")["putters"] == 1
                    assert queue_status(cluster, "leave-receive")["receivers"] == 1
                    del consumer_endpoints  # leaves without closing them
                await failed.wait()


# -- delete ---------------------------------------------------------------------------------------


async def test_delete_makes_a_waiting_get_raise_broken_resource_error(cluster: Any) -> None:
    with trio.fail_after(TIMEOUT):
        async with connect(cluster) as a, connect(cluster) as b:
            qa, qb = a.queue("del"), b.queue("del")
            await qb.put_batch([1, 2])
            assert await qa.get_batch(2) == [1, 2]
            raised = trio.Event()

            async def waiter() -> None:
                with pytest.raises(trio.BrokenResourceError, match="deleted"):
                    await qa.get()
                raised.set()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(waiter)
                await trio.testing.wait_all_tasks_blocked()
                assert queue_status(cluster, "del")["getters"] == 1
                await qb.delete()
                await raised.wait()
            assert cluster.scheduler.state.status()["queues"] == []
            with pytest.raises(trio.BrokenResourceError):
                await qa.get_nowait()
            with pytest.raises(trio.BrokenResourceError):
                await qa.qsize()


async def test_put_after_delete_raises_broken_resource_error(cluster: Any) -> None:
    with trio.fail_after(TIMEOUT):
        async with connect(cluster) as client:
            q = client.queue("gone")
            await q.put(1)
            await q.delete()
            with pytest.raises(trio.BrokenResourceError):
                await q.put(2)


# -- variables ------------------------------------------------------------------------------------


async def test_variable_set_get_get_nowait_and_delete(cluster: Any) -> None:
    with trio.fail_after(TIMEOUT):
        async with connect(cluster) as a, connect(cluster) as b:
            va, vb = a.variable("config"), b.variable("config")
            with pytest.raises(LookupError):
                await vb.get_nowait()
            await va.set({"workers": 3})
            assert await vb.get() == {"workers": 3}
            assert await vb.get_nowait() == {"workers": 3}
            await va.set(Point(1, 2))
            assert await vb.get(timeout=5) == Point(1, 2)
            await vb.delete()
            with pytest.raises(LookupError):
                await va.get_nowait()
            await va.delete()  # deleting an unset variable is fine


async def test_variable_get_with_timeout_raises_too_slow_and_withdraws_the_read(
    cluster: Any,
) -> None:
    with trio.fail_after(TIMEOUT):
        async with connect(cluster) as a, connect(cluster) as b:
            va = a.variable("late")
            with pytest.raises(trio.TooSlowError):
                await va.get(timeout=0.05)
            await a.status()  # the withdrawal is applied
            assert cluster.scheduler.state.variables._waiters == {}
            got: list[Any] = []

            async def reader() -> None:
                got.append(await va.get())

            async with trio.open_nursery() as nursery:
                nursery.start_soon(reader)
                await trio.testing.wait_all_tasks_blocked()
                assert got == []
                await b.variable("late").set("now")
            assert got == ["now"]


# -- status ---------------------------------------------------------------------------------------


async def test_status_reports_queues_variables_and_named_clients(cluster: Any) -> None:
    with trio.fail_after(TIMEOUT):
        async with connect(cluster, name="alice") as a, connect(cluster, name="bob") as b:
            qa = a.queue("jobs", maxsize=10)
            await qa.put_batch(["x", "y", "z"])
            assert await b.queue("jobs", prefetch=1).get() == "x"
            await a.variable("v2").set(1)
            await a.variable("v1").set(2)
            await b.status()
            report = await a.status()
    (jobs,) = report["queues"]
    assert jobs["name"] == "jobs" and jobs["maxsize"] == 10
    assert jobs["size"] == 2 and jobs["leased"] == 0
    assert report["variables"] == ["v1", "v2"]
    clients = {c["name"]: c for c in report["clients"]}
    assert set(clients) == {"alice", "bob"}
    assert clients["alice"]["address"].startswith("127.0.0.1:")


# -- bad input ------------------------------------------------------------------------------------


async def test_wrong_argument_types_raise_clear_errors_on_the_client(cluster: Any) -> None:
    with trio.fail_after(TIMEOUT):
        async with connect(cluster) as client:
            with pytest.raises(TypeError, match="name"):
                client.queue(123)
            with pytest.raises(TypeError, match="maxsize"):
                client.queue("t", maxsize="3")
            with pytest.raises(ValueError, match="maxsize"):
                client.queue("t", maxsize=-1)
            with pytest.raises(ValueError, match="prefetch"):
                client.queue("t", prefetch=0)
            q = client.queue("t")
            with pytest.raises(TypeError, match="n must be an int"):
                await q.get_batch("x")
            with pytest.raises(ValueError, match="n must be >= 1"):
                await q.get_batch(0)
            with pytest.raises(TypeError):
                await q.put(threading.Lock())  # cannot be serialized
            with pytest.raises(TypeError, match="name"):
                client.variable(None)
            await q.put("still fine")
            assert await q.get() == "still fine"
            assert await q.qsize() == 0


@pytest.mark.parametrize("same_client", [False, True])
async def test_a_handle_with_a_conflicting_maxsize_is_refused_atomically(
    cluster: Any, same_client: bool
) -> None:
    """Its first put raises ValueError and stores nothing; a correct handle is never blamed."""
    with trio.fail_after(TIMEOUT):
        async with connect(cluster) as a, connect(cluster) as b:
            qa = a.queue("sized", maxsize=5)
            await qa.put("a")
            qb = (a if same_client else b).queue("sized", maxsize=3)
            send = qb.open_send_channel()  # through the refused handle: never counted
            with pytest.raises(ValueError, match="maxsize 5"):
                await qb.put("refused")
            with pytest.raises(ValueError, match="maxsize 5"):
                await send.send("refused too")
            with pytest.raises(ValueError, match="maxsize 5"):
                await qb.get()  # the handle stays refused; nothing was taken
            await qa.put("b")  # the correct handle's next call is not blamed ...
            assert await qa.qsize() == 2  # ... and keeps its item
            assert [await qa.get(), await qa.get()] == ["a", "b"]
            await trio.testing.wait_all_tasks_blocked()
            assert queue_status(cluster, "sized")["senders"] == 0
            send.close()
            await qa.put("c")  # closing the uncounted endpoint closed nothing
            assert await qa.get() == "c"


async def test_a_first_put_through_a_new_bounded_handle_waits_for_its_verdict(
    cluster: Any,
) -> None:
    """Two clients create one queue with different bounds at once: the loser stores nothing."""
    with trio.fail_after(TIMEOUT):
        async with connect(cluster) as a, connect(cluster) as b:
            qa, qb = a.queue("race", maxsize=2), b.queue("race", maxsize=4)
            outcomes = []
            for queue, item in ((qa, "from a"), (qb, "from b")):
                try:
                    await queue.put(item)
                    outcomes.append(item)
                except ValueError:
                    outcomes.append("refused")
            assert outcomes.count("refused") == 1
            assert await a.queue("race").qsize() == 1


async def test_an_oversized_item_raises_protocol_error_and_the_client_keeps_working(
    cluster: Any,
) -> None:
    with trio.fail_after(TIMEOUT):
        async with connect(cluster, max_frame_size=4096) as client:
            q = client.queue("big")
            await q.qsize()
            with pytest.raises(trioq.ProtocolError, match="max_frame_size"):
                await q.put(b"x" * 10_000)
            await q.put("small")
            assert await q.get() == "small"


async def test_an_oversized_item_does_not_leak_put_credit_of_a_bounded_queue(
    cluster: Any,
) -> None:
    with trio.fail_after(TIMEOUT):
        async with connect(cluster, max_frame_size=4096) as client:
            q = client.queue("big-bounded", maxsize=4)
            await q.qsize()
            with pytest.raises(trioq.ProtocolError):
                await q.put(b"x" * 10_000)
            with trio.fail_after(INSTANT):  # the failed put took no room
                for i in range(4):
                    await q.put(i)
                    await q.qsize()
            assert await q.qsize() == 4


async def test_a_prefetch_batch_larger_than_the_frame_limit_is_still_delivered() -> None:
    scheduler = Scheduler(max_frame_size=4096)
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            address = await nursery.start(scheduler.serve)
            register_local_token(address, scheduler.token)
            async with trioq.connect(address) as a, trioq.connect(address) as b:
                qa, qb = a.queue("large"), b.queue("large", prefetch=16)
                items = [bytes([i]) * 1500 for i in range(3)]  # each fits a frame, all three do not
                for item in items:
                    await qa.put(item)
                assert await qa.qsize() == 3
                got = [await qb.get() for _ in items]
                assert got == items
                await qa.put("producer still connected")
            nursery.cancel_scope.cancel()
