"""What one client's call did by the time it returned is seen by every other client's later calls.

Issue #12 item 5.  A call may return before its frames reach the scheduler
(opening an endpoint, a submit); the scheduler holds a request whose answer
would be final (the last endpoint of a kind closes, a reference names an
unknown task) behind a barrier until every other connection's earlier
frames are in.  Each case repeats: before the barrier, about 1 run in 3
(endpoints) or 1 in 5 (references) failed.

Run the file with ``TRIOQ_PURE_PYTHON=1`` too: the cluster uses the core
selected at import.
"""

from __future__ import annotations

import pytest
import trio
import trio.testing

import trioq

TIMEOUT = 20
TRIALS = 30


def double(x: int) -> int:
    return 2 * x


async def test_a_receiver_opened_by_another_client_counts_before_a_later_close() -> None:
    with trio.fail_after(TIMEOUT):
        async with (
            trioq.open_cluster() as cluster,
            trioq.connect(cluster.address) as a,
            trioq.connect(cluster.address) as b,
        ):
            for trial in range(TRIALS):
                name = f"q{trial}"
                send_a, receive_a = a.queue(name).open_channels()
                await a.queue(name).qsize()  # A's endpoints are in
                receive_b = b.queue(name).open_receive_channel()  # returns at once
                receive_a.close()
                await send_a.send(trial)  # B's receiver is open: not BrokenResourceError
                assert await receive_b.receive() == trial
            cluster.scheduler.state.validate()


async def test_a_sender_opened_by_another_client_keeps_the_stream_open_after_a_later_close() -> (
    None
):
    with trio.fail_after(TIMEOUT):
        async with (
            trioq.open_cluster() as cluster,
            trioq.connect(cluster.address) as a,
            trioq.connect(cluster.address) as b,
        ):
            for trial in range(TRIALS):
                name = f"q{trial}"
                send_a, receive_a = a.queue(name).open_channels()
                await a.queue(name).qsize()
                send_b = b.queue(name).open_send_channel()
                await send_a.aclose()
                await send_b.send(trial)  # not ClosedResourceError: B's sender was open
                assert await receive_a.receive() == trial
                await send_b.aclose()
                with pytest.raises(trio.EndOfChannel):
                    await receive_a.receive()


@pytest.mark.parametrize("where", ["variable", "queue", "channel"])
async def test_a_future_just_submitted_elsewhere_is_accepted_in_a_value_at_once(
    where: str,
) -> None:
    with trio.fail_after(TIMEOUT):
        async with (
            trioq.open_cluster(workers=1) as cluster,
            trioq.connect(cluster.address) as a,
            trioq.connect(cluster.address) as b,
        ):
            for trial in range(TRIALS):
                future = await b.submit(double, trial)
                if where == "variable":
                    await a.variable(f"v{trial}").set(future)
                    stored = await a.variable(f"v{trial}").get()
                elif where == "queue":
                    queue = a.queue(f"q{trial}")
                    await queue.put_nowait(future)  # asks the scheduler: the refusal is here
                    stored = await queue.get()
                else:
                    channel = a.channel(f"c{trial}")
                    await channel.append(future)
                    subscription = channel.subscribe()
                    stored = await subscription.receive()
                    await subscription.aclose()
                assert await stored == 2 * trial


async def test_a_reference_to_a_released_future_is_still_refused_after_the_barrier() -> None:
    with trio.fail_after(TIMEOUT):
        async with (
            trioq.open_cluster(workers=1) as cluster,
            trioq.connect(cluster.address) as a,
            trioq.connect(cluster.address) as b,
        ):
            future = await b.submit(double, 1)
            assert await future == 2
            await future.release()
            await b.queue("sync").qsize()  # the release is in (a later call of B answered)
            with pytest.raises(LookupError, match="never submitted, or released"):
                await a.variable("v").set(future)
            await a.variable("v").set(3)  # the connection goes on
            assert await a.variable("v").get() == 3


async def test_a_client_leaving_with_the_last_receiver_does_not_beat_another_clients_open() -> None:
    with trio.fail_after(TIMEOUT):
        async with (
            trioq.open_cluster() as cluster,
            trioq.connect(cluster.address) as b,
        ):
            for trial in range(10):
                name = f"q{trial}"
                async with trioq.connect(cluster.address) as a:
                    a.queue(name).open_receive_channel()
                    await a.queue(name).qsize()
                    send_b, receive_b = b.queue(name).open_channels()
                # A left (its receiver counted closed) after B opened one.
                await send_b.send(trial)
                assert await receive_b.receive() == trial
