"""``python -m trioq demo``: trioq's workloads, end to end on an embedded cluster.

An embedded cluster (a scheduler and 2 workers, in this process) serves
five parts run one after another (see ``_demo_parts``): a bounded queue
shared by two clients, a streaming pipeline, a replayable channel,
SimpleQueue and Pipe, and a TaskQueue over a thread and a process worker.
Each part prints a few lines and its throughput and raises ``DemoFailure``
unless every result checks out, so the command exits 0 only when all did.

Ctrl-C (SIGINT) cancels the run: everything the parts started (clients,
the cluster, a ``ProcessWorker``'s child) is stopped and joined by the
cancel scopes that own it, and ``run_demo`` then raises
``KeyboardInterrupt`` from a clean stack; its message names any error a
clean-up raised on the way, so the command still says it in one line.
"""

from __future__ import annotations

import signal
import time
from dataclasses import dataclass

import trio

from .. import __version__
from .._exceptions import collapse_single_groups
from .._impl import core_impl
from .parts import (
    DemoFailure,
    demo_channel,
    demo_pipeline,
    demo_queue,
    demo_simple_queue_and_pipe,
    demo_taskqueue,
)

__all__ = ["DemoFailure", "Sizes", "QUICK", "FULL", "run_demo", "run_parts"]


@dataclass(frozen=True)
class Sizes:
    """How much work each part does."""

    queue_items: int  #: items through the bounded queue (part 1)
    pipeline_items: int  #: items through the streaming pipeline (part 2)
    channel_pairs: int  #: elements each emitter appends (part 3)
    simple_queue_items: int  #: items through each SimpleQueue mode (part 4)
    pipe_values: int  #: values through the pipe and back (part 4)
    taskqueue_calls: int  #: calls over the thread and process workers (part 5)


QUICK = Sizes(3_000, 600, 600, 1_500, 1_500, 2_000)  # about 3 s, all of the command
FULL = Sizes(30_000, 5_000, 5_000, 10_000, 10_000, 20_000)  # about 20 s on 2 idle cores


async def run_parts(sizes: Sizes) -> None:
    """Start an embedded cluster with 2 workers and run the five parts in it."""
    from .._cluster import open_cluster

    async with open_cluster(workers=2) as cluster:
        print(f"embedded cluster: scheduler on {cluster.address}, 2 workers", flush=True)
        print("1. two clients share futures and data through a bounded queue", flush=True)
        await demo_queue(cluster.address, sizes.queue_items)
        print("2. a streaming pipeline: scatter -> map(inc) -> map(double) -> gather", flush=True)
        await demo_pipeline(cluster.address, sizes.pipeline_items)
        print("3. a replayable channel: two emitters, a combiner adding pairs", flush=True)
        await demo_channel(cluster.address, sizes.channel_pairs)
        print("4. SimpleQueue in pull and push mode; a Pipe to a worker task", flush=True)
        await demo_simple_queue_and_pipe(
            cluster.address, sizes.simple_queue_items, sizes.pipe_values
        )
        print("5. a TaskQueue over a thread worker and a process worker", flush=True)
        await demo_taskqueue(sizes.taskqueue_calls)


def _describe(exc: BaseException) -> str:
    """``Type: message`` of each distinct exception in ``exc`` (a group or not)."""
    leaves = exc.exceptions if isinstance(exc, BaseExceptionGroup) else (exc,)
    names = [
        _describe(e) if isinstance(e, BaseExceptionGroup) else f"{type(e).__name__}: {e}"
        for e in leaves
    ]
    return "; ".join(dict.fromkeys(names))


async def run_demo(quick: bool = False) -> None:
    """Run every part; raises ``DemoFailure`` on the first wrong result, and
    ``KeyboardInterrupt`` after a clean stop if SIGINT arrived."""
    started = time.perf_counter()
    print(f"trioq {__version__}, core: {core_impl()}", flush=True)
    interrupted = False
    try:
        with trio.open_signal_receiver(signal.SIGINT) as signals, collapse_single_groups():
            async with trio.open_nursery() as nursery:

                async def stop_on_signal() -> None:
                    nonlocal interrupted
                    async for _ in signals:
                        interrupted = True
                        nursery.cancel_scope.cancel()  # every part unwinds through its scopes
                        return

                nursery.start_soon(stop_on_signal)
                await run_parts(QUICK if quick else FULL)
                nursery.cancel_scope.cancel()  # done: stop listening
    except Exception as exc:
        if not interrupted:
            raise
        # Everything was still stopped and joined (the nurseries saw to it); an
        # error some clean-up raised on the way is named, in one line.
        raise KeyboardInterrupt(f"clean-up raised {_describe(exc)}") from None
    if interrupted:
        raise KeyboardInterrupt
    print(f"all results checked out ({time.perf_counter() - started:.1f} s)")
