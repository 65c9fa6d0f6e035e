"""``Channel.delete`` and the length a ``Channel`` shows in its repr.

Two layers, as in ``test_channel``:

* ``SchedulerState`` (sans-IO, ``validate()`` after every step): a delete
  fails the channel's parked reads with "BrokenResourceError", forgets its
  elements (and the futures only they kept), is idempotent, and leaves the
  name unknown (every request on it "BrokenResourceError") until an open
  creates it afresh, numbered from 0.  The answers to an open and to an
  append carry the channel's length.
* End to end in one process (``trioq.open_cluster``): a subscriber waiting
  in another client raises ``trio.BrokenResourceError``, and keeps raising
  it; an existing handle's appends are refused; a new handle starts
  afresh; ``python -m trioq status`` lists the channel, then no longer
  does; ``repr`` shows the count the scheduler last reported.

Every wait is bounded by ``trio.fail_after``; nothing synchronises by
sleeping (``wait_all_tasks_blocked`` says the reader is parked).
"""

from __future__ import annotations

import itertools
from typing import Any

import procs
import pytest
import trio
import trio.testing
from state_answers import answers, fail_of, reply_to

import trioq
from trioq.__main__ import format_status
from trioq._scheduler.state import SchedulerState
from trioq._wire.channel_messages import (
    ChannelAppend,
    ChannelAppended,
    ChannelDelete,
    ChannelInfo,
    ChannelItems,
    ChannelOpen,
    ChannelRead,
    ChannelStop,
)
from trioq._wire.messages import Message, Ok
from trioq._wire.serialize import Reference, Serializer
from trioq._wire.task_messages import Submit, TaskAssign, TaskDone, WorkerHello, WorkerReady

WAIT = 10.0  # seconds any one step may take
SUBMITTER, ALICE, BOB, WORKER = 1, 2, 3, 9


class Board:
    """A ``SchedulerState`` with connections, fresh request ids, ``validate()`` after each step."""

    def __init__(self) -> None:
        self.state = SchedulerState()
        self._rids = itertools.count(1)
        for conn in (SUBMITTER, ALICE, BOB, WORKER):
            self.state.connect(conn, f"conn-{conn}")
        assert isinstance(self.ok(WORKER, WorkerHello("w", 1, [])), Ok)

    def send(self, conn: int, message: Message) -> tuple[int, list[Any]]:
        rid = next(self._rids)
        out = self.state.handle(conn, rid, message)
        self.state.validate()
        return rid, out

    def ok(self, conn: int, message: Message) -> Message:
        rid, out = self.send(conn, message)
        return reply_to(out, conn, rid)

    def finished_task(self, key: str) -> None:
        assert isinstance(self.ok(SUBMITTER, Submit(key, b"payload", 0, None, 0)), Ok)
        out = self.state.handle(WORKER, 0, WorkerReady(1))
        assert [n.message.key for n in out if isinstance(n.message, TaskAssign)] == [key]
        self.state.handle(WORKER, 0, TaskDone(key, True, b"result"))
        self.state.validate()

    def channels(self) -> list[str]:
        return [c["name"] for c in self.state.status()["channels"]]


def element(tag: Any) -> bytes:
    return Serializer().dumps_item(tag)


def test_open_and_append_answers_carry_the_channels_length() -> None:
    b = Board()
    assert b.ok(ALICE, ChannelOpen("c", 2)) == ChannelInfo(2, False, 0)
    assert b.ok(ALICE, ChannelAppend("c", [element(0)])) == ChannelAppended(1, 1)
    assert b.ok(BOB, ChannelAppend("c", [element(1), element(2)])) == ChannelAppended(2, 3)
    assert b.ok(BOB, ChannelOpen("c", 0)) == ChannelInfo(2, False, 2)  # trimmed to maxlen


def test_delete_fails_parked_reads_and_every_later_request_on_the_name() -> None:
    b = Board()
    b.ok(ALICE, ChannelOpen("c", 0))
    b.ok(ALICE, ChannelAppend("c", [element(0)]))
    alice_read, out = b.send(ALICE, ChannelRead("c", 1, 10, True))
    bob_read, out = b.send(BOB, ChannelRead("c", 1, 10, True))
    assert out == []
    rid, out = b.send(BOB, ChannelDelete("c"))
    assert reply_to(out, BOB, rid) == Ok()
    for conn, read in ((ALICE, alice_read), (BOB, bob_read)):
        failure = fail_of(out, conn, read)
        assert (failure.kind, failure.text) == ("BrokenResourceError", "channel 'c' was deleted")
    assert b.channels() == []
    for message in [
        ChannelAppend("c", [element(1)]),
        ChannelRead("c", 0, 1, False),
        ChannelRead("c", 0, 1, True),
        ChannelStop("c"),
    ]:
        rid, out = b.send(ALICE, message)
        failure = fail_of(out, ALICE, rid)
        assert (failure.kind, failure.text) == (
            "BrokenResourceError",
            "channel 'c' does not exist (it was deleted)",
        )


def test_delete_is_idempotent_and_an_open_starts_the_name_afresh() -> None:
    b = Board()
    b.ok(ALICE, ChannelOpen("c", 3))
    b.ok(ALICE, ChannelAppend("c", [element(0), element(1)]))
    b.ok(ALICE, ChannelStop("c"))
    assert b.ok(ALICE, ChannelDelete("c")) == Ok()
    assert b.ok(BOB, ChannelDelete("c")) == Ok()  # gone already: no error
    assert b.ok(BOB, ChannelDelete("never")) == Ok()
    assert b.ok(BOB, ChannelOpen("c", 0)) == ChannelInfo(0, False, 0)  # new bound, not stopped
    assert b.ok(BOB, ChannelAppend("c", [element("new")])) == ChannelAppended(1, 1)
    read = b.ok(BOB, ChannelRead("c", 0, 10, False))
    assert read == ChannelItems([element("new")], 0, 1, False)


def test_delete_releases_the_futures_only_its_elements_kept() -> None:
    b = Board()
    b.finished_task("k")
    b.ok(ALICE, ChannelOpen("c", 0))
    b.ok(ALICE, ChannelAppend("c", [Serializer().dumps_item([Reference("k")])]))
    b.state.disconnect(SUBMITTER)  # the submitter let go: the element keeps "k"
    assert "k" in b.state.tasks._tasks
    rid, out = b.send(ALICE, ChannelDelete("c"))
    assert answers(out, ALICE, rid)
    assert "k" not in b.state.tasks._tasks


# -- end to end -------------------------------------------------------------------------------


@pytest.fixture
async def cluster() -> Any:
    async with trioq.open_cluster() as cluster:
        yield cluster
        cluster.scheduler.state.validate()


async def test_delete_breaks_a_waiting_subscriber_in_another_client_for_good(
    cluster: Any,
) -> None:
    with trio.fail_after(WAIT):
        async with trioq.connect(cluster.address) as a, trioq.connect(cluster.address) as b:
            chan_a = a.channel("news")
            await chan_a.append("first")
            await chan_a.flush()
            subscription = b.channel("news").subscribe()
            assert await subscription.receive() == "first"
            raised = trio.Event()

            async def wait_for_more() -> None:
                with pytest.raises(trio.BrokenResourceError, match="'news' was deleted"):
                    await subscription.receive()
                raised.set()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(wait_for_more)
                await trio.testing.wait_all_tasks_blocked()
                assert cluster.scheduler.state.status()["channels"][0]["readers"] == 1
                await chan_a.delete()
                await raised.wait()
            fresh = a.channel("news")  # the name starts afresh ...
            await fresh.append("second")
            await fresh.flush()
            with pytest.raises(trio.BrokenResourceError, match="deleted"):
                await subscription.receive()  # ... but the broken subscription stays broken
            assert [x async for x in _until_stopped(b.channel("news"), fresh)] == ["second"]


async def _until_stopped(reader: trioq.Channel, writer: trioq.Channel) -> Any:
    await writer.stop()
    async for element in reader:
        yield element


async def test_appends_through_a_handle_on_a_deleted_channel_are_refused(cluster: Any) -> None:
    with trio.fail_after(WAIT):
        async with trioq.connect(cluster.address) as client:
            chan = client.channel("gone")
            await chan.append(1)
            await chan.delete()
            await chan.append(2)  # refused by the scheduler: raised at the next call
            with pytest.raises(trio.BrokenResourceError, match="does not exist"):
                await chan.flush()
            with pytest.raises(trio.BrokenResourceError, match="does not exist"):
                await chan.snapshot()
            await chan.delete()  # idempotent
            assert cluster.scheduler.state.status()["channels"] == []


async def test_status_lists_a_channel_until_it_is_deleted(cluster: Any) -> None:
    env = procs.client_env(cluster.token)
    command = ["-m", "trioq", "status", cluster.address]
    with trio.fail_after(WAIT * 3):
        async with trioq.connect(cluster.address) as client:
            chan = client.channel("watched", maxlen=5)
            await chan.extend(["a", "b"])
            await chan.flush()
            listed = await procs.run_python(command, env=env)
            assert listed.returncode == 0, listed.stderr
            assert "watched" in listed.stdout.split("channels:")[1].split("clients:")[0]
            await chan.delete()
            after = await procs.run_python([*command, "--json"], env=env)
            assert after.returncode == 0, after.stderr
            assert '"channels": []' in after.stdout
            assert "watched" not in format_status(await client.status())


async def test_repr_shows_the_length_last_reported_to_the_handle(cluster: Any) -> None:
    with trio.fail_after(WAIT):
        async with trioq.connect(cluster.address) as a, trioq.connect(cluster.address) as b:
            mine = a.channel("counted", maxlen=3)
            assert repr(mine) == "<trioq.Channel 'counted' maxlen=3 len=?>"  # not answered yet
            await mine.flush()
            assert repr(mine) == "<trioq.Channel 'counted' maxlen=3 len=0>"
            await mine.extend([1, 2])
            await mine.flush()
            assert repr(mine) == "<trioq.Channel 'counted' maxlen=3 len=2>"
            theirs = b.channel("counted")
            await theirs.extend([3, 4])  # trims to maxlen: 3 retained
            await theirs.flush()
            assert repr(theirs) == "<trioq.Channel 'counted' maxlen=3 len=3>"
            assert repr(mine) == "<trioq.Channel 'counted' maxlen=3 len=2>"  # last seen
            assert await mine.snapshot() == [2, 3, 4]
            assert repr(mine) == "<trioq.Channel 'counted' maxlen=3 len=3>"
            await mine.delete()
            assert repr(mine) == "<trioq.Channel 'counted' maxlen=3 len=0>"
