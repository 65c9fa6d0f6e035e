"""msgpack serialization with extension hooks, and no pickle in sight.

Rules:

* Plain data (``None``, ``bool``, ``int`` within 64 bits, ``float``, ``str``,
  ``bytes``, ``list``, ``dict``, and ``tuple`` via an extension type) is
  msgpack: the fast path, and safe to decode anywhere.  ``bytearray`` and
  ``memoryview`` travel as ``bytes``.
* Anything else is handed to the ``pickler`` given to the ``Serializer`` and
  tagged ``EXT_PICKLE``.  A serializer built without an ``unpickler`` (the
  scheduler's) decodes those parts to opaque ``Pickled`` values and never
  runs their code; this module imports neither ``pickle`` nor
  ``cloudpickle`` (a test checks it), so the scheduler's import closure has
  none.  Clients and workers get a full serializer from ``_pickling``.
* Later layers register their own types with ``Serializer.register``;
  extension codes below ``FIRST_FREE_EXT`` belong to this module.
* References to cluster objects (a ``Future`` is one) travel as their key,
  ``EXT_REFERENCE``.  ``dumps_item`` wraps an item that holds references in
  an ``EXT_REFERENCES`` envelope listing their keys up front, so the
  scheduler can keep those objects alive while the item is stored without
  decoding the item (``references_of`` reads the list in O(references)).
  A reference inside a pickled part is listed too (its ``__reduce__`` calls
  ``note_reference``), and comes back through ``resolve_reference``.
* Handles on named cluster objects (a queue, a variable, an endpoint) pickle
  as their names.  While a serializer unpickles a part, ``decoding_owner()``
  returns its ``owner`` (a client's session), so a handle unpickled there
  attaches to the connection that read it.
"""

from __future__ import annotations

import contextvars
import struct
import threading
from collections.abc import Callable
from typing import Any

import msgpack

from .._exceptions import SerializationError

__all__ = [
    "EXT_PICKLE",
    "EXT_TUPLE",
    "EXT_REFERENCE",
    "EXT_REFERENCES",
    "FIRST_FREE_EXT",
    "Pickled",
    "Reference",
    "Serializer",
    "decoding_owner",
    "note_reference",
    "references_of",
    "resolve_reference",
]

EXT_PICKLE = 1
EXT_TUPLE = 2
EXT_REFERENCE = 3  # a reference to a cluster object (a future), by key
EXT_REFERENCES = 4  # an item envelope: the keys it refers to, then the item
FIRST_FREE_EXT = 16

# An envelope is always an ext 32 (format byte, 4-byte length, type byte), so
# the scheduler recognises one from its first six bytes.
_EXT32 = 0xC9
_ENVELOPE_HEADER = struct.Struct(">BIB")

_collecting: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar(
    "trioq_collecting_references", default=None
)
_resolving: contextvars.ContextVar[Callable[[str], Any] | None] = contextvars.ContextVar(
    "trioq_resolving_references", default=None
)

_decoding: contextvars.ContextVar[Any] = contextvars.ContextVar(
    "trioq_decoding_owner", default=None
)


def note_reference(key: str) -> None:
    """Called by a reference as it is serialized: ``dumps_item`` lists its key."""
    keys = _collecting.get()
    if keys is not None:
        keys.append(key)


def resolve_reference(key: str) -> Any:
    """The live object for a key read back from an item (used by unpickling)."""
    resolve = _resolving.get()
    if resolve is None:
        raise SerializationError(
            f"the reference {key!r} can only be deserialized by a trioq client or worker"
        )
    return resolve(key)


def decoding_owner() -> Any:
    """The ``owner`` of the serializer unpickling a part now; None outside one.

    Unpickling code (a handle's ``__reduce__`` target) asks it which
    connection read the data.  Plain ``pickle.loads`` has none.
    """
    return _decoding.get()


def references_of(item: bytes) -> list[str] | None:
    """The keys an item made by ``dumps_item`` refers to; None if it has none.

    ``ValueError`` for an envelope that does not hold a list of keys.
    """
    if len(item) < _ENVELOPE_HEADER.size or item[0] != _EXT32 or item[5] != EXT_REFERENCES:
        return None
    unpacker = msgpack.Unpacker(raw=False, max_buffer_size=len(item))
    unpacker.feed(memoryview(item)[_ENVELOPE_HEADER.size :])
    try:
        keys = unpacker.unpack()
    except Exception as exc:
        raise ValueError(f"malformed reference envelope ({type(exc).__name__})") from None
    if type(keys) is not list or not all(type(key) is str for key in keys):
        raise ValueError("malformed reference envelope: not a list of keys")
    return keys


class Reference:
    """A reference read by a party that cannot resolve it (the scheduler): its key."""

    __slots__ = ("key",)

    def __init__(self, key: str) -> None:
        self.key = key

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Reference) and other.key == self.key

    def __hash__(self) -> int:
        return hash(self.key)

    def __repr__(self) -> str:
        return f"Reference({self.key!r})"


class Pickled:
    """Pickled bytes held without being unpickled (what the scheduler sees).

    Serializing a ``Pickled`` writes the same bytes back, so a value can pass
    through a party that must not run its code.
    """

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = bytes(data)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Pickled) and other.data == self.data

    def __hash__(self) -> int:
        return hash(self.data)

    def __repr__(self) -> str:
        return f"Pickled(<{len(self.data)} bytes>)"


class _PerThread(threading.local):
    """What one thread's calls of a ``Serializer`` keep: its reused Packer
    (None while in use) and the references its running ``dumps_item`` meets."""

    packer: msgpack.Packer | None = None
    keys: list[str] | None = None


class Serializer:
    """Turns values into msgpack bytes and back, with pluggable extension types.

    ``pickler`` serializes what msgpack cannot carry; without one such a value
    raises ``SerializationError``.  ``unpickler`` restores pickled parts;
    without one they come back as ``Pickled``.  ``resolver`` turns the key
    of a reference read back into its live object; without one references
    come back as ``Reference``.  ``owner`` is whoever decodes with it (a
    client's session): ``decoding_owner()`` returns it while a pickled part
    is unpickled.
    """

    def __init__(
        self,
        *,
        pickler: Callable[[Any], bytes] | None = None,
        unpickler: Callable[[bytes], Any] | None = None,
        resolver: Callable[[str], Any] | None = None,
        owner: Any = None,
    ) -> None:
        self._pickler = pickler
        self._unpickler = unpickler
        self.resolver = resolver
        self.owner = owner
        self._encoders: dict[type, tuple[int, Callable[[Any], bytes]]] = {}
        self._decoders: dict[int, Callable[[bytes], Any]] = {}
        # Per thread: the Packer reused by dumps (building one costs more than
        # packing a small item; None while in use, so a nested dumps from an
        # encoder makes its own) and the references met by the running dumps_item.
        self._local = _PerThread()

    @property
    def can_unpickle(self) -> bool:
        return self._unpickler is not None

    def register(
        self,
        cls: type,
        code: int,
        encode: Callable[[Any], bytes],
        decode: Callable[[bytes], Any],
    ) -> None:
        """Carry instances of exactly ``cls`` as extension type ``code``."""
        if not (0 <= code <= 127):
            raise ValueError(f"extension code must be in 0..127, got {code}")
        if code < FIRST_FREE_EXT:
            raise ValueError(f"extension code {code} is taken by trioq itself")
        if code in self._decoders:
            raise ValueError(f"extension code {code} is already registered")
        if cls in self._encoders:
            raise ValueError(f"type {cls.__qualname__} is already registered")
        self._encoders[cls] = (code, encode)
        self._decoders[code] = decode

    #: A packer keeps the largest buffer it ever needed: one that packed more
    #: than this is let go rather than kept for the thread's next small item.
    KEEP_PACKER_BELOW = 1024 * 1024

    def _new_packer(self) -> msgpack.Packer:
        return msgpack.Packer(default=self._default, strict_types=True, use_bin_type=True)

    def dumps(self, obj: Any) -> bytes:
        """Serialize ``obj``; ``SerializationError`` if it cannot be carried."""
        local = self._local
        packer = local.packer
        if packer is None:  # the first on this thread, or a nested call: its own
            packer = self._new_packer()
        local.packer = None
        try:
            data: bytes = packer.pack(obj)  # a Packer resets itself on error
        except SerializationError:
            raise
        except (TypeError, ValueError, OverflowError) as exc:
            raise SerializationError(f"cannot serialize {type(obj).__qualname__}: {exc}") from exc
        finally:
            local.packer = packer
        if len(data) >= self.KEEP_PACKER_BELOW:
            local.packer = None  # its buffer grew that large: let it go
        return data

    def register_reference(self, cls: type, key_of: Callable[[Any], str]) -> None:
        """Carry instances of exactly ``cls`` as references (``EXT_REFERENCE``)."""
        if cls in self._encoders:
            raise ValueError(f"type {cls.__qualname__} is already registered")

        def encode(obj: Any) -> bytes:
            key = key_of(obj)
            keys = self._local.keys
            if keys is not None:
                keys.append(key)
            return key.encode()

        self._encoders[cls] = (EXT_REFERENCE, encode)

    def dumps_item(self, obj: Any) -> bytes:
        """``dumps``, wrapped in an envelope listing the references ``obj`` holds."""
        local = self._local
        keys: list[str] = []
        outer, local.keys = local.keys, keys  # the reference encoders append here
        try:
            data = self.dumps(obj)
        finally:
            local.keys = outer
        if not keys:
            return data
        body: bytes = msgpack.packb(list(dict.fromkeys(keys)), use_bin_type=True) + data
        return _ENVELOPE_HEADER.pack(_EXT32, len(body), EXT_REFERENCES) + body

    def loads(self, data: bytes) -> Any:
        """Deserialize bytes made by ``dumps``; ``SerializationError`` if malformed."""
        try:
            return msgpack.unpackb(data, ext_hook=self._ext_hook, strict_map_key=False, raw=False)
        except SerializationError:
            raise
        except Exception as exc:  # msgpack raises many kinds on garbage
            raise SerializationError(
                f"malformed serialized data ({type(exc).__name__}: {exc})"
            ) from exc

    def _default(self, obj: Any) -> msgpack.ExtType:
        cls = type(obj)
        encoder = self._encoders.get(cls)
        if encoder is not None:
            code, encode = encoder
            return msgpack.ExtType(code, encode(obj))
        if cls is tuple:
            return msgpack.ExtType(EXT_TUPLE, self.dumps(list(obj)))
        if cls is Pickled:
            return msgpack.ExtType(EXT_PICKLE, obj.data)
        if cls is Reference:
            keys = self._local.keys
            if keys is not None:
                keys.append(obj.key)
            return msgpack.ExtType(EXT_REFERENCE, obj.key.encode())
        if self._pickler is None:
            raise SerializationError(
                f"{cls.__qualname__} is not plain msgpack data and this serializer does not pickle"
            )
        token = _collecting.set(self._local.keys)  # references pickled inside note themselves
        try:
            return msgpack.ExtType(EXT_PICKLE, self._pickler(obj))
        except Exception as exc:
            raise SerializationError(f"cannot pickle {cls.__qualname__}: {exc}") from exc
        finally:
            _collecting.reset(token)

    def _ext_hook(self, code: int, data: bytes) -> Any:
        if code == EXT_TUPLE:
            return tuple(self.loads(data))
        if code == EXT_PICKLE:
            if self._unpickler is None:
                return Pickled(data)
            token = _decoding.set(self.owner)  # handles unpickled here attach to it
            try:
                return self._unpickler(data)
            finally:
                _decoding.reset(token)
        if code == EXT_REFERENCE:
            key = data.decode()
            return Reference(key) if self.resolver is None else self.resolver(key)
        if code == EXT_REFERENCES:
            return self._unwrap(data)
        decode = self._decoders.get(code)
        if decode is None:
            raise SerializationError(f"unknown extension type {code}")
        return decode(data)

    def _unwrap(self, body: bytes) -> Any:
        """An envelope's item; references in its pickled parts resolve meanwhile."""
        unpacker = msgpack.Unpacker(raw=False, max_buffer_size=len(body))
        unpacker.feed(body)
        unpacker.skip()  # the key list is for the scheduler
        token = _resolving.set(self.resolver)
        try:
            return self.loads(body[unpacker.tell() :])
        finally:
            _resolving.reset(token)
