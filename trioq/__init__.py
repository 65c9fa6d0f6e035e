"""trioq: a distributed queue and task library for trio.

The public namespace is assembled here from private modules, one concept
each.  ``core_impl()`` says whether the compiled Cython core or its
pure-Python twin is in use.
"""

from __future__ import annotations

from ._exceptions import (
    LocalProtocolError,
    ProtocolError,
    RemoteProtocolError,
    SerializationError,
    TrioqError,
)
from ._impl import core_impl

__version__ = "0.1.0.dev0"

__all__ = [
    "core_impl",
    "TrioqError",
    "ProtocolError",
    "LocalProtocolError",
    "RemoteProtocolError",
    "SerializationError",
]

for _name in __all__:
    _obj = globals()[_name]
    if getattr(_obj, "__module__", "").startswith("trioq."):
        _obj.__module__ = "trioq"
del _name, _obj
