"""Serialization: msgpack fast path, cloudpickle fallback, opaque pickles, hooks."""

from __future__ import annotations

import math
import subprocess
import sys
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trioq import SerializationError
from trioq._wire.pickling import dumps, full_serializer, loads
from trioq._wire.serialize import EXT_PICKLE, FIRST_FREE_EXT, Pickled, Serializer

int64 = st.integers(min_value=-(2**63), max_value=2**64 - 1)
scalars = st.none() | st.booleans() | int64 | st.floats(allow_nan=False) | st.text() | st.binary()
hashable = st.recursive(scalars, lambda inner: st.tuples(inner, inner) | st.lists(inner).map(tuple))
plain = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=6)
        | st.lists(inner, max_size=6).map(tuple)
        | st.dictionaries(hashable, inner, max_size=6)
    ),
    max_leaves=30,
)


def same(a: Any, b: Any) -> bool:
    """Equality that also checks container types (a tuple must stay a tuple)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, float) and math.isnan(a):
        return math.isnan(b)
    return bool(a == b)


@given(plain)
def test_plain_data_round_trips_with_exact_types(value: Any) -> None:
    assert same(loads(dumps(value)), value)


@given(plain)
def test_plain_data_needs_no_pickling(value: Any) -> None:
    no_pickle = Serializer()
    assert same(no_pickle.loads(no_pickle.dumps(value)), value)


def test_bytearray_and_memoryview_travel_as_bytes() -> None:
    assert loads(dumps([bytearray(b"ab"), memoryview(b"cd")])) == [b"ab", b"cd"]


def test_lambda_round_trips_and_runs() -> None:
    assert loads(dumps(lambda x: x * 3))(5) == 15


def test_closure_keeps_its_captured_state() -> None:
    def make_adder(n: int) -> Any:
        def add(x: int) -> int:
            return x + n

        return add

    assert loads(dumps(make_adder(7)))(1) == 8


def test_objects_inside_containers_are_pickled_individually() -> None:
    value = {"when": complex(1, 2), "items": [frozenset({1}), 2**80], "key": (1, "a")}
    assert loads(dumps(value)) == value


def test_large_bytes_payload_round_trips() -> None:
    blob = bytes(range(256)) * (16 * 4096)  # 16 MiB
    assert loads(dumps(blob)) == blob


def test_large_container_round_trips() -> None:
    value = [{"i": i, "s": str(i)} for i in range(100_000)]
    assert loads(dumps(value)) == value


class _Boom:
    """Unpickling this sets a flag: proof that code ran."""

    ran = False

    def __reduce__(self) -> Any:
        return (_mark_ran, ())


def _mark_ran() -> _Boom:
    _Boom.ran = True
    return _Boom()


def test_serializer_without_unpickler_keeps_pickles_opaque_and_runs_nothing() -> None:
    data = dumps({"payload": _Boom(), "n": 1})
    _Boom.ran = False
    scheduler_side = Serializer()
    value = scheduler_side.loads(data)
    assert _Boom.ran is False
    assert isinstance(value["payload"], Pickled)
    assert value["n"] == 1
    # and it passes through unchanged, byte for byte
    assert scheduler_side.dumps(value) == data


def test_serializer_without_pickler_refuses_arbitrary_objects_clearly() -> None:
    with pytest.raises(SerializationError, match="not plain msgpack data"):
        Serializer().dumps(object())


def test_unpicklable_object_raises_serialization_error() -> None:
    import threading

    with pytest.raises(SerializationError, match="cannot pickle"):
        dumps(threading.Lock())


@pytest.mark.parametrize("garbage", [b"\xc1", b"\x92\x01", b"\x91\x01\x02", b"\xd4\x63"])
def test_malformed_bytes_raise_serialization_error(garbage: bytes) -> None:
    with pytest.raises(SerializationError):
        loads(garbage)


@given(st.binary(max_size=64))
def test_random_bytes_decode_or_raise_serialization_error(data: bytes) -> None:
    try:
        Serializer().loads(data)
    except SerializationError as exc:
        assert str(exc)  # the only exception allowed, with a message


class Point:
    def __init__(self, x: int, y: int) -> None:
        self.x, self.y = x, y

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Point) and (self.x, self.y) == (other.x, other.y)

    def __hash__(self) -> int:
        return hash((self.x, self.y))


def _point_serializer() -> Serializer:
    serializer = full_serializer()
    serializer.register(
        Point,
        FIRST_FREE_EXT,
        lambda p: p.x.to_bytes(2, "big") + p.y.to_bytes(2, "big"),
        lambda b: Point(int.from_bytes(b[:2], "big"), int.from_bytes(b[2:], "big")),
    )
    return serializer


def test_registered_type_travels_as_its_extension_not_as_a_pickle() -> None:
    serializer = _point_serializer()
    data = serializer.dumps([Point(1, 2)])
    assert serializer.loads(data) == [Point(1, 2)]
    with pytest.raises(SerializationError, match="unknown extension type"):
        Serializer().loads(data)  # not a pickle: a party without the hook cannot read it


def test_unknown_extension_code_is_a_clear_error() -> None:
    data = _point_serializer().dumps(Point(3, 4))
    with pytest.raises(SerializationError, match=f"unknown extension type {FIRST_FREE_EXT}"):
        full_serializer().loads(data)


def test_register_rejects_reserved_and_duplicate_codes() -> None:
    serializer = _point_serializer()
    with pytest.raises(ValueError, match="taken by trioq"):
        serializer.register(complex, EXT_PICKLE, repr, complex)
    with pytest.raises(ValueError, match="already registered"):
        serializer.register(complex, FIRST_FREE_EXT, repr, complex)
    with pytest.raises(ValueError, match="already registered"):
        serializer.register(Point, FIRST_FREE_EXT + 1, repr, complex)


def test_serialize_module_imports_no_pickle() -> None:
    code = (
        "import sys, trioq._wire.serialize, trioq._impl\n"
        "print(sorted(m for m in sys.modules if 'pickle' in m))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# -- the reused packer -----------------------------------------------------------------------


@pytest.fixture(params=["compiled", "fallback"])
def packer_class(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> type:
    """Serializers made in the test pack with msgpack's compiled or pure-Python Packer."""
    import msgpack
    import msgpack.fallback

    cls = msgpack.fallback.Packer if request.param == "fallback" else msgpack.Packer
    if request.param == "compiled" and cls is msgpack.fallback.Packer:
        pytest.skip("msgpack was installed without its extension")
    monkeypatch.setattr(msgpack, "Packer", cls)
    return cls


class Box:
    """A type whose registered encoder serializes its content with ``dumps`` again."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Box) and same(self.value, other.value)

    __hash__ = None  # type: ignore[assignment]  # it holds lists: unhashable, like them

    def __repr__(self) -> str:
        return f"Box({self.value!r})"


def _box_serializer() -> Serializer:
    serializer = Serializer()
    serializer.register(
        Box,
        FIRST_FREE_EXT,
        lambda box: serializer.dumps(box.value),  # nested: the same serializer, mid-dumps
        lambda data: Box(serializer.loads(data)),
    )
    return serializer


NESTED = [1, Box({"a": Box([2, (3, Box("deep"))]), "b": b"\x00"}), "after", Box(None)]


def test_an_encoder_that_calls_dumps_of_its_own_serializer_round_trips(packer_class: type) -> None:
    serializer = _box_serializer()
    data = serializer.dumps(NESTED)
    assert serializer.loads(data) == NESTED
    assert serializer.dumps(NESTED) == data  # the reused packer was left clean
    assert _box_serializer().dumps(NESTED) == data


@pytest.mark.parametrize(
    "bad",
    [
        [1, "two", object()],  # refused by the default hook, after two elements were packed
        [1, 2**70],  # an int beyond 64 bits
        [1, Box([2, object()])],  # refused inside a nested dumps
    ],
    ids=["unserializable", "int-overflow", "nested"],
)
def test_dumps_after_a_failed_dumps_is_byte_identical_to_a_fresh_serializers(
    packer_class: type, bad: Any
) -> None:
    serializer = _box_serializer()
    serializer.dumps(["warm", "up"])  # the packer to be reused exists and was used
    with pytest.raises(SerializationError):
        serializer.dumps(bad)
    good = [3, "four", Box((5,))]
    data = serializer.dumps(good)
    assert data == _box_serializer().dumps(good)
    assert serializer.loads(data) == good


def test_a_serializer_lets_go_of_a_packer_whose_buffer_grew_large() -> None:
    # A msgpack Packer never shrinks its buffer; one kept per thread after a
    # huge item would hold that memory for good.
    serializer = Serializer()
    small = serializer.dumps_item({"n": 1})
    kept = serializer._local.packer
    assert kept is not None
    assert serializer.dumps_item({"n": 2}) != small and serializer._local.packer is kept
    big = b"x" * Serializer.KEEP_PACKER_BELOW
    assert serializer.loads(serializer.dumps_item(big)) == big
    assert serializer._local.packer is None
    assert serializer.loads(serializer.dumps_item({"n": 3})) == {"n": 3}  # a fresh one


def test_encode_message_lets_go_of_a_packer_whose_buffer_grew_large() -> None:
    from trioq._wire import messages as _messages

    small = _messages.QueuePut("q", [b"x"], True, True)
    _messages.encode_message(small)
    kept = _messages._packers.pack
    big = _messages.QueuePut("q", [b"x" * _messages.KEEP_PACKER_BELOW], True, True)
    assert _messages.decode_request(big.OP, _messages.encode_message(big)) == big
    assert getattr(_messages._packers, "pack", None) is None
    assert _messages.decode_request(small.OP, _messages.encode_message(small)) == small
    assert _messages._packers.pack is not kept
