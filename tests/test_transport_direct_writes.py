"""Direct writes in the transport: an urgent frame after a quiet spell is written by ``send``.

A ``FramedConnection`` over our end of a loopback TCP connection (a
``trio.SocketStream``); the peer's end is a plain non-blocking socket that the
test reads itself.  Unless a test starts one, no writer task runs, so
whatever the peer receives was written by ``send`` itself.  Reading what is
there *now* never waits (``received``); waiting for frames that must come
blocks the trio thread for a bounded real time (``frames_at``), which is safe
because no other task has anything to do, and works under a ``MockClock``
whose time only moves when the test jumps it.  Tests where the writer runs
read the peer through trio instead.

The ``wake=False`` tests use a memory stream (no socket, so no direct
write), as the gathering tests do.  Every connection test takes the ``core``
fixture: frames are encoded and decoded with the compiled core, then the twin.

The last tests check that the per-thread reused packers of ``encode_message``
and ``Serializer.dumps`` give every thread the bytes a fresh packer gives,
with threads switching as often as the interpreter allows.
"""

from __future__ import annotations

import math
import os
import pathlib
import select
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import ModuleType
from typing import Any

import msgpack
import msgpack.fallback
import pytest
import trio
import trio.testing

import trioq
from trioq._wire import transport as _transport
from trioq._wire.messages import Op
from trioq._wire.serialize import Reference, Serializer, references_of
from trioq._wire.transport import _COALESCE_ROUNDS, _DIRECT_QUIET, FramedConnection

TIMEOUT = 10  # real seconds: bound on waiting for bytes that must come
SMALL_BUFFER = 8 * 1024  # socket buffers for the partial-write tests
BIG = bytes(range(256)) * 4096  # a 1 MiB payload: far more than SMALL_BUFFER holds
BIG_FRAMES = 4 * len(BIG)  # the connection's max_frame_size when BIG is sent


@pytest.fixture
def transport_core(core: ModuleType, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """Connections made in the test encode frames with ``core``."""
    monkeypatch.setattr(_transport, "core", core)
    return core


@contextmanager
def tcp_pair(buffer_size: int | None = None) -> Iterator[tuple[trio.SocketStream, socket.socket]]:
    """A connected loopback TCP pair: ours as a ``trio.SocketStream``, the peer's
    as a plain non-blocking socket.

    ``buffer_size``: our send buffer and the peer's receive buffer, so a large
    write is taken only in part while the peer does not read.
    """
    with socket.create_server(("127.0.0.1", 0)) as listener:
        peer = socket.socket()
        if buffer_size is not None:
            peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, buffer_size)
        peer.connect(listener.getsockname())
        ours, _ = listener.accept()
    if buffer_size is not None:
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, buffer_size)
    peer.setblocking(False)
    stream = trio.SocketStream(trio.socket.from_stdlib_socket(ours))
    try:
        yield stream, peer
    finally:
        stream.socket.close()
        peer.close()


def received(sock: socket.socket) -> bytes:
    """Every byte readable at ``sock`` right now (never waits)."""
    chunks = []
    while True:
        try:
            chunk = sock.recv(1 << 20)
        except BlockingIOError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def frames_at(peer: socket.socket, decoder: Any, count: int) -> list[Any]:
    """The next ``count`` frames at ``peer``, waiting (real time, blocking) up to TIMEOUT.

    Then nothing more may be readable.
    """
    frames: list[Any] = []
    deadline = time.monotonic() + TIMEOUT
    while len(frames) < count:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([peer], [], [], left)[0]:
            raise AssertionError(f"{count} frames expected at the peer, {len(frames)} came")
        decoder.feed(received(peer))
        frames.extend(decoder)
    assert len(frames) == count and decoder.at_boundary(), "more came than was sent"
    assert received(peer) == b"", "more came than was sent"
    return frames


def wire(core: ModuleType, op: Op, request_id: int, payload: bytes = b"", **limit: int) -> bytes:
    """The bytes of one frame, as the connection's encoder writes them."""
    return bytes(core.encode_frame(int(op), request_id, payload, 0, **limit))


def ids(frames: list[Any]) -> list[int]:
    return [frame.request_id for frame in frames]


# -- what send writes itself -----------------------------------------------------------------


async def test_an_urgent_frame_is_written_by_send_itself_with_no_writer_running(
    transport_core: ModuleType,
) -> None:
    with tcp_pair() as (stream, peer):
        connection = FramedConnection(stream)
        connection.send(Op.VARIABLE_GET, 1, b"urgent", urgent=True)
        assert connection.buffered == 0
        [frame] = frames_at(peer, transport_core.FrameDecoder(), 1)
        assert (frame.op, frame.request_id, frame.payload) == (Op.VARIABLE_GET, 1, b"urgent")


async def test_a_frame_that_is_not_urgent_stays_buffered_for_the_writer(
    transport_core: ModuleType,
) -> None:
    with tcp_pair() as (stream, peer):
        connection = FramedConnection(stream)
        connection.send(Op.ACK, 1, b"one-way")
        frame = wire(transport_core, Op.ACK, 1, b"one-way")
        assert connection.buffered == len(frame)
        with pytest.raises(BlockingIOError):
            peer.recv(1024)


async def test_an_urgent_frame_within_the_quiet_spell_waits_for_the_next_direct_write(
    transport_core: ModuleType, mock_clock: trio.testing.MockClock
) -> None:
    # Time moves only when the test jumps the clock.
    with tcp_pair() as (stream, peer):
        connection = FramedConnection(stream)
        decoder = transport_core.FrameDecoder()
        connection.send(Op.VARIABLE_GET, 1, urgent=True)
        assert ids(frames_at(peer, decoder, 1)) == [1]
        connection.send(Op.VARIABLE_GET, 2, urgent=True)  # no time has passed: not written
        assert connection.buffered > 0
        assert received(peer) == b""
        mock_clock.jump(_DIRECT_QUIET / 2)  # the quiet spell counts from the last write
        connection.send(Op.VARIABLE_GET, 3, urgent=True)
        assert received(peer) == b""
        mock_clock.jump(1)
        connection.send(Op.VARIABLE_GET, 4, urgent=True)  # takes the frames before it along
        assert connection.buffered == 0
        assert ids(frames_at(peer, decoder, 3)) == [2, 3, 4]


# -- the writer and direct writes take turns ----------------------------------------------


async def read_frames(peer: socket.socket, decoder: Any, count: int) -> list[Any]:
    """The next ``count`` frames at ``peer``, read through trio (other tasks run meanwhile)."""
    sock = trio.socket.from_stdlib_socket(peer)
    frames: list[Any] = []
    while len(frames) < count:
        data = await sock.recv(1 << 20)
        assert data, f"the stream ended after {len(frames)} of {count} frames"
        decoder.feed(data)
        frames.extend(decoder)
    return frames


async def test_what_a_partial_direct_write_leaves_goes_first_and_every_frame_arrives_once(
    transport_core: ModuleType,
) -> None:
    decoder = transport_core.FrameDecoder(BIG_FRAMES)
    with tcp_pair(SMALL_BUFFER) as (stream, peer):
        connection = FramedConnection(stream, max_frame_size=BIG_FRAMES)
        connection.send(Op.QUEUE_PUT, 1, BIG, urgent=True)  # the peer does not read yet
        size = len(wire(transport_core, Op.QUEUE_PUT, 1, BIG, max_frame_size=BIG_FRAMES))
        leftover = len(connection._unsent)
        assert 0 < leftover < size, "the direct write was not partial"
        assert connection.buffered == leftover  # the leftover still counts as waiting
        connection.send(Op.ACK, 2, b"one-way")
        await trio.sleep(100 * _DIRECT_QUIET)  # quiet again, but the leftover must go first
        connection.send(Op.VARIABLE_GET, 3, b"urgent", urgent=True)
        after = [wire(transport_core, Op.ACK, 2, b"one-way")]
        after.append(wire(transport_core, Op.VARIABLE_GET, 3, b"urgent"))
        assert connection.buffered == leftover + sum(map(len, after)), "not left for the writer"
        with trio.fail_after(TIMEOUT):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(connection.run_writer)
                frames = await read_frames(peer, decoder, 3)
                connection.start_closing()  # the writer ends the stream after the rest
            assert await trio.socket.from_stdlib_socket(peer).recv(1024) == b""
    assert [(frame.request_id, frame.payload) for frame in frames] == [
        (1, BIG),
        (2, b"one-way"),
        (3, b"urgent"),
    ]
    assert decoder.at_boundary()


class Delegating(trio.abc.HalfCloseableStream):
    """A stream that passes everything to ``stream``; subclasses change ``send_all``."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self._stream = stream

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._stream.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        await self._stream.send_eof()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        return await self._stream.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self._stream.aclose()


class HeldWrites(Delegating):
    """The writer's stream in place of ours: each ``send_all`` writes the first half
    of its data, then waits for ``resume`` before the rest."""

    def __init__(self, stream: trio.SocketStream) -> None:
        super().__init__(stream)
        self.halfway = trio.Event()
        self.resume = trio.Event()

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        half = len(data) // 2
        await self._stream.send_all(data[:half])
        self.halfway.set()
        await self.resume.wait()
        await self._stream.send_all(data[half:])


async def test_an_urgent_frame_sent_while_the_writer_is_mid_write_is_left_to_the_writer(
    transport_core: ModuleType,
) -> None:
    decoder = transport_core.FrameDecoder()
    with tcp_pair() as (stream, peer):
        connection = FramedConnection(stream)  # direct writes go to the socket of ``stream``
        held = HeldWrites(stream)
        connection.stream = held
        connection.send(Op.ACK, 1, bytes(range(256)) * 8)
        with trio.fail_after(TIMEOUT):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(connection.run_writer)
                await held.halfway.wait()  # the socket has room, and no write ended yet
                connection.send(Op.VARIABLE_GET, 2, b"urgent", urgent=True)
                frame = wire(transport_core, Op.VARIABLE_GET, 2, b"urgent")
                assert connection.buffered == len(frame), "written in the middle of a write"
                held.resume.set()
                frames = await read_frames(peer, decoder, 2)
                connection.start_closing()
    assert [(frame.request_id, frame.payload) for frame in frames] == [
        (1, bytes(range(256)) * 8),
        (2, b"urgent"),
    ]
    assert decoder.at_boundary()


async def test_a_socket_closed_under_the_connection_gets_no_direct_write_on_a_reused_descriptor(
    transport_core: ModuleType,
) -> None:
    with tcp_pair() as (stream, _peer):
        connection = FramedConnection(stream)
        fd = stream.socket.fileno()
        await trio.aclose_forcefully(stream)  # the connection is not told
        victim, victim_peer = socket.socketpair()  # likely to get the number
        victim.setblocking(False)
        victim_peer.setblocking(False)
        extra = None
        if fd not in (victim.fileno(), victim_peer.fileno()):
            extra = os.dup2(victim.fileno(), fd)  # or make sure something has it
        try:
            connection.send(Op.VARIABLE_GET, 1, b"stray", urgent=True)  # raises nothing
            assert received(victim) + received(victim_peer) == b"", "written to a stranger"
            frame = wire(transport_core, Op.VARIABLE_GET, 1, b"stray")
            assert connection.buffered == len(frame)  # left for the writer
            with trio.fail_after(TIMEOUT):
                await connection.run_writer()  # it meets the closed stream
            assert received(victim) + received(victim_peer) == b""
        finally:
            if extra is not None:
                os.close(extra)
            victim.close()
            victim_peer.close()
    assert connection.is_broken
    with pytest.raises(trio.BrokenResourceError) as raised:
        connection.send(Op.VARIABLE_GET, 2, urgent=True)
    assert isinstance(raised.value.__cause__, trio.ClosedResourceError)


# -- frames that do not wake the writer -----------------------------------------------------


async def written_order(core: ModuleType, steps: Callable[[FramedConnection], None]) -> list[int]:
    """Request ids that reached the peer of a memory stream after ``steps`` ran
    with the writer waiting, and every task blocked again."""
    stream, peer = trio.testing.memory_stream_pair()
    connection = FramedConnection(stream, busy_window=math.inf)
    decoder = core.FrameDecoder()
    order: list[int] = []

    async def read() -> None:
        while data := await peer.receive_some():
            decoder.feed(data)
            order.extend(frame.request_id for frame in decoder)

    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(connection.run_writer)
            nursery.start_soon(read)
            await trio.testing.wait_all_tasks_blocked()
            steps(connection)
            await trio.testing.wait_all_tasks_blocked()
            seen = list(order)
            nursery.cancel_scope.cancel()
    return seen


async def test_a_frame_sent_with_wake_false_waits_until_a_later_frame_wakes_the_writer(
    transport_core: ModuleType,
) -> None:
    def first(connection: FramedConnection) -> None:
        connection.send(Op.QUEUE_PUT, 1, b"gathered", wake=False)
        assert connection.buffered > 0

    assert await written_order(transport_core, first) == []

    def both(connection: FramedConnection) -> None:
        first(connection)
        connection.send(Op.ACK, 2)

    assert await written_order(transport_core, both) == [1, 2]


async def test_an_urgent_frame_with_wake_false_still_wakes_the_writer(
    transport_core: ModuleType,
) -> None:
    # A memory stream has no socket: the writer must send it.
    def urgent(connection: FramedConnection) -> None:
        connection.send(Op.VARIABLE_GET, 1, urgent=True, wake=False)

    assert await written_order(transport_core, urgent) == [1]


# -- the reused packers across threads ------------------------------------------------------

ENCODE_IN_THREADS = """
import sys
import threading

import msgpack
import msgpack.fallback

msgpack.Packer = msgpack.fallback.Packer  # before trioq builds a packer
sys.setswitchinterval(1e-6)  # threads switch often, in the middle of a pack

from trioq._wire.messages import Ack, QueuePut, VariableSet, encode_message

rounds = int(sys.argv[1])
puts = [QueuePut(f"q{i}", [bytes([i % 256]) * (i % 40)], i % 2 == 0, True) for i in range(rounds)]
others = [Ack(list(range(i % 30))) if i % 2 else VariableSet("v" * (i % 20), b"\\xff" * i)
          for i in range(rounds)]
jobs = [puts, others]
barrier = threading.Barrier(len(jobs))
results = [None] * len(jobs)

def run(index):
    barrier.wait()
    results[index] = [encode_message(message) for message in jobs[index]]

threads = [threading.Thread(target=run, args=(index,)) for index in range(len(jobs))]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
print(sum(
    data != msgpack.packb(message.to_list(), use_bin_type=True)
    for messages, datas in zip(jobs, results)
    for message, data in zip(messages, datas)
))
"""


def test_encode_message_in_two_threads_gives_what_a_fresh_packer_gives() -> None:
    # In a fresh process, so the only packers are the pure-Python ones made by
    # the threads: a thread switch mid-pack would mix two threads' bytes in a
    # shared one.  (The compiled packer packs a message without letting
    # another thread run.)
    root = pathlib.Path(trioq.__file__).parents[1]
    command = [sys.executable, "-c", ENCODE_IN_THREADS, "5000"]
    out = subprocess.run(command, cwd=root, capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "0", "messages packed in threads differ from a fresh packer's"


@pytest.fixture(params=["compiled", "fallback"])
def packer_rounds(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> int:
    """Serializers made in the test pack with msgpack's compiled or pure-Python
    Packer; how many values each thread packs with it (about 0.2 s of work).

    Threads switch often meanwhile.
    """
    if request.param == "fallback":
        monkeypatch.setattr(msgpack, "Packer", msgpack.fallback.Packer)
    elif msgpack.Packer is msgpack.fallback.Packer:
        pytest.skip("msgpack was installed without its extension")
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    request.addfinalizer(lambda: sys.setswitchinterval(interval))
    return 50_000 if request.param == "compiled" else 5_000


def in_threads(*jobs: Callable[[], list[bytes]]) -> list[list[bytes]]:
    """Run each job in its own thread, all started together; their results."""
    barrier = threading.Barrier(len(jobs))
    results: list[list[bytes] | BaseException | None] = [None] * len(jobs)

    def run(index: int) -> None:
        try:
            barrier.wait(TIMEOUT)
            results[index] = jobs[index]()
        except BaseException as exc:  # reported by the test's thread
            results[index] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(jobs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT)
    assert not any(thread.is_alive() for thread in threads), "a thread did not finish"
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return [result for result in results if isinstance(result, list)]


def a_value(i: int) -> Any:
    return {"n": i, "text": "x" * (i % 50), "nested": [i, (i, "tuple")]}  # a tuple: nested dumps


def an_item(i: int) -> Any:
    return [i, b"\x00" * (i % 64), (str(i),), {"deep": [[i] * (i % 5)]}]


def test_a_serializer_shared_by_two_threads_gives_what_a_fresh_one_gives(
    packer_rounds: int,
) -> None:
    shared, fresh = Serializer(), Serializer()
    results = in_threads(
        lambda: [shared.dumps(a_value(i)) for i in range(packer_rounds)],
        lambda: [shared.dumps_item(an_item(i)) for i in range(packer_rounds)],
    )
    assert results[0] == [fresh.dumps(a_value(i)) for i in range(packer_rounds)]
    assert results[1] == [fresh.dumps_item(an_item(i)) for i in range(packer_rounds)]


def test_references_collected_by_dumps_item_stay_with_their_own_thread(
    packer_rounds: int,
) -> None:
    # Each thread's envelope lists exactly its own item's references, never the
    # other thread's (the keys being collected are kept per thread).
    rounds = min(packer_rounds, 20_000)
    shared, fresh = Serializer(), Serializer()

    def item(side: str, i: int) -> Any:
        return [i, Reference(f"{side}-{i}"), (i, "t")]  # a tuple: a nested dumps

    results = in_threads(
        lambda: [shared.dumps_item(item("a", i)) for i in range(rounds)],
        lambda: [shared.dumps_item(item("b", i)) for i in range(rounds)],
    )
    for side, datas in zip("ab", results, strict=True):
        assert [references_of(data) for data in datas] == [[f"{side}-{i}"] for i in range(rounds)]
        assert datas == [fresh.dumps_item(item(side, i)) for i in range(rounds)]


class FirstWriteRound(Delegating):
    """Our stream, noting the round (set by the test) of the writer's first ``send_all``."""

    def __init__(self, stream: trio.SocketStream) -> None:
        super().__init__(stream)
        self.round = 0
        self.first: int | None = None

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self.first is None:
            self.first = self.round
        await self._stream.send_all(data)


async def test_the_rest_of_a_partly_written_urgent_frame_is_not_held_back_by_gathering(
    transport_core: ModuleType, mock_clock: trio.testing.MockClock
) -> None:
    # Time stands still, so the writer would gather (busy) if it took the rest
    # of the urgent frame for one-way data; a stream of one-way frames follows.
    with tcp_pair(SMALL_BUFFER) as (stream, peer):
        connection = FramedConnection(stream, max_frame_size=BIG_FRAMES)
        recording = FirstWriteRound(stream)
        connection.stream = recording  # direct writes still use the socket itself
        peer_stream = trio.SocketStream(trio.socket.from_stdlib_socket(peer))

        async def drain() -> None:
            while await peer_stream.receive_some(1 << 20):
                pass

        async with trio.open_nursery() as nursery:
            nursery.start_soon(drain)
            nursery.start_soon(connection.run_writer)
            await trio.testing.wait_all_tasks_blocked()
            connection.send(Op.QUEUE_PUT, 1, BIG, urgent=True)
            assert connection._unsent, "the direct write was not partial"
            for recording.round in range(1, 3 * _COALESCE_ROUNDS):
                connection.send(Op.ACK, 0, b"one-way")
                await trio.lowlevel.checkpoint()
                if recording.first is not None:
                    break
            nursery.cancel_scope.cancel()
    assert recording.first is not None and recording.first <= 3, recording.first
