"""Task functions shared by the end-to-end tests (``open_cluster``, worker processes).

Module level, so a worker in the same process unpickles them by reference
and meets the test through ``GATES``: a task waits on its gate, the test
opens it.  ``conftest.py`` clears the gates before every test.
"""

from __future__ import annotations

import threading
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


async def async_add(a: int, b: int = 0) -> int:
    await trio.lowlevel.checkpoint()
    return a + b


def thread_ident() -> int:
    """The worker thread that runs this (plain functions run in worker threads)."""
    return threading.get_ident()


async def async_thread_ident() -> int:
    """The thread that runs this (async functions run in the worker's trio thread)."""
    await trio.lowlevel.checkpoint()
    return threading.get_ident()


@dataclass
class Order:
    """A custom object holding a future: travels pickled, the future inside it by key."""

    name: str
    future: trioq.Future
