"""cloudpickle in and out, for clients and workers only.

Rules: pickled bytes are code.  Only processes that created the data or
are about to run it (clients, workers) import this module; the scheduler
never does, and routes pickled parts as opaque bytes (see ``_wire.serialize``).
"""

from __future__ import annotations

import pickle
from typing import Any

import cloudpickle

from .serialize import Serializer

__all__ = ["pickle_dumps", "pickle_loads", "full_serializer", "dumps", "loads"]


def pickle_dumps(obj: Any) -> bytes:
    """cloudpickle ``obj`` (functions, lambdas and closures included)."""
    data: bytes = cloudpickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    return data


def pickle_loads(data: bytes) -> Any:
    """Unpickle bytes from ``pickle_dumps``: only for trusted, authenticated data."""
    return pickle.loads(data)


def full_serializer(owner: Any = None) -> Serializer:
    """A serializer that pickles what msgpack cannot carry, and unpickles it back.

    ``owner`` (a client's session) is what handles unpickled by it attach to
    (see ``serialize.decoding_owner``).
    """
    return Serializer(pickler=pickle_dumps, unpickler=pickle_loads, owner=owner)


_DEFAULT = full_serializer()
dumps = _DEFAULT.dumps
loads = _DEFAULT.loads
