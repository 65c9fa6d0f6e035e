"""Queue endpoints keep trio's memory-channel contract (issue #12, items 1-4).

* A send after this client closed the queue's last receive endpoint raises
  ``trio.BrokenResourceError`` at once and puts nothing, even with credit.
* Closing an endpoint wakes the tasks waiting on that very endpoint with
  ``trio.ClosedResourceError`` (clones open or not); their items are not
  put, or go to another receiver.
* Tasks of one client waiting on one queue are served first come, first served.

Run the file with ``TRIOQ_PURE_PYTHON=1`` too: the cluster uses the core
selected at import.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
import trio
import trio.testing
from clusters import cluster, connect, queue_status

__all__ = ["cluster"]

TIMEOUT = 10


async def receive_expecting_close(receive: Any, outcome: list[BaseException]) -> None:
    """``receive.receive()``, keeping the ``ClosedResourceError`` it should raise."""
    try:
        await receive.receive()
    except trio.ClosedResourceError as exc:
        outcome.append(exc)


@pytest.mark.parametrize("maxsize", [0, 10])
async def test_send_right_after_closing_the_last_receiver_raises_broken_and_puts_nothing(
    cluster: Any, maxsize: int
) -> None:
    with trio.fail_after(TIMEOUT):
        async with connect(cluster) as client:
            queue = client.queue("q", maxsize)
            send, receive = queue.open_channels()
            await send.send("before")  # the scheduler granted credit (or knows it is unbounded)
            assert await receive.receive() == "before"
            await receive.aclose()
            with pytest.raises(trio.BrokenResourceError):
                await send.send("lost?")
            with pytest.raises(trio.BrokenResourceError):
                await queue.put("again")
            await trio.testing.wait_all_tasks_blocked()
            assert queue_status(cluster, "q")["size"] == 0


async def test_a_put_after_closing_a_receiver_while_another_client_reads_still_goes_in(
    cluster: Any,
) -> None:
    with trio.fail_after(TIMEOUT):
        async with connect(cluster) as a, connect(cluster) as b:
            reader = b.queue("q").open_receive_channel()
            await trio.testing.wait_all_tasks_blocked()
            send, receive = a.queue("q").open_channels()
            await receive.aclose()
            await send.send(1)
            await send.send(2)  # the fast path again once the close was answered
            assert [await reader.receive(), await reader.receive()] == [1, 2]


@pytest.mark.parametrize("closer", ["close", "aclose"])
@pytest.mark.parametrize("clones", [0, 1])
async def test_closing_a_receive_endpoint_wakes_its_waiting_receive_with_closed_resource_error(
    cluster: Any, closer: str, clones: int
) -> None:
    with trio.fail_after(TIMEOUT):
        async with connect(cluster) as client:
            send, receive = client.queue("q").open_channels()
            others = [receive.clone() for _ in range(clones)]
            outcome: list[BaseException] = []

            async with trio.open_nursery() as nursery:
                nursery.start_soon(receive_expecting_close, receive, outcome)
                await trio.testing.wait_all_tasks_blocked()
                if closer == "close":
                    receive.close()
                else:
                    await receive.aclose()
            assert len(outcome) == 1
            if others:
                await send.send("for the clone")
                assert await others[0].receive() == "for the clone"


async def test_the_item_a_closed_receiver_would_have_got_goes_to_another_client(
    cluster: Any,
) -> None:
    with trio.fail_after(TIMEOUT):
        async with connect(cluster) as a, connect(cluster) as b:
            receive_a = a.queue("q").open_receive_channel()
            send = b.queue("q").open_send_channel()
            receive_b = b.queue("q").open_receive_channel()
            raised = trio.Event()

            async def waiting_receive() -> None:
                with pytest.raises(trio.ClosedResourceError):
                    await receive_a.receive()
                raised.set()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(waiting_receive)
                await trio.testing.wait_all_tasks_blocked()
                receive_a.close()
                await raised.wait()
                await send.send("only one")
                assert await receive_b.receive() == "only one"
            await trio.testing.wait_all_tasks_blocked()
            assert queue_status(cluster, "q")["leased"] == 0


async def test_a_receive_closed_just_as_its_item_arrives_hands_the_item_on(
    cluster: Any,
) -> None:
    """The item is on its way to the receive when the endpoint closes: a clone gets it."""
    with trio.fail_after(TIMEOUT):
        async with connect(cluster) as client, connect(cluster) as producer:
            receive = client.queue("q").open_receive_channel()
            clone = receive.clone()
            send = producer.queue("q").open_send_channel()
            outcome: list[BaseException] = []

            async with trio.open_nursery() as nursery:
                nursery.start_soon(receive_expecting_close, receive, outcome)
                await trio.testing.wait_all_tasks_blocked()
                await send.send("in flight")
                receive.close()  # the item's answer may be in flight or arrived
            assert len(outcome) == 1
            assert await clone.receive() == "in flight"


@pytest.mark.parametrize("clones", [0, 1])
async def test_closing_a_send_endpoint_wakes_its_send_blocked_on_a_full_queue(
    cluster: Any, clones: int
) -> None:
    with trio.fail_after(TIMEOUT):
        async with connect(cluster) as client:
            queue = client.queue("q", 1)
            send, receive = queue.open_channels()
            _others = [send.clone() for _ in range(clones)]
            await send.send("fills it")
            outcome: list[BaseException] = []

            async def blocked_send() -> None:
                try:
                    await send.send("never put")
                except trio.ClosedResourceError as exc:
                    outcome.append(exc)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(blocked_send)
                await trio.testing.wait_all_tasks_blocked()
                send.close()
            assert len(outcome) == 1
            await trio.testing.wait_all_tasks_blocked()
            assert queue_status(cluster, "q")["putters"] == 0
            assert await receive.receive() == "fills it"
            if clones:
                with pytest.raises(trio.WouldBlock):
                    await queue.get_nowait()


@pytest.mark.parametrize("via", ["get", "receive"])
async def test_tasks_of_one_client_waiting_on_a_queue_are_served_in_turn(
    cluster: Any, via: str
) -> None:
    """5 consumer tasks, 10 items through ``maxsize=1``: every task gets 2."""
    with trio.fail_after(TIMEOUT):
        async with connect(cluster) as consumer, connect(cluster) as producer:
            queue = consumer.queue("q", 1)
            receive = queue.open_receive_channel()
            got: Counter[int] = Counter()
            taken = 0

            async def take(index: int) -> None:
                nonlocal taken
                while taken < 10:
                    if via == "get":
                        await queue.get()
                    else:
                        await receive.receive()
                    taken += 1
                    got[index] += 1

            async with trio.open_nursery() as nursery:
                for index in range(5):
                    nursery.start_soon(take, index)
                    await trio.testing.wait_all_tasks_blocked()
                out = producer.queue("q", 1)
                for item in range(10):
                    await out.put(item)
                await trio.testing.wait_all_tasks_blocked()
                nursery.cancel_scope.cancel()
            assert got == {index: 2 for index in range(5)}


async def test_a_cancelled_waiter_hands_its_place_to_the_next_task_in_line(
    cluster: Any,
) -> None:
    with trio.fail_after(TIMEOUT):
        async with connect(cluster) as consumer, connect(cluster) as producer:
            queue = consumer.queue("q")
            got: list[str] = []

            async def take(scope_out: list[trio.CancelScope], name: str) -> None:
                with trio.CancelScope() as scope:
                    scope_out.append(scope)
                    await queue.get()
                    got.append(name)

            first: list[trio.CancelScope] = []
            async with trio.open_nursery() as nursery:
                nursery.start_soon(take, first, "first")
                await trio.testing.wait_all_tasks_blocked()
                nursery.start_soon(take, [], "second")
                await trio.testing.wait_all_tasks_blocked()
                first[0].cancel()
                await trio.testing.wait_all_tasks_blocked()
                await producer.queue("q").put("x")
            assert got == ["second"]
            await trio.testing.wait_all_tasks_blocked()
            assert queue_status(cluster, "q")["size"] == 0


@pytest.mark.parametrize("end", ["broken", "closed"])
async def test_a_finished_queue_says_how_to_use_its_name_afresh(cluster: Any, end: str) -> None:
    with trio.fail_after(TIMEOUT):
        async with connect(cluster) as client:
            queue = client.queue("q")
            send, receive = queue.open_channels()
            await (receive if end == "broken" else send).aclose()
            expected = trio.BrokenResourceError if end == "broken" else trio.ClosedResourceError
            with pytest.raises(expected, match=r"delete the queue \(queue.delete\(\)\)"):
                await queue.put_nowait("x")
            await queue.delete()
            await client.queue("q").put("afresh")
            assert await client.queue("q").get() == "afresh"


async def test_a_channel_handle_with_another_maxlen_stores_nothing_and_blames_nobody(
    cluster: Any,
) -> None:
    with trio.fail_after(TIMEOUT):
        async with connect(cluster) as a, connect(cluster) as b:
            good = a.channel("sized", maxlen=2)
            await good.append("a")
            bad = b.channel("sized", maxlen=5)
            with pytest.raises(ValueError, match="exists with maxlen 2, not 5"):
                await bad.append("refused")  # waits for the verdict: nothing is sent
            with pytest.raises(ValueError, match="exists with maxlen 2, not 5"):
                await bad.extend(["refused", "too"])
            await good.append("b")  # never blamed
            await good.flush()
            assert await good.snapshot() == ["a", "b"]


async def test_a_channel_subscription_reports_its_backlog_in_trios_shape(cluster: Any) -> None:
    with trio.fail_after(TIMEOUT):
        async with connect(cluster) as client:
            channel = client.channel("c", maxlen=10)
            await channel.extend(range(6))
            await channel.flush()
            subscription = channel.subscribe()
            stats = await subscription.statistics()
            assert (stats.current_buffer_used, stats.max_buffer_size) == (6, 10)
            assert (stats.open_send_channels, stats.open_receive_channels) == (1, 1)
            for _ in range(6):
                await subscription.receive()
            stats = await subscription.statistics()
            assert (stats.current_buffer_used, stats.peak_buffer_used) == (0, 6)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(subscription.receive)
                await trio.testing.wait_all_tasks_blocked()
                assert (await subscription.statistics()).tasks_waiting_receive == 1
                nursery.cancel_scope.cancel()
            await channel.stop()
            stats = await subscription.statistics()
            assert stats.open_send_channels == 0
            await subscription.aclose()
            unbounded = client.channel("u").subscribe()
            assert (await unbounded.statistics()).max_buffer_size == float("inf")
