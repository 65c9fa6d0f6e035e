"""What faults do under trioq's default settings: detection times, items lost and duplicated.

Each scenario runs an embedded scheduler and puts the faulty link through
the proxy the fault tests use (``tests/faultproxy.py``):

* **freeze**: a consumer waits in ``get``; the link freezes (sockets open,
  nothing forwarded).  Reported: seconds until the client's ``get``
  raises, and until the scheduler drops the client (its leases return).
* **deadline**: the same frozen link, with the ``get`` under
  ``trio.fail_after(1)``: seconds until ``TooSlowError``.
* **cut**: a producer streams ``ITEMS`` items through the proxy, with
  ``client.flush()`` every ``FLUSH_EVERY``; the link is cut at a random
  point; the producer reconnects and resends from its last confirmed
  flush.  A consumer reads everything: items lost and duplicated are
  counted exactly.

Run ``python bench/faults.py`` (``--quick`` for a short pass); it prints
medians over ``--repeat`` runs.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from faultproxy import FaultProxy

import trioq
from trioq._wire.heartbeat import HEARTBEAT_INTERVAL, MISSED_BEATS

ITEMS = 5000
FLUSH_EVERY = 100


async def freeze_once(deadline: float | None) -> tuple[float, float]:
    """(seconds until the client notices, seconds until the scheduler drops it)."""
    dropped = float("nan")
    async with trioq.open_cluster() as cluster, trio.open_nursery() as nursery:
        proxy = FaultProxy.to(cluster.address)
        await nursery.start(proxy.serve)
        async with trioq.connect(proxy.address, token=cluster.token, name="far") as far:
            queue = far.queue("q")
            await queue.qsize()
            proxy.freeze()
            began = trio.current_time()
            try:
                with trio.fail_after(deadline if deadline is not None else float("inf")):
                    await queue.get()
            except (trio.BrokenResourceError, trio.TooSlowError):
                pass
            noticed = trio.current_time() - began
            if deadline is None:
                state = cluster.scheduler.state
                while any(c["name"] == "far" for c in state.status()["clients"]):  # noqa: ASYNC110
                    await trio.sleep(0.05)  # nothing tells this process: poll the status
                dropped = trio.current_time() - began
            proxy.thaw()
        nursery.cancel_scope.cancel()
    return noticed, dropped


async def cut_once(seed: int) -> tuple[int, int]:
    """(items lost, items duplicated) for a stream cut at a random point."""
    rng = random.Random(seed)
    cut_after = rng.randrange(FLUSH_EVERY, ITEMS - FLUSH_EVERY)
    received: list[int] = []
    done = trio.Event()
    async with trioq.open_cluster() as cluster, trio.open_nursery() as nursery:
        proxy = FaultProxy.to(cluster.address)
        await nursery.start(proxy.serve)

        async def consume() -> None:
            async with trioq.connect(cluster.address) as near:
                queue = near.queue("stream")
                while (item := await queue.get()) is not None:
                    received.append(item)
            done.set()

        nursery.start_soon(consume)
        confirmed = 0  # items up to here are in the scheduler
        sent = 0
        while confirmed < ITEMS:
            try:
                async with trioq.connect(proxy.address, token=cluster.token) as far:
                    queue = far.queue("stream")
                    sent = confirmed  # resend what was not confirmed
                    while sent < ITEMS:
                        await queue.put(sent)
                        sent += 1
                        if sent == cut_after:
                            proxy.cut()
                            cut_after = -1
                        if sent % FLUSH_EVERY == 0 or sent == ITEMS:
                            await far.flush()
                            confirmed = sent
            except trio.BrokenResourceError:
                continue
        async with trioq.connect(cluster.address) as near:
            await near.queue("stream").put(None)
        with trio.fail_after(60):
            await done.wait()
        nursery.cancel_scope.cancel()
    counts: dict[int, int] = {}
    for item in received:
        counts[item] = counts.get(item, 0) + 1
    lost = sum(1 for i in range(ITEMS) if i not in counts)
    duplicated = sum(n - 1 for n in counts.values() if n > 1)
    return lost, duplicated


async def main(repeat: int) -> None:
    limit = MISSED_BEATS * HEARTBEAT_INTERVAL
    print(f"heartbeat every {HEARTBEAT_INTERVAL:g} s, a peer silent {limit:g} s is gone")
    frozen = [await freeze_once(None) for _ in range(repeat)]
    print(
        f"freeze: client notices in {statistics.median(f[0] for f in frozen):.2f} s, "
        f"scheduler drops it in {statistics.median(f[1] for f in frozen):.2f} s "
        f"(median of {repeat})"
    )
    deadlines = [(await freeze_once(1.0))[0] for _ in range(repeat)]
    print(f"deadline: fail_after(1) raises TooSlowError after {statistics.median(deadlines):.2f} s")
    cuts = [await cut_once(seed) for seed in range(repeat)]
    lost = sum(c[0] for c in cuts)
    duplicated = sum(c[1] for c in cuts)
    print(
        f"cut: {repeat} streams of {ITEMS} items, flush every {FLUSH_EVERY}, resend from the "
        f"last flush: {lost} lost, {duplicated} duplicated in all "
        f"(at-least-once: a resent item that had arrived is there twice)"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="one run of each")
    args = parser.parse_args()
    trio.run(main, 1 if args.quick else args.repeat)
