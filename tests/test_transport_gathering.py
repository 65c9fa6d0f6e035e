"""Write gathering in the transport: one-way frames leave together, urgent ones at once.

A ``FramedConnection`` over one end of ``trio.testing.memory_stream_pair``,
with a ``busy_window`` so large that every write after the first gathers.
The test's task adds one frame per scheduling round (it checkpoints once per
round, so a round is one turn of trio's run loop); a reader task on the
other end decodes the bytes and notes the round each frame arrived in.
Frames can be sent before any handshake (only the connection's own reader
waits for one), so none is done.  Every test takes the ``core`` fixture: the
connection's frame encoder comes from the compiled core, then the twin.
"""

from __future__ import annotations

import math
from types import ModuleType

import pytest
import trio
import trio.testing

from trioq._wire import transport as _transport
from trioq._wire.messages import Op
from trioq._wire.transport import _COALESCE_ROUNDS, FramedConnection

ROUNDS = 200  # rounds of the stream of one-way frames
MARK = 20  # the round whose frame is watched (urgent or not)
SOON = 10  # rounds within which an urgent frame must arrive

TIMEOUT = 10


@pytest.fixture
def transport_core(core: ModuleType, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """Connections made in the test encode frames with ``core``."""
    monkeypatch.setattr(_transport, "core", core)
    return core


async def stream_with_mark(core: ModuleType, *, urgent: bool) -> dict[int, int]:
    """Send a frame per round for ``ROUNDS`` rounds, the one of round ``MARK`` with
    ``urgent``; return the round each frame arrived in, by request id (= its round).

    Asserts the frames arrived in the order sent, each once.
    """
    stream, peer = trio.testing.memory_stream_pair()
    connection = FramedConnection(stream, busy_window=math.inf)
    decoder = core.FrameDecoder()
    now = 0  # the current round
    arrived: dict[int, int] = {}
    order: list[int] = []

    async def read() -> None:
        while data := await peer.receive_some():
            decoder.feed(data)
            for frame in decoder:
                arrived[frame.request_id] = now
                order.append(frame.request_id)

    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(connection.run_writer)
            nursery.start_soon(read)
            connection.send(Op.ACK, 0)  # the first write: nothing to gather after it
            await trio.testing.wait_all_tasks_blocked()
            assert order == [0], "a lone frame after a quiet spell was not written at once"
            for now in range(1, ROUNDS + 1):  # read() notes the round from ``now``
                connection.send(Op.ACK, now, urgent=urgent and now == MARK)
                await trio.lowlevel.checkpoint()
            connection.start_closing()  # the writer sends the rest, then the end
    assert order == list(range(ROUNDS + 1))
    return arrived


async def test_an_urgent_frame_is_written_without_waiting_for_gathering_to_end(
    transport_core: ModuleType,
) -> None:
    arrived = await stream_with_mark(transport_core, urgent=True)
    assert arrived[MARK] - MARK <= SOON, (
        f"the urgent frame of round {MARK} arrived in round {arrived[MARK]}"
    )


async def test_one_way_frames_sent_in_a_stream_wait_for_gathering(
    transport_core: ModuleType,
) -> None:
    # The baseline the urgent flag is measured against: the same frame, not
    # urgent, waits while the stream goes on (up to _COALESCE_ROUNDS rounds).
    arrived = await stream_with_mark(transport_core, urgent=False)
    assert arrived[MARK] - MARK > SOON
    assert arrived[MARK] <= _COALESCE_ROUNDS + SOON, "gathering did not end at its limit"


async def test_frames_after_an_urgent_one_are_gathered_again(
    transport_core: ModuleType,
) -> None:
    arrived = await stream_with_mark(transport_core, urgent=True)
    after = [arrived[i] for i in range(MARK + 1, ROUNDS + 1)]
    writes = len(set(after))
    assert writes <= (ROUNDS - MARK) // _COALESCE_ROUNDS + 2, (
        f"{len(after)} one-way frames after the urgent one took {writes} writes"
    )
