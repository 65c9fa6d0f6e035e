"""An embedded cluster for queue tests, and small ways to look at its state."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

import trioq


@pytest.fixture
async def cluster() -> AsyncIterator[Any]:
    """A scheduler in the test's nursery; its state is checked when the test ends."""
    async with trioq.open_cluster() as cluster:
        yield cluster
        cluster.scheduler.state.validate()


def connect(cluster: Any, **kwargs: Any) -> Any:
    return trioq.connect(cluster.address, **kwargs)


def queue_status(cluster: Any, name: str) -> dict[str, Any]:
    """The scheduler's status entry for queue ``name``."""
    for entry in cluster.scheduler.state.status()["queues"]:
        if entry["name"] == name:
            return entry
    raise AssertionError(f"queue {name!r} is not on the scheduler")
