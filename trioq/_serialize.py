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
* Later layers register their own types (a ``Future`` travels as a
  reference) with ``Serializer.register``; extension codes below
  ``FIRST_FREE_EXT`` belong to this module.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgpack

from ._exceptions import SerializationError

__all__ = [
    "EXT_PICKLE",
    "EXT_TUPLE",
    "EXT_REFERENCE",
    "FIRST_FREE_EXT",
    "Pickled",
    "Serializer",
]

EXT_PICKLE = 1
EXT_TUPLE = 2
EXT_REFERENCE = 3  # reserved for references to cluster objects (futures)
FIRST_FREE_EXT = 16


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


class Serializer:
    """Turns values into msgpack bytes and back, with pluggable extension types.

    ``pickler`` serializes what msgpack cannot carry; without one such a value
    raises ``SerializationError``.  ``unpickler`` restores pickled parts;
    without one they come back as ``Pickled``.
    """

    def __init__(
        self,
        *,
        pickler: Callable[[Any], bytes] | None = None,
        unpickler: Callable[[bytes], Any] | None = None,
    ) -> None:
        self._pickler = pickler
        self._unpickler = unpickler
        self._encoders: dict[type, tuple[int, Callable[[Any], bytes]]] = {}
        self._decoders: dict[int, Callable[[bytes], Any]] = {}

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
        if code < FIRST_FREE_EXT and code != EXT_REFERENCE:
            raise ValueError(f"extension code {code} is taken by trioq itself")
        if code in self._decoders:
            raise ValueError(f"extension code {code} is already registered")
        if cls in self._encoders:
            raise ValueError(f"type {cls.__qualname__} is already registered")
        self._encoders[cls] = (code, encode)
        self._decoders[code] = decode

    def dumps(self, obj: Any) -> bytes:
        """Serialize ``obj``; ``SerializationError`` if it cannot be carried."""
        try:
            data: bytes = msgpack.packb(
                obj, default=self._default, strict_types=True, use_bin_type=True
            )
            return data
        except SerializationError:
            raise
        except (TypeError, ValueError, OverflowError) as exc:
            raise SerializationError(f"cannot serialize {type(obj).__qualname__}: {exc}") from exc

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
        if self._pickler is None:
            raise SerializationError(
                f"{cls.__qualname__} is not plain msgpack data and this serializer does not pickle"
            )
        try:
            return msgpack.ExtType(EXT_PICKLE, self._pickler(obj))
        except Exception as exc:
            raise SerializationError(f"cannot pickle {cls.__qualname__}: {exc}") from exc

    def _ext_hook(self, code: int, data: bytes) -> Any:
        if code == EXT_TUPLE:
            return tuple(self.loads(data))
        if code == EXT_PICKLE:
            if self._unpickler is None:
                return Pickled(data)
            return self._unpickler(data)
        decode = self._decoders.get(code)
        if decode is None:
            raise SerializationError(f"unknown extension type {code}")
        return decode(data)
