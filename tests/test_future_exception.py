"""``Future.exception()``: wait for a task, get what it failed with (None on success).

In one process (``open_cluster`` plus ``connect``), as in ``test_tasks.py``:
task functions live at module level (in ``gated_tasks`` or here) so the
in-process worker unpickles them by reference.  Every wait is bounded.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import procs
import pytest
import trio
from gated_tasks import GATES, add, gated

import trioq

WAIT = 10.0  # seconds any one step may take


class Refusal(Exception):
    """A task's own exception (module level: it pickles by reference)."""


def refuse(text: str) -> int:
    raise Refusal(text)


async def async_refuse(text: str) -> int:
    await trio.lowlevel.checkpoint()
    raise Refusal(text)


class Locked(Exception):
    """Holds a lock, so it cannot travel back to the client."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.lock = threading.Lock()


def raise_locked(text: str) -> None:
    raise Locked(text)


@asynccontextmanager
async def cluster_and_client() -> AsyncIterator[tuple[trioq.Cluster, trioq.Client]]:
    async with (
        trioq.open_cluster(workers=1) as cluster,
        trioq.connect(cluster.address, name="test") as client,
    ):
        yield cluster, client


def readers(cluster: trioq.Cluster, future: trioq.Future) -> int:
    """Reads of ``future`` parked in the scheduler (white box; 0 if it is unknown yet)."""
    task = cluster.scheduler.state.tasks._tasks.get(future.key)
    return 0 if task is None else len(task.readers)


async def test_exception_of_a_task_that_succeeded_is_none() -> None:
    async with cluster_and_client() as (_, client):
        with trio.fail_after(WAIT):
            future = await client.submit(add, 2, 3)
            assert await future.exception() is None
            assert future.status == "finished" and future.done()
            assert await future == 5  # the result is still there


@pytest.mark.parametrize("fn", [refuse, async_refuse])
async def test_exception_of_a_failing_task_is_its_own_exception_returned(
    fn: Callable[[str], Any],
) -> None:
    async with cluster_and_client() as (_, client):
        with trio.fail_after(WAIT):
            future = await client.submit(fn, "not today")
            error = await future.exception()
            assert type(error) is Refusal
            assert str(error) == "not today"
            (note,) = error.__notes__
            assert note.startswith("remote traceback:\n") and "Refusal: not today" in note
            assert future.status == "error"
            with pytest.raises(Refusal, match="not today"):  # result() raises the same
                await future


async def test_exception_of_a_task_whose_exception_cannot_travel_is_remote_task_error() -> None:
    async with cluster_and_client() as (_, client):
        with trio.fail_after(WAIT):
            future = await client.submit(raise_locked, "stuck")
            error = await future.exception()
            assert isinstance(error, trioq.RemoteTaskError)
            assert str(error) == "Locked: stuck"


async def test_exception_of_a_cancelled_task_raises_task_cancelled_error() -> None:
    async with cluster_and_client() as (_, client):
        with trio.fail_after(WAIT):
            future = await client.submit(gated, "never", None)
            await future.cancel()
            with pytest.raises(trioq.TaskCancelledError, match=r"'.*' was cancelled"):
                await future.exception()
            assert future.status == "cancelled"


async def test_exception_of_a_released_future_raises_lookup_error() -> None:
    async with cluster_and_client() as (_, client):
        with trio.fail_after(WAIT):
            future = await client.submit(add, 1, 1)
            assert await future.exception() is None
            await future.release()
            await client.status()  # the release (one-way) has been applied
            with pytest.raises(LookupError, match="never submitted, or released"):
                await future.exception()


async def test_a_cancelled_exception_wait_is_withdrawn_and_the_task_goes_on() -> None:
    async with cluster_and_client() as (cluster, client):
        with trio.fail_after(WAIT):
            future = await client.submit(gated, "slow", 7)
            with trio.CancelScope() as scope:
                async with trio.open_nursery() as nursery:

                    async def cancel_once_parked() -> None:
                        await procs.poll_until(lambda: readers(cluster, future) > 0)
                        scope.cancel()

                    nursery.start_soon(cancel_once_parked)
                    await future.exception()
            assert scope.cancelled_caught
            await procs.poll_until(lambda: readers(cluster, future) == 0)  # withdrawn
            assert future.status == "pending" and not future.done()
            GATES["slow"].set()
            assert await future.exception() is None
            assert await future == 7
