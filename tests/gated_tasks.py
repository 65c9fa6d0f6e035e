"""Task functions shared by the in-process end-to-end tests (``open_cluster``).

Module level, so a worker in the same process unpickles them by reference
and meets the test through ``GATES``: a task waits on its gate, the test
opens it.  ``conftest.py`` clears the gates before every test.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import trio

import trioq

GATES: defaultdict[str, trio.Event] = defaultdict(trio.Event)


async def gated(name: str, value: Any) -> Any:
    """Wait for the test to open gate ``name``, then return ``value``."""
    await GATES[name].wait()
    return value


def add(a: int, b: int = 0) -> int:
    return a + b


@dataclass
class Order:
    """A custom object holding a future: travels pickled, the future inside it by key."""

    name: str
    future: trioq.Future
