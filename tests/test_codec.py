"""The frame codec of the core: ``Frame``, ``encode_frame``, ``FrameEncoder``, ``FrameDecoder``.

Every test takes the ``core`` fixture, so it runs against the compiled
extension and against the pure-Python twin.  Exception types and messages
are part of the API (both cores must raise the same ones), so they are
pinned exactly here.
"""

from __future__ import annotations

import array
import itertools
import pickle
import struct
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trioq import LocalProtocolError, RemoteProtocolError, _impl

# ``core`` is a function-scoped fixture, but it only hands back a module, so
# sharing it between hypothesis examples is safe.
fixture_ok = settings(
    suppress_health_check=[
        *settings.default.suppress_health_check,
        HealthCheck.function_scoped_fixture,
    ]
)

U32_MAX = 2**32 - 1


@contextmanager
def raises_exactly(exc_type: type[BaseException], message: str) -> Iterator[None]:
    """Expect exactly ``exc_type`` (not a subclass) with exactly ``message``."""
    with pytest.raises(exc_type) as info:
        yield
    assert type(info.value) is exc_type
    assert info.value.args == (message,)


def prefix(length: int) -> bytes:
    """The 4-byte length field announcing ``length`` bytes after itself."""
    return struct.pack(">I", length)


def fields(frame) -> tuple[int, int, bytes, int]:
    return (frame.op, frame.request_id, frame.payload, frame.flags)


def drain(decoder) -> list:
    out = []
    while (frame := decoder.next_frame()) is not None:
        out.append(frame)
    return out


# --------------------------------------------------------------------------
# constants and wire layout


def test_constants_describe_the_frame_layout(core):
    assert core.LENGTH_PREFIX_SIZE == 4
    assert core.HEADER_SIZE == 10
    assert core.DEFAULT_MAX_FRAME_SIZE == 64 * 1024 * 1024
    assert core.MAX_OP == 255
    assert core.MAX_FLAGS == 255
    assert core.MAX_REQUEST_ID == U32_MAX


def test_implementation_names_which_core_it_is(core):
    expected = "python" if core is _impl.python_core() else "compiled"
    assert expected == core.IMPLEMENTATION


def test_encode_frame_writes_length_op_flags_request_id_then_payload_big_endian(core):
    wire = core.encode_frame(0x11, 0x01020304, b"xyz", flags=0x22)
    assert wire == b"\x00\x00\x00\x09" + b"\x11" + b"\x22" + b"\x01\x02\x03\x04" + b"xyz"
    assert type(wire) is bytes


def test_encode_frame_of_empty_payload_is_exactly_the_header(core):
    assert core.encode_frame(0, 0) == b"\x00\x00\x00\x06" + b"\x00" * 6


# --------------------------------------------------------------------------
# Frame values


def test_frame_defaults_to_request_id_zero_empty_payload_and_no_flags(core):
    frame = core.Frame(7)
    assert fields(frame) == (7, 0, b"", 0)


def test_frame_accepts_fields_by_keyword(core):
    frame = core.Frame(op=1, request_id=2, payload=b"p", flags=3)
    assert fields(frame) == (1, 2, b"p", 3)


def test_frames_are_equal_and_hash_equal_exactly_when_all_fields_are_equal(core):
    a = core.Frame(1, 2, b"x", 3)
    assert a == core.Frame(1, 2, b"x", 3)
    assert hash(a) == hash(core.Frame(1, 2, bytearray(b"x"), 3))
    assert len({a, core.Frame(1, 2, b"x", 3)}) == 1
    for other in (
        core.Frame(9, 2, b"x", 3),
        core.Frame(1, 9, b"x", 3),
        core.Frame(1, 2, b"y", 3),
        core.Frame(1, 2, b"x", 9),
    ):
        assert a != other
        assert not (a == other)  # noqa: SIM201 - __eq__ itself, not __ne__
    assert a != (1, 2, b"x", 3)
    assert a != "Frame"


def test_frame_repr_shows_every_field(core):
    frame = core.Frame(1, 2, b"a'b", 3)
    assert repr(frame) == 'Frame(op=1, request_id=2, payload=b"a\'b", flags=3)'


def test_frame_survives_pickling(core):
    frame = core.Frame(255, U32_MAX, b"\x00payload", 255)
    clone = pickle.loads(pickle.dumps(frame))
    assert type(clone) is core.Frame
    assert clone == frame


@pytest.mark.parametrize("name", ["op", "request_id", "payload", "flags"])
def test_frame_fields_cannot_be_reassigned(core, name):
    frame = core.Frame(1, 2, b"x", 3)
    with pytest.raises(AttributeError):
        setattr(frame, name, 0)
    assert fields(frame) == (1, 2, b"x", 3)


# --------------------------------------------------------------------------
# round trips at the limits


OPS = [0, 1, 127, 128, 254, 255]
FLAGS = [0, 1, 128, 255]
REQUEST_IDS = [0, 1, 2**8, 2**16, 2**31 - 1, 2**31, U32_MAX - 1, U32_MAX]


def test_every_header_field_round_trips_at_its_limits(core):
    encoder = core.FrameEncoder()
    expected = []
    for op in OPS:
        for flags in FLAGS:
            for request_id in REQUEST_IDS:
                encoder.write(op, request_id, b"", flags)
                expected.append((op, request_id, b"", flags))
    decoder = core.FrameDecoder()
    decoder.feed(encoder.take())
    assert [fields(f) for f in drain(decoder)] == expected
    assert decoder.at_boundary()


@pytest.mark.parametrize("size", [0, 1, 255, 256, 65535, 65536, 1024 * 1024 + 3])
def test_payload_of_any_size_round_trips(core, size):
    payload = bytes(i * 7 % 251 for i in range(size))
    wire = core.encode_frame(3, 4, payload, 5)
    assert len(wire) == core.HEADER_SIZE + size
    decoder = core.FrameDecoder()
    decoder.feed(wire)
    frame = decoder.next_frame()
    assert frame is not None
    assert fields(frame) == (3, 4, payload, 5)
    assert type(frame.payload) is bytes
    assert decoder.next_frame() is None
    assert decoder.at_boundary()


def _bytes_like_payloads() -> list:
    interleaved = bytes(b for ch in b"stride" for b in (ch, 0))
    return [
        pytest.param(bytearray(b"bytearray"), id="bytearray"),
        pytest.param(memoryview(b"memoryview"), id="memoryview"),
        pytest.param(memoryview(b"__slice__")[2:7], id="memoryview-slice"),
        pytest.param(memoryview(interleaved)[::2], id="memoryview-non-contiguous"),
        pytest.param(memoryview(array.array("H", [1, 2, 0xFFFF])), id="memoryview-of-u16"),
        pytest.param(memoryview(b"abcdef").cast("B", (2, 3)), id="memoryview-2d"),
        pytest.param(bytearray(), id="empty-bytearray"),
    ]


@pytest.mark.parametrize("payload", _bytes_like_payloads())
def test_bytes_like_payload_becomes_the_bytes_of_its_buffer(core, payload):
    expected = bytes(payload)
    frame = core.Frame(1, 2, payload)
    assert type(frame.payload) is bytes
    assert frame.payload == expected
    assert core.encode_frame(1, 2, payload) == core.encode_frame(1, 2, expected)
    encoder = core.FrameEncoder()
    encoder.write(1, 2, payload)
    assert encoder.take() == core.encode_frame(1, 2, expected)


def test_payload_is_copied_so_later_mutation_does_not_change_the_frame(core):
    buffer = bytearray(b"before")
    frame = core.Frame(1, 0, buffer)
    encoder = core.FrameEncoder()
    encoder.write(1, 0, buffer)
    buffer[:] = b"AFTER!"
    assert frame.payload == b"before"
    assert encoder.take() == core.encode_frame(1, 0, b"before")


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_decoder_accepts_every_bytes_like_chunk_type(core, kind):
    wire = core.encode_frame(1, 2, b"abc", 3) + core.encode_frame(4, 5, b"", 6)
    decoder = core.FrameDecoder()
    decoder.feed(kind(wire[:7]))
    decoder.feed(kind(wire[7:]))
    assert [fields(f) for f in drain(decoder)] == [(1, 2, b"abc", 3), (4, 5, b"", 6)]


def test_decoder_reads_a_wide_memoryview_as_its_raw_bytes(core):
    wire = core.encode_frame(1, 2, b"ab", 3)  # 12 bytes: six u16 items
    chunk = memoryview(array.array("H", wire))
    decoder = core.FrameDecoder()
    decoder.feed(chunk)
    assert [fields(f) for f in drain(decoder)] == [(1, 2, b"ab", 3)]


def test_decoder_accepts_a_non_contiguous_memoryview_like_payloads_do(core):
    # Frame() and encode_frame() take a strided memoryview as bytes(view);
    # feed() claims to take any memoryview, so it must do the same.
    wire = core.encode_frame(1, 2, b"strided", 3)
    view = memoryview(bytes(b for ch in wire for b in (ch, 0xEE)))[::2]
    decoder = core.FrameDecoder()
    decoder.feed(view)
    assert [fields(f) for f in drain(decoder)] == [(1, 2, b"strided", 3)]


def test_feeding_an_empty_chunk_changes_nothing(core):
    decoder = core.FrameDecoder()
    decoder.feed(b"")
    assert decoder.next_frame() is None
    assert decoder.at_boundary()
    assert decoder.buffered == 0


# --------------------------------------------------------------------------
# the encoder's buffer


def test_encoder_buffers_frames_back_to_back_until_take(core):
    encoder = core.FrameEncoder()
    assert len(encoder) == 0
    assert encoder.frames_buffered == 0
    encoder.write(1, 10, b"one")
    encoder.write_frame(core.Frame(2, 20, b"two!", 7))
    expected = core.encode_frame(1, 10, b"one") + core.encode_frame(2, 20, b"two!", 7)
    assert len(encoder) == len(expected)
    assert encoder.frames_buffered == 2
    assert encoder.take() == expected
    assert len(encoder) == 0
    assert encoder.frames_buffered == 0
    assert encoder.take() == b""


def test_encoder_is_reusable_after_take(core):
    encoder = core.FrameEncoder()
    encoder.write(1, 1)
    encoder.take()
    encoder.write(2, 2, b"x")
    assert encoder.take() == core.encode_frame(2, 2, b"x")


def test_encoder_max_frame_size_defaults_and_is_reported(core):
    assert core.FrameEncoder().max_frame_size == core.DEFAULT_MAX_FRAME_SIZE
    assert core.FrameEncoder(100).max_frame_size == 100
    assert core.FrameDecoder().max_frame_size == core.DEFAULT_MAX_FRAME_SIZE
    assert core.FrameDecoder(max_frame_size=100).max_frame_size == 100


# --------------------------------------------------------------------------
# decoding incrementally


def test_decoder_returns_none_until_a_frame_is_complete(core):
    wire = core.encode_frame(9, 8, b"hello", 7)
    decoder = core.FrameDecoder()
    for i, byte in enumerate(wire[:-1]):
        decoder.feed(bytes([byte]))
        assert decoder.next_frame() is None
        assert decoder.buffered == i + 1
        assert not decoder.at_boundary()
    decoder.feed(wire[-1:])
    assert fields(decoder.next_frame()) == (9, 8, b"hello", 7)
    assert decoder.buffered == 0
    assert decoder.at_boundary()


def test_iterating_a_decoder_yields_complete_frames_and_keeps_the_partial_one(core):
    wire = b"".join(core.encode_frame(1, i, bytes([i])) for i in range(3))
    decoder = core.FrameDecoder()
    decoder.feed(wire + wire[:5])
    assert iter(decoder) is decoder
    assert [fields(f) for f in decoder] == [(1, i, bytes([i]), 0) for i in range(3)]
    assert decoder.buffered == 5
    assert list(decoder) == []
    decoder.feed(wire[5:11])
    assert [fields(f) for f in decoder] == [(1, 0, b"\x00", 0)]


def test_decoder_keeps_working_over_many_partial_feeds(core):
    # Exercises the decoder compacting its buffer behind the read position.
    frames = [(i % 256, i, bytes(i % 50), i % 7) for i in range(500)]
    wire = b"".join(core.encode_frame(*f) for f in frames)
    decoder = core.FrameDecoder()
    out = []
    for start in range(0, len(wire), 37):
        decoder.feed(wire[start : start + 37])
        out.extend(fields(f) for f in drain(decoder))
    assert out == frames
    assert decoder.at_boundary()


def frame_fields(max_payload: int = 40):
    return st.tuples(
        st.integers(0, 255),
        st.integers(0, U32_MAX),
        st.binary(max_size=max_payload),
        st.integers(0, 255),
    )


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = [0, *sorted(set(cuts)), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(points)]


@fixture_ok
@given(frames=st.lists(frame_fields(), max_size=25), data=st.data())
def test_any_chunking_of_a_stream_decodes_to_the_same_frames(core, frames, data):
    wire = b"".join(core.encode_frame(*f) for f in frames)
    cuts = data.draw(st.lists(st.integers(0, len(wire)), max_size=40))
    kinds = data.draw(st.lists(st.sampled_from([bytes, bytearray, memoryview]), min_size=1))
    ends = {0}
    offset = 0
    for f in frames:
        offset += core.HEADER_SIZE + len(f[2])
        ends.add(offset)
    decoder = core.FrameDecoder()
    out = []
    fed = 0
    for i, chunk in enumerate(split(wire, cuts)):
        decoder.feed(kinds[i % len(kinds)](chunk))
        fed += len(chunk)
        out.extend(fields(f) for f in drain(decoder))
        # between frames exactly when the bytes fed so far end on a frame end
        assert decoder.at_boundary() == (fed in ends)
        assert decoder.buffered == fed - max(e for e in ends if e <= fed)
    assert out == frames
    assert decoder.at_boundary()


@fixture_ok
@given(frames=st.lists(frame_fields(max_payload=12), min_size=1, max_size=10))
def test_feeding_one_byte_at_a_time_decodes_every_frame_at_its_last_byte(core, frames):
    wire = b"".join(core.encode_frame(*f) for f in frames)
    ends = set()
    offset = 0
    for f in frames:
        offset += core.HEADER_SIZE + len(f[2])
        ends.add(offset)
    decoder = core.FrameDecoder()
    assert decoder.at_boundary()
    out = []
    for i in range(len(wire)):
        decoder.feed(wire[i : i + 1])
        got = drain(decoder)
        assert len(got) == (1 if i + 1 in ends else 0)
        out.extend(fields(f) for f in got)
        assert decoder.at_boundary() == (i + 1 in ends)
    assert out == frames


# --------------------------------------------------------------------------
# max_frame_size


def test_frame_exactly_at_max_frame_size_encodes_and_decodes(core):
    limit = 64
    payload = b"p" * (limit - core.HEADER_SIZE)
    wire = core.encode_frame(1, 2, payload, max_frame_size=limit)
    assert len(wire) == limit
    encoder = core.FrameEncoder(limit)
    encoder.write(1, 2, payload)
    encoder.write_frame(core.Frame(1, 2, payload))
    assert encoder.take() == wire + wire
    decoder = core.FrameDecoder(limit)
    decoder.feed(wire)
    assert fields(decoder.next_frame()) == (1, 2, payload, 0)


def test_smallest_max_frame_size_allows_only_empty_payloads(core):
    assert len(core.encode_frame(1, 1, b"", max_frame_size=10)) == 10
    with raises_exactly(LocalProtocolError, "frame of 11 bytes exceeds max_frame_size 10"):
        core.encode_frame(1, 1, b"x", max_frame_size=10)
    decoder = core.FrameDecoder(10)
    decoder.feed(core.encode_frame(1, 1))
    assert fields(decoder.next_frame()) == (1, 1, b"", 0)


def test_encode_frame_one_byte_over_max_frame_size_raises_local_protocol_error(core):
    with raises_exactly(LocalProtocolError, "frame of 65 bytes exceeds max_frame_size 64"):
        core.encode_frame(1, 2, b"p" * 55, max_frame_size=64)


def test_encode_frame_over_the_default_max_frame_size_raises(core):
    payload = bytes(core.DEFAULT_MAX_FRAME_SIZE - core.HEADER_SIZE + 1)
    limit = core.DEFAULT_MAX_FRAME_SIZE
    message = f"frame of {limit + 1} bytes exceeds max_frame_size {limit}"
    with raises_exactly(LocalProtocolError, message):
        core.encode_frame(1, 2, payload)
    with raises_exactly(LocalProtocolError, message):
        core.FrameEncoder().write(1, 2, payload)


def test_encoder_rejects_an_oversized_frame_without_touching_its_buffer(core):
    encoder = core.FrameEncoder(64)
    encoder.write(1, 1, b"first")
    before = len(encoder)
    with raises_exactly(LocalProtocolError, "frame of 65 bytes exceeds max_frame_size 64"):
        encoder.write(2, 2, b"p" * 55)
    with raises_exactly(LocalProtocolError, "frame of 74 bytes exceeds max_frame_size 64"):
        encoder.write_frame(core.Frame(2, 2, b"p" * 64))
    assert len(encoder) == before
    assert encoder.frames_buffered == 1
    encoder.write(3, 3, b"still usable")
    assert encoder.take() == core.encode_frame(1, 1, b"first") + core.encode_frame(
        3, 3, b"still usable"
    )


def test_decoder_rejects_an_oversized_frame_from_its_length_prefix_alone(core):
    decoder = core.FrameDecoder(64)
    decoder.feed(prefix(61)[:3])
    assert decoder.next_frame() is None  # three bytes do not say anything yet
    assert not decoder.broken
    decoder.feed(prefix(61)[3:])  # announces 65 bytes; no body is ever sent
    assert decoder.buffered == 4
    with raises_exactly(
        RemoteProtocolError, "peer announced a frame of 65 bytes; max_frame_size is 64"
    ):
        decoder.next_frame()
    assert decoder.broken
    assert not decoder.at_boundary()


def test_decoder_accepts_a_length_prefix_exactly_at_max_frame_size(core):
    decoder = core.FrameDecoder(64)
    decoder.feed(prefix(60))
    assert decoder.next_frame() is None
    assert not decoder.broken
    decoder.feed(b"\x01\x02\x00\x00\x00\x03" + b"b" * 54)
    assert fields(decoder.next_frame()) == (1, 3, b"b" * 54, 2)


def test_decoder_reports_the_largest_length_field_without_wrapping(core):
    decoder = core.FrameDecoder(U32_MAX)
    decoder.feed(prefix(U32_MAX))
    with raises_exactly(
        RemoteProtocolError,
        f"peer announced a frame of {U32_MAX + 4} bytes; max_frame_size is {U32_MAX}",
    ):
        decoder.next_frame()


def test_decoder_reports_an_oversized_prefix_with_the_default_limit(core):
    decoder = core.FrameDecoder()
    decoder.feed(prefix(core.DEFAULT_MAX_FRAME_SIZE - 3))
    with raises_exactly(
        RemoteProtocolError,
        f"peer announced a frame of {core.DEFAULT_MAX_FRAME_SIZE + 1} bytes; "
        f"max_frame_size is {core.DEFAULT_MAX_FRAME_SIZE}",
    ):
        decoder.next_frame()


@pytest.mark.parametrize("length", [0, 1, 2, 3, 4, 5])
def test_decoder_rejects_a_length_field_too_short_for_the_header(core, length):
    decoder = core.FrameDecoder()
    decoder.feed(prefix(length))
    with raises_exactly(
        RemoteProtocolError,
        f"peer announced a frame of {length + 4} bytes; a frame is at least 10 bytes",
    ):
        decoder.next_frame()
    assert decoder.broken


def test_decoder_accepts_the_shortest_length_field(core):
    decoder = core.FrameDecoder()
    decoder.feed(prefix(6) + b"\x05\x06\x00\x00\x00\x07")
    assert fields(decoder.next_frame()) == (5, 7, b"", 6)


def test_frames_before_a_bad_prefix_are_returned_before_the_error(core):
    decoder = core.FrameDecoder(64)
    decoder.feed(core.encode_frame(1, 1, b"ok") + prefix(1000))
    assert fields(decoder.next_frame()) == (1, 1, b"ok", 0)
    with pytest.raises(RemoteProtocolError):
        decoder.next_frame()


def test_a_broken_decoder_raises_on_every_later_call(core):
    decoder = core.FrameDecoder(64)
    decoder.feed(prefix(2))
    original = "peer announced a frame of 6 bytes; a frame is at least 10 bytes"
    with raises_exactly(RemoteProtocolError, original):
        decoder.next_frame()
    broken = f"decoder is broken: {original}"
    for _ in range(2):
        with raises_exactly(RemoteProtocolError, broken):
            decoder.next_frame()
        with raises_exactly(RemoteProtocolError, broken):
            decoder.feed(core.encode_frame(1, 1))
        with raises_exactly(RemoteProtocolError, broken):
            next(decoder)
        with raises_exactly(RemoteProtocolError, broken):
            list(decoder)
    # even a misuse that would be a TypeError reports the broken stream first
    with raises_exactly(RemoteProtocolError, broken):
        decoder.feed("not bytes")
    assert decoder.broken
    assert not decoder.at_boundary()


def test_a_fresh_decoder_is_not_broken_and_at_a_boundary(core):
    decoder = core.FrameDecoder()
    assert not decoder.broken
    assert decoder.at_boundary()
    assert decoder.buffered == 0


# --------------------------------------------------------------------------
# fuzzing the decoder


def mutate(data: bytes, edits: list[tuple[str, int, int]]) -> bytes:
    out = bytearray(data)
    for kind, where, value in edits:
        if kind == "insert":
            out.insert(where % (len(out) + 1), value)
        elif not out:
            continue
        elif kind == "flip":
            out[where % len(out)] ^= value or 1
        else:
            del out[where % len(out)]
    return bytes(out)


edits = st.lists(
    st.tuples(
        st.sampled_from(["flip", "insert", "delete"]), st.integers(0, 10_000), st.integers(0, 255)
    ),
    max_size=6,
)


@st.composite
def hostile_streams(draw) -> bytes:
    if draw(st.booleans()):
        return draw(st.binary(max_size=300))
    frames = draw(st.lists(frame_fields(max_payload=60), max_size=6))
    wire = b"".join(struct.pack(">IBBI", 6 + len(p), op, fl, rid) + p for op, rid, p, fl in frames)
    return mutate(wire, draw(edits))


@fixture_ok
@given(stream=hostile_streams(), max_frame_size=st.integers(10, 80), data=st.data())
def test_hostile_bytes_decode_to_valid_frames_or_raise_remote_protocol_error(
    core, stream, max_frame_size, data
):
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=10))
    decoder = core.FrameDecoder(max_frame_size)
    decoded = []
    error = None
    fed = 0
    for chunk in split(stream, cuts):
        try:
            decoder.feed(chunk)
            fed += len(chunk)
            while (frame := decoder.next_frame()) is not None:
                decoded.append(frame)
        except RemoteProtocolError as exc:  # anything else fails the test
            error = exc
            break
        # an incomplete frame never holds more than one frame's worth, nor
        # more than was fed
        assert decoder.buffered < max_frame_size
        assert decoder.buffered <= fed

    # what was decoded is exactly the bytes it came from, frame by frame
    consumed = 0
    for frame in decoded:
        assert type(frame) is core.Frame
        assert 0 <= frame.op <= 255 and 0 <= frame.flags <= 255
        assert 0 <= frame.request_id <= U32_MAX
        wire = core.encode_frame(*fields(frame))
        assert len(wire) <= max_frame_size
        assert stream[consumed : consumed + len(wire)] == wire
        consumed += len(wire)

    rest = stream[consumed:]
    announced = int.from_bytes(rest[:4], "big") + 4 if len(rest) >= 4 else None
    if error is not None:
        assert type(error) is RemoteProtocolError
        assert announced is not None
        assert announced < 10 or announced > max_frame_size
        assert decoder.broken
        with raises_exactly(RemoteProtocolError, f"decoder is broken: {error}"):
            decoder.feed(b"\x00")
    else:
        assert not decoder.broken
        assert decoder.buffered == len(rest)
        assert decoder.at_boundary() == (not rest)
        if announced is not None:  # an honest, incomplete frame is pending
            assert 10 <= announced <= max_frame_size
            assert len(rest) < announced


# --------------------------------------------------------------------------
# argument types and ranges


def make_frame(core, op=1, request_id=2, payload=b"", flags=0):
    return core.Frame(op, request_id, payload, flags)


def encode(core, op=1, request_id=2, payload=b"", flags=0):
    return core.encode_frame(op, request_id, payload, flags)


def encoder_write(core, op=1, request_id=2, payload=b"", flags=0):
    encoder = core.FrameEncoder()
    try:
        encoder.write(op, request_id, payload, flags)
    finally:
        if encoder.frames_buffered == 0:
            assert len(encoder) == 0  # a rejected frame leaves nothing behind


BUILDERS = [
    pytest.param(make_frame, id="Frame"),
    pytest.param(encode, id="encode_frame"),
    pytest.param(encoder_write, id="FrameEncoder.write"),
]


@pytest.mark.parametrize("build", BUILDERS)
@pytest.mark.parametrize(
    ("field", "value", "type_name"),
    [
        ("op", None, "NoneType"),
        ("op", 1.0, "float"),
        ("op", "1", "str"),
        ("op", True, "bool"),
        ("request_id", b"\x01", "bytes"),
        ("request_id", False, "bool"),
        ("request_id", 2.0**40, "float"),
        ("flags", [], "list"),
        ("flags", True, "bool"),
    ],
)
def test_non_int_header_field_raises_type_error(core, build, field, value, type_name):
    with raises_exactly(TypeError, f"{field} must be an int, got {type_name}"):
        build(core, **{field: value})


@pytest.mark.parametrize("build", BUILDERS)
@pytest.mark.parametrize(
    ("field", "value", "maximum"),
    [
        ("op", -1, 255),
        ("op", 256, 255),
        ("op", 2**64, 255),
        ("op", -(2**70), 255),
        ("flags", -1, 255),
        ("flags", 256, 255),
        ("request_id", -1, U32_MAX),
        ("request_id", 2**32, U32_MAX),
        ("request_id", 2**64 + 1, U32_MAX),
    ],
)
def test_header_field_out_of_range_raises_local_protocol_error(core, build, field, value, maximum):
    with raises_exactly(LocalProtocolError, f"{field} must be in 0..{maximum}, got {value}"):
        build(core, **{field: value})


@pytest.mark.parametrize("build", BUILDERS)
@pytest.mark.parametrize(
    ("payload", "type_name"),
    [
        ("text", "str"),
        (None, "NoneType"),
        (5, "int"),
        ([1, 2], "list"),
        (array.array("B", b"ab"), "array"),
    ],
)
def test_non_bytes_like_payload_raises_type_error(core, build, payload, type_name):
    with raises_exactly(TypeError, f"payload must be bytes-like, got {type_name}"):
        build(core, payload=payload)


@pytest.mark.parametrize("build", BUILDERS)
def test_fields_are_checked_op_then_request_id_then_flags_then_payload(core, build):
    with raises_exactly(LocalProtocolError, "op must be in 0..255, got 256"):
        build(core, op=256, request_id=-1, flags="x", payload="x")
    with raises_exactly(LocalProtocolError, "request_id must be in 0..4294967295, got -1"):
        build(core, request_id=-1, flags="x", payload="x")
    with raises_exactly(TypeError, "flags must be an int, got str"):
        build(core, flags="x", payload="x")


def test_encode_frame_checks_max_frame_size_before_the_fields(core):
    with raises_exactly(ValueError, "max_frame_size must be in 10..4294967295, got 9"):
        core.encode_frame(-1, -1, "x", max_frame_size=9)


def test_payload_size_is_checked_after_its_type(core):
    with raises_exactly(TypeError, "payload must be bytes-like, got str"):
        core.encode_frame(1, 1, "x" * 100, max_frame_size=10)


@pytest.mark.parametrize("make", ["encode_frame", "FrameEncoder", "FrameDecoder"])
@pytest.mark.parametrize(
    ("value", "exc_type", "message"),
    [
        (9, ValueError, "max_frame_size must be in 10..4294967295, got 9"),
        (0, ValueError, "max_frame_size must be in 10..4294967295, got 0"),
        (-1, ValueError, "max_frame_size must be in 10..4294967295, got -1"),
        (2**32, ValueError, "max_frame_size must be in 10..4294967295, got 4294967296"),
        (2**80, ValueError, f"max_frame_size must be in 10..4294967295, got {2**80}"),
        ("64", TypeError, "max_frame_size must be an int, got str"),
        (64.0, TypeError, "max_frame_size must be an int, got float"),
        (None, TypeError, "max_frame_size must be an int, got NoneType"),
        (True, TypeError, "max_frame_size must be an int, got bool"),
    ],
)
def test_bad_max_frame_size_is_rejected(core, make, value, exc_type, message):
    with raises_exactly(exc_type, message):
        if make == "encode_frame":
            core.encode_frame(1, 1, max_frame_size=value)
        else:
            getattr(core, make)(value)


def test_largest_max_frame_size_is_accepted(core):
    assert core.FrameEncoder(U32_MAX).max_frame_size == U32_MAX
    assert core.FrameDecoder(U32_MAX).max_frame_size == U32_MAX
    assert core.encode_frame(1, 1, b"x", max_frame_size=U32_MAX) == core.encode_frame(1, 1, b"x")


@pytest.mark.parametrize(
    ("frame", "type_name"), [((1, 2, b"", 0), "tuple"), (None, "NoneType"), (b"\x00", "bytes")]
)
def test_write_frame_rejects_anything_but_a_frame(core, frame, type_name):
    encoder = core.FrameEncoder()
    with raises_exactly(TypeError, f"frame must be a Frame, got {type_name}"):
        encoder.write_frame(frame)
    assert len(encoder) == 0


@pytest.mark.parametrize(
    ("data", "type_name"),
    [
        ("text", "str"),
        (None, "NoneType"),
        (3, "int"),
        ([1], "list"),
        (array.array("B", b"a"), "array"),
    ],
)
def test_feeding_a_non_bytes_like_raises_type_error_and_does_not_break_the_decoder(
    core, data, type_name
):
    decoder = core.FrameDecoder()
    decoder.feed(b"\x00\x00")
    with raises_exactly(TypeError, f"data must be bytes-like, got {type_name}"):
        decoder.feed(data)
    assert not decoder.broken
    assert decoder.buffered == 2
    decoder.feed(b"\x00\x06\x01\x02\x00\x00\x00\x03")
    assert fields(decoder.next_frame()) == (1, 3, b"", 2)
