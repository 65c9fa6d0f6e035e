"""``Client.flush`` and ``Queue.flush``: confirmed delivery (issue #13, item 1).

A returned ``put`` is taken by the connection; after ``flush`` it is in the
scheduler, or its refusal is raised.  The link goes through ``FaultProxy``
so that "taken but not yet delivered" is real: throttled, frozen or cut.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
from clusters import queue_status
from faultproxy import FaultProxy

import trioq

TIMEOUT = 20
ITEM = b"x" * 100


@asynccontextmanager
async def behind_proxy() -> AsyncIterator[tuple[Any, FaultProxy, trioq.Client, trioq.Client]]:
    """A cluster, a proxy to it, a client through the proxy and one straight to it."""
    async with trioq.open_cluster() as cluster, trio.open_nursery() as nursery:
        proxy = FaultProxy.to(cluster.address)
        await nursery.start(proxy.serve)
        async with (
            trioq.connect(proxy.address, token=cluster.token) as far,
            trioq.connect(cluster.address) as near,
        ):
            yield cluster, proxy, far, near
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("how", ["client", "queue"])
async def test_every_put_that_returned_is_in_the_scheduler_once_flush_returns(how: str) -> None:
    with trio.fail_after(TIMEOUT):
        async with behind_proxy() as (cluster, proxy, far, _):
            queue = far.queue("q")
            await queue.qsize()
            proxy.throttle(100_000)  # 200 puts of 100 bytes take about 0.2 s to cross
            for _ in range(200):
                await queue.put(ITEM)
            await (far.flush() if how == "client" else queue.flush())
            assert queue_status(cluster, "q")["size"] == 200


async def test_a_put_refused_after_it_returned_is_raised_by_flush() -> None:
    with trio.fail_after(TIMEOUT):
        async with behind_proxy() as (_, proxy, far, near):
            queue = far.queue("q")
            await queue.put(0)  # known to be unbounded now: puts commit locally
            proxy.freeze()
            await queue.put(1)  # taken by the connection, held in the proxy
            await near.queue("q").delete()
            proxy.thaw()
            with pytest.raises(trio.BrokenResourceError, match="deleted"):
                await far.flush()
            await far.flush()  # raised once: the next flush is clean


async def test_flush_on_a_cut_link_raises_broken_resource_error() -> None:
    with trio.fail_after(TIMEOUT):
        async with behind_proxy() as (cluster, proxy, far, _):
            queue = far.queue("q")
            await queue.put(0)
            await far.flush()
            proxy.freeze()
            await queue.put(1)  # never confirmed
            proxy.cut()
            with pytest.raises(trio.BrokenResourceError):
                await far.flush()
            assert queue_status(cluster, "q")["size"] == 1  # only what was confirmed
