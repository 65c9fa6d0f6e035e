"""An authenticated peer sending garbage: the scheduler answers or hangs up, and lives on.

``RawClient`` does the handshake itself (``ClientHandshake`` over
``trio.open_tcp_stream``) and then writes whatever hypothesis generates:
well-typed requests with colliding request ids, known op codes with random
or mutated msgpack payloads, unknown op codes, and length prefixes that lie.
After each batch the scheduler must still answer a ``STATUS`` probe on that
connection or have closed it, a second, well-behaved client must still
round-trip an item, and ``SchedulerState.validate()`` must hold.
"""

from __future__ import annotations

import contextlib
import dataclasses
import socket
import struct
from collections.abc import AsyncIterator
from typing import Any

import msgpack
import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

import trioq
from trioq._client.dial import parse_address
from trioq._impl import core
from trioq._wire.auth import HANDSHAKE_MAX_FRAME, ClientHandshake
from trioq._wire.messages import (
    _REQUESTS,
    Ack,
    Cancel,
    EndpointClose,
    EndpointOpen,
    ErrorReply,
    Op,
    QueueGet,
    QueueOpen,
    QueuePut,
    QueueReturn,
    QueueSize,
    Status,
    StatusReport,
    VariableGet,
    VariableSet,
    decode_reply,
    encode_message,
)

TIMEOUT = 10
PROBE_ID = 0xFFFF_FFF0  # a request id the generated frames never use
SCHEDULER_OPS = {Op.REPLY, Op.ERROR, Op.CREDIT, Op.QUEUE_ERROR, Op.PING}


class RawClient:
    """One authenticated connection that speaks frames, not the client API."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.decoder = core.FrameDecoder()
        self.closed_by_peer = False
        self.received: list[Any] = []

    @classmethod
    async def connect(cls, cluster: Any) -> RawClient:
        host, port = parse_address(cluster.address)
        stream = await trio.open_tcp_stream(host, port)
        handshake = ClientHandshake(cluster.token, "fuzzer")
        decoder = core.FrameDecoder(HANDSHAKE_MAX_FRAME)

        async def frame() -> Any:
            while (f := decoder.next_frame()) is None:
                decoder.feed(await stream.receive_some(HANDSHAKE_MAX_FRAME))
            return f

        await stream.send_all(handshake.receive_hello(await frame()))
        handshake.receive_welcome(await frame())
        assert decoder.at_boundary()
        return cls(stream)

    async def send(self, data: bytes) -> bool:
        """Write ``data``; False if the scheduler had already hung up."""
        try:
            await self.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.closed_by_peer = True
            return False
        return True

    async def _read(self) -> bool:
        try:
            data = await self.stream.receive_some(65536)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            data = b""
        if not data:
            self.closed_by_peer = True
            return False
        self.decoder.feed(data)
        for frame in self.decoder:
            assert frame.op in SCHEDULER_OPS, f"the scheduler sent op {frame.op}"
            if frame.op == Op.PING:
                continue  # the scheduler's heartbeat: not an answer to anything
            if frame.op == Op.ERROR:
                error = decode_reply(ErrorReply, frame.payload)
                assert error.kind and error.message
            self.received.append(frame)
        return True

    async def probe(self) -> bool:
        """Ask STATUS; True once answered, False if the scheduler hung up instead."""
        if self.closed_by_peer or not await self.send(frame_bytes(Op.STATUS, PROBE_ID, Status())):
            return await self._drain_to_end()
        while True:
            for frame in self.received:
                if frame.request_id == PROBE_ID and frame.op == Op.REPLY:
                    decode_reply(StatusReport, frame.payload)
                    return True
            if not await self._read():
                return False

    async def _drain_to_end(self) -> bool:
        while await self._read():
            pass
        return False

    async def aclose(self) -> None:
        """Hang up politely: half-close, read what is left, then close."""
        if not self.closed_by_peer:
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await self.stream.send_eof()
            await self._drain_to_end()
        await self.stream.aclose()


def frame_bytes(op: int, request_id: int, message: Any = None, payload: bytes = b"") -> bytes:
    if message is not None:
        payload = encode_message(message)
    return core.encode_frame(int(op), request_id, payload)


@pytest.fixture
async def cluster() -> AsyncIterator[Any]:
    async with trioq.open_cluster() as cluster:
        yield cluster


async def assert_scheduler_serves_others(cluster: Any) -> None:
    cluster.scheduler.state.validate()
    async with trioq.connect(cluster.address) as client:
        q = client.queue("well-behaved")  # a name the fuzzer never draws
        await q.put({"still": "here"})
        assert await q.get() == {"still": "here"}
    cluster.scheduler.state.validate()


# -- strategies ------------------------------------------------------------------------------

names = st.sampled_from(["q", "r", ""]) | st.text(max_size=4)
ints = st.sampled_from([0, 1, 2, 3, -1, 2**31, 2**63 - 1, -(2**63), 2**64 - 1]) | st.integers(
    -5, 70
)
FIELD_STRATEGIES: dict[str, st.SearchStrategy[Any]] = {
    "str": names,
    "int": ints,
    "bool": st.booleans(),
    "bytes": st.binary(max_size=16),
    "list[bytes]": st.lists(st.binary(max_size=8), max_size=5),
    "list[int]": st.lists(ints, max_size=5),
    "list[str]": st.lists(names, max_size=3),
    "str | None": st.none() | names,
    "bytes | None": st.none() | st.binary(max_size=8),
    "dict[str, Any]": st.dictionaries(names, st.integers(), max_size=3),
}


def _message_strategy(cls: type) -> st.SearchStrategy[bytes]:
    fields = [FIELD_STRATEGIES[str(f.type)] for f in dataclasses.fields(cls)]
    return st.tuples(*fields).map(lambda values: encode_message(cls(*values)))


well_typed = st.sampled_from(sorted(int(op) for op in _REQUESTS)).flatmap(
    lambda op: st.tuples(st.just(op), _message_strategy(_REQUESTS[op]))
)
msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=5)
    | st.binary(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=8,
)
known_op = st.sampled_from([int(op) for op in Op])
any_op = st.integers(0, 255)


@st.composite
def mutated(draw: st.DrawFn) -> tuple[int, bytes]:
    op, payload = draw(well_typed)
    data = bytearray(payload)
    for _ in range(draw(st.integers(1, 3))):
        if data and draw(st.booleans()):
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
        else:
            data = data[: draw(st.integers(0, len(data)))]
    return op, bytes(data)


payload_frames = st.one_of(
    well_typed,
    mutated(),
    st.tuples(known_op, msgpack_values.map(lambda v: msgpack.packb(v, use_bin_type=True))),
    st.tuples(any_op, st.binary(max_size=24)),
)
request_ids = st.integers(0, 3) | st.integers(0, 0xFFFF_FFEF)


@st.composite
def frame_chunk(draw: st.DrawFn) -> bytes:
    op, payload = draw(payload_frames)
    flags = draw(st.sampled_from([0, 0, 0, 1, 255]))
    return core.encode_frame(op, draw(request_ids), payload, flags)


lying_prefix = st.one_of(
    st.integers(0, 5),  # shorter than a frame header
    st.integers(core.DEFAULT_MAX_FRAME_SIZE - 3, 0xFFFF_FFFF),  # beyond the limit
).map(lambda n: struct.pack(">I", n) + b"\x15\x00\x00\x00\x00\x01")

chunks = st.lists(frame_chunk(), min_size=1, max_size=8).flatmap(
    lambda frames: st.one_of(st.just(frames), lying_prefix.map(lambda junk: [*frames, junk]))
)


# Failures are reported unshrunk: while the scheduler dies of a bad frame, every
# example fails and shrinking plus explaining takes minutes.  The pinned
# cases below are the minimal reproductions.
UNSHRUNK = [Phase.explicit, Phase.reuse, Phase.generate]


@settings(max_examples=60, phases=UNSHRUNK, suppress_health_check=[HealthCheck.too_slow])
@given(data=chunks, one_write=st.booleans())
async def test_random_frames_get_an_answer_or_a_hang_up_and_the_scheduler_lives_on(
    data: list[bytes], one_write: bool
) -> None:
    with trio.fail_after(TIMEOUT):
        async with trioq.open_cluster() as cluster:
            raw = await RawClient.connect(cluster)
            if one_write:
                await raw.send(b"".join(data))
            else:
                for chunk in data:
                    if not await raw.send(chunk):
                        break
            alive = await raw.probe()
            assert alive or raw.closed_by_peer
            await raw.aclose()
            await assert_scheduler_serves_others(cluster)


session_names = st.sampled_from(["q", "r"])
session_requests = st.one_of(
    st.builds(QueueGet, session_names, st.integers(1, 3), st.just(True)),  # parks, mostly
    st.builds(QueueGet, session_names, st.integers(0, 3), st.booleans()),
    st.builds(
        QueuePut,
        session_names,
        st.lists(st.binary(max_size=2), max_size=3),
        st.booleans(),
        st.booleans(),
    ),
    st.builds(Ack, st.lists(st.integers(0, 6), max_size=3)),
    st.builds(QueueReturn, st.lists(st.integers(0, 6), max_size=3)),
    st.builds(Cancel, st.integers(0, 3)),
    st.builds(VariableGet, st.sampled_from(["v", "w"]), st.booleans()),
    st.builds(VariableSet, st.sampled_from(["v", "w"]), st.binary(max_size=2)),
    st.builds(EndpointOpen, session_names, st.sampled_from(["send", "receive"])),
    st.builds(EndpointClose, session_names, st.sampled_from(["send", "receive"])),
    st.builds(QueueSize, session_names),
)


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(
    maxsizes=st.tuples(st.integers(0, 3), st.integers(0, 3)),
    requests=st.lists(st.tuples(st.integers(0, 2), session_requests), max_size=12),
)
async def test_well_typed_requests_with_colliding_ids_keep_the_scheduler_consistent(
    maxsizes: tuple[int, int], requests: list[tuple[int, Any]]
) -> None:
    with trio.fail_after(TIMEOUT):
        async with trioq.open_cluster() as cluster:
            raw = await RawClient.connect(cluster)
            for name, maxsize in zip(["q", "r"], maxsizes, strict=True):
                await raw.send(frame_bytes(Op.QUEUE_OPEN, 1, QueueOpen(name, maxsize)))
            for request_id, message in requests:
                if not await raw.send(frame_bytes(message.OP, request_id, message)):
                    break
            await raw.probe()
            cluster.scheduler.state.validate()
            await raw.aclose()
            await trio.testing.wait_all_tasks_blocked()
            cluster.scheduler.state.validate()
            async with trioq.connect(cluster.address) as client:
                for name in ["q", "r"]:  # reaches any getter the fuzzer left parked
                    q = client.queue(name)
                    try:
                        await q.qsize()
                        await q.put_nowait("probe")
                        await q.qsize()
                    except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
                        pass  # full, or its endpoints were all closed: legitimate answers
            await assert_scheduler_serves_others(cluster)


# -- pinned cases -------------------------------------------------------------------------------


async def test_an_unknown_op_code_gets_an_error_and_only_that_connection_closes(
    cluster: Any,
) -> None:
    with trio.fail_after(TIMEOUT):
        raw = await RawClient.connect(cluster)
        await raw.send(frame_bytes(200, 7, payload=b"\x90"))
        assert not await raw.probe()
        (error,) = [f for f in raw.received if f.op == Op.ERROR]
        assert error.request_id == 7
        assert "unknown op code 200" in decode_reply(ErrorReply, error.payload).message
        await raw.aclose()
        await assert_scheduler_serves_others(cluster)


async def test_a_malformed_request_gets_an_error_naming_the_message_and_field(
    cluster: Any,
) -> None:
    with trio.fail_after(TIMEOUT):
        raw = await RawClient.connect(cluster)
        bad = msgpack.packb(["q", "not a list", True, True])
        await raw.send(frame_bytes(Op.QUEUE_PUT, 9, payload=bad))
        assert not await raw.probe()
        (error,) = [f for f in raw.received if f.op == Op.ERROR]
        text = decode_reply(ErrorReply, error.payload).message
        assert "QueuePut" in text and "'items'" in text
        await raw.aclose()
        await assert_scheduler_serves_others(cluster)


async def test_a_well_formed_request_the_state_refuses_gets_an_error_and_the_connection_lives(
    cluster: Any,
) -> None:
    with trio.fail_after(TIMEOUT):
        raw = await RawClient.connect(cluster)
        await raw.send(frame_bytes(Op.QUEUE_GET, 5, QueueGet("missing", 1, True)))
        assert await raw.probe()
        (error,) = [f for f in raw.received if f.request_id == 5]
        assert decode_reply(ErrorReply, error.payload).kind == "BrokenResourceError"
        await raw.aclose()
        await assert_scheduler_serves_others(cluster)


@pytest.mark.parametrize("length", [0, 5, core.DEFAULT_MAX_FRAME_SIZE, 0xFFFF_FFFF])
async def test_a_lying_length_prefix_closes_only_that_connection(cluster: Any, length: int) -> None:
    with trio.fail_after(TIMEOUT):
        raw = await RawClient.connect(cluster)
        await raw.send(struct.pack(">I", length) + b"\x14\x00\x00\x00\x00\x01" + b"x" * 64)
        assert not await raw.probe()
        await raw.aclose()
        await assert_scheduler_serves_others(cluster)


async def test_a_frame_cut_off_by_the_end_of_the_stream_closes_only_that_connection(
    cluster: Any,
) -> None:
    with trio.fail_after(TIMEOUT):
        raw = await RawClient.connect(cluster)
        whole = frame_bytes(Op.QUEUE_OPEN, 1, QueueOpen("q", 0))
        await raw.send(whole[:-3])
        await raw.stream.send_eof()
        await raw._drain_to_end()
        await raw.stream.aclose()
        await assert_scheduler_serves_others(cluster)


async def test_a_connection_reset_by_a_client_does_not_stop_the_scheduler(
    cluster: Any,
) -> None:
    with trio.fail_after(TIMEOUT):
        raw = await RawClient.connect(cluster)
        await raw.send(frame_bytes(Op.QUEUE_OPEN, 1, QueueOpen("q", 0)))
        assert await raw.probe()
        # SO_LINGER with a zero timeout: close() sends RST instead of FIN
        raw.stream.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        raw.stream.socket.close()
        await trio.testing.wait_all_tasks_blocked()
        await assert_scheduler_serves_others(cluster)


async def test_a_scheduler_to_client_op_sent_by_a_client_is_refused(cluster: Any) -> None:
    with trio.fail_after(TIMEOUT):
        raw = await RawClient.connect(cluster)
        await raw.send(frame_bytes(Op.REPLY, 3, payload=encode_message(Status())))
        assert not await raw.probe()
        await raw.aclose()
        await assert_scheduler_serves_others(cluster)


@pytest.mark.parametrize("reused_id", [7, 0])
async def test_request_ids_reused_while_parked_cannot_corrupt_the_scheduler(
    cluster: Any, reused_id: int
) -> None:
    with trio.fail_after(TIMEOUT):
        raw = await RawClient.connect(cluster)
        await raw.send(frame_bytes(Op.QUEUE_OPEN, 1, QueueOpen("q", 0)))
        await raw.send(frame_bytes(Op.QUEUE_GET, reused_id, QueueGet("q", 1, True)))
        await raw.send(frame_bytes(Op.VARIABLE_GET, reused_id, VariableGet("v", True)))
        await raw.probe()  # answered, or refused and closed: both fine
        await raw.aclose()
        await trio.testing.wait_all_tasks_blocked()
        async with trioq.connect(cluster.address) as client:
            q = client.queue("q")  # where the vanished connection's get was parked
            await q.put("for a live getter only")
            assert await q.get() == "for a live getter only"
        await assert_scheduler_serves_others(cluster)


async def test_cancel_and_ack_of_unknown_ids_are_harmless(cluster: Any) -> None:
    with trio.fail_after(TIMEOUT):
        raw = await RawClient.connect(cluster)
        await raw.send(frame_bytes(Op.CANCEL, 0, Cancel(12345)))
        await raw.send(frame_bytes(Op.ACK, 0, payload=msgpack.packb([[1, 2, 3]])))
        await raw.send(frame_bytes(Op.QUEUE_PUT, 0, QueuePut("nowhere", [b"x"], True, True)))
        assert await raw.probe()
        assert [f.op for f in raw.received if f.request_id != PROBE_ID] == [Op.QUEUE_ERROR]
        await raw.aclose()
        await assert_scheduler_serves_others(cluster)
