"""dask.distributed peers: the ``Queue`` and plain no-op tasks.

``dask-queue``: a ``LocalCluster`` (processes, 127.0.0.1, dashboard off) with
no workers, since a queue lives in the scheduler alone; the scheduler runs in
this (otherwise idle) parent process.  The producer and consumer are the
usual spawned pair (``harness.run_pair``), each with its own
``distributed.Client`` connected to the scheduler's address.  dask has no
batch put, so the batched run puts one item at a time and gets
``Queue.get(batch=N)``.

``dask-tasks``: a ``LocalCluster`` with 2 worker processes (one thread each,
behind the default nanny) and a client in this process; ``dask-tasks-inf``
the same with the scheduler's task queuing off (``worker-saturation: inf``):
with the default (1.1) a worker holds at most two tasks, so each completion
waits for the scheduler's reply and no-op throughput drops about threefold.  Throughput is
``client.map`` of N no-op tasks then ``client.gather`` of them, end to end;
the round trip is ``client.submit`` of one no-op and waiting for its result.
Every task has a fresh key (``pure=False``), so nothing is served from a
previous result.  dask is measured as shipped: its client batches messages
to the scheduler every 10 ms (hard-coded in ``Client``), which is most of
the single-task round trip.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

from peers.harness import (
    Latency,
    Measurement,
    RunConfig,
    Throughput,
    link_side_a,
    link_side_b,
    run_pair,
    time_round_trips,
)


def _local_cluster(n_workers: int) -> Any:
    from distributed import LocalCluster

    return LocalCluster(
        n_workers=n_workers,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        scheduler_port=0,
        dashboard_address=None,
        silence_logs=logging.ERROR,
    )


# --------------------------------------------------------------------------
# dask-queue


class _DaskQueueLink:
    def __init__(self, address: str, send_name: str | None, recv_name: str | None) -> None:
        from distributed import Client, Queue

        self._client = Client(address, set_as_default=False)
        self._send_q = Queue(send_name, client=self._client) if send_name else None
        self._recv_q = Queue(recv_name, client=self._client) if recv_name else None

    def send(self, item: Any) -> None:
        self._send_q.put(item)

    def send_many(self, items: list[Any]) -> None:
        for item in items:  # Queue has no batch put
            self._send_q.put(item)

    def recv(self) -> Any:
        return self._recv_q.get()

    def recv_many(self, n: int) -> list[Any]:
        return self._recv_q.get(batch=n)

    def close(self) -> None:
        self._client.close()


def _dask_queue_open(spec: dict[str, Any], role: str) -> _DaskQueueLink:
    prefix = spec["prefix"]
    items, ping, pong = f"{prefix}-items", f"{prefix}-ping", f"{prefix}-pong"
    send_recv = {
        "producer": (items, None),
        "consumer": (None, items),
        "pinger": (ping, pong),
        "ponger": (pong, ping),
    }
    return _DaskQueueLink(spec["address"], *send_recv[role])


def measure_dask_queue(cfg: RunConfig) -> dict[str, Measurement]:
    cluster = _local_cluster(n_workers=0)
    try:
        spec = {
            "opener": _dask_queue_open,
            "address": cluster.scheduler_address,
            "prefix": f"peers-{uuid.uuid4().hex}",
        }
        notes = {"throughput_batched": f"put one at a time (no batch put), get(batch={cfg.batch})"}
        return run_pair(link_side_a, link_side_b, spec, cfg, notes=notes)
    finally:
        cluster.close()


# --------------------------------------------------------------------------
# dask-tasks


def noop(x: Any) -> Any:
    return x


def _dask_tasks(cfg: RunConfig, *, round_trip: bool, note: str) -> dict[str, Measurement]:
    from distributed import Client

    cluster = _local_cluster(n_workers=2)
    try:
        with Client(cluster, set_as_default=False) as client:
            client.wait_for_workers(2, timeout=cfg.timeout)

            def map_gather(n: int) -> float:
                start = time.perf_counter()
                futures = client.map(noop, range(n), pure=False)
                client.gather(futures)
                elapsed = time.perf_counter() - start
                del futures
                return elapsed

            def one_round_trip() -> None:
                client.submit(noop, 0, pure=False).result()

            map_gather(cfg.warmup_items)
            rates = [cfg.items / map_gather(cfg.items) for _ in range(cfg.repeat)]
            out: dict[str, Measurement] = {
                "tasks_throughput": Throughput(rates, cfg.items, unit="tasks/s", note=note),
            }
            if round_trip:
                time_round_trips(one_round_trip, cfg.warmup_round_trips)
                trips = [
                    time_round_trips(one_round_trip, cfg.round_trips) for _ in range(cfg.repeat)
                ]
                out["task_round_trip"] = Latency(
                    [p50 for p50, _ in trips],
                    [p99 for _, p99 in trips],
                    cfg.round_trips,
                    note="client.submit then .result(); the client batches its sends every 10 ms",
                )
            return out
    finally:
        cluster.close()


def measure_dask_tasks(cfg: RunConfig) -> dict[str, Measurement]:
    """dask as shipped: the scheduler queues tasks (worker-saturation 1.1)."""
    return _dask_tasks(
        cfg, round_trip=True, note="client.map then client.gather; 2 workers x 1 thread"
    )


def measure_dask_tasks_unqueued(cfg: RunConfig) -> dict[str, Measurement]:
    """Throughput with the scheduler's queuing off (worker-saturation inf); one
    task's round trip does not depend on it, so it is not measured again."""
    import dask

    with dask.config.set({"distributed.scheduler.worker-saturation": float("inf")}):
        return _dask_tasks(cfg, round_trip=False, note="as dask-tasks, worker-saturation inf")


# --------------------------------------------------------------------------
# dask-pipeline: the streaming pipeline written with futures and as_completed


def inc(x: int) -> int:
    return x + 1


def double(x: int) -> int:
    return 2 * x


def measure_dask_pipeline(cfg: RunConfig) -> dict[str, Measurement]:
    """scatter -> submit(inc) -> submit(double) per item, results through
    ``as_completed``: the old distributed streams pipeline in today's API."""
    from distributed import Client, as_completed

    cluster = _local_cluster(n_workers=2)
    try:
        # as_completed finds its client as the default one
        with Client(cluster, set_as_default=True) as client:
            client.wait_for_workers(2, timeout=cfg.timeout)

            def pipeline(n: int) -> float:
                start = time.perf_counter()
                finals = []
                for i in range(n):
                    data = client.scatter(i, hash=False)
                    incremented = client.submit(inc, data, pure=False)
                    finals.append(client.submit(double, incremented, pure=False))
                total = 0
                for _, value in as_completed(finals, with_results=True):
                    total += value
                elapsed = time.perf_counter() - start
                if total != sum(2 * (i + 1) for i in range(n)):
                    raise AssertionError("dask pipeline results do not add up")
                return elapsed

            pipeline(cfg.warmup_items)
            rates = [cfg.items / pipeline(cfg.items) for _ in range(cfg.repeat)]
            note = "client.scatter + 2 x client.submit per item, as_completed(with_results)"
            return {"pipeline_throughput": Throughput(rates, cfg.items, unit="items/s", note=note)}
    finally:
        cluster.close()
