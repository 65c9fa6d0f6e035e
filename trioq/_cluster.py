"""``open_cluster()``: an embedded scheduler (and workers) in the caller's nursery.

Rules: everything it starts lives in a nursery it owns and is cancelled
and joined when the ``async with`` block exits.  The cluster's token is
registered in this process, so ``trioq.connect(cluster.address)`` needs no
token argument here; other processes get it from ``cluster.token``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import trio

from ._client.dial import register_local_token
from ._exceptions import collapse_single_groups
from ._scheduler.server import Scheduler
from ._worker.worker import Worker

__all__ = ["Cluster", "open_cluster"]


@dataclass(frozen=True)
class Cluster:
    """A running embedded cluster."""

    address: str  #: ``tcp://host:port`` to pass to ``trioq.connect``
    token: str  #: the shared secret clients and workers authenticate with
    scheduler: Scheduler  #: the scheduler object (its ``state`` is inspectable)


@asynccontextmanager
async def open_cluster(
    workers: int = 0,
    *,
    nthreads: int = 1,
    host: str = "127.0.0.1",
    port: int = 0,
    token: str | None = None,
    dispatch: str = "pull",
    prefetch: int = 1,
) -> AsyncIterator[Cluster]:
    """Run a scheduler for the duration of an ``async with`` block.

    Listens on 127.0.0.1 and a free port by default; yields a ``Cluster``.
    ``workers`` in-process workers (``nthreads`` threads each) join it.
    ``dispatch`` and ``prefetch`` choose how tasks reach workers (see
    ``Scheduler``).  Leaving the block stops the scheduler and drops its
    state.  Raises what ``Scheduler`` raises (``ValueError`` for a bad
    ``dispatch``, ``prefetch`` or token, or no token on a non-loopback
    ``host``), ``ValueError`` for an ``nthreads`` below 1, ``OSError`` if it
    cannot listen.
    """
    scheduler = Scheduler(host, port, token=token, dispatch=dispatch, prefetch=prefetch)
    with collapse_single_groups():
        async with trio.open_nursery() as nursery:
            address = await nursery.start(scheduler.serve)
            register_local_token(address, scheduler.token)
            for index in range(workers):
                worker = Worker(address, name=f"worker-{index}", nthreads=nthreads)
                await nursery.start(worker.run)
            try:
                yield Cluster(address, scheduler.token, scheduler)
            finally:
                nursery.cancel_scope.cancel()
