"""What every contender shares: settings, measurements, statistics, and a
producer/consumer pair of OS processes driven in lock step.

The pair (``run_pair``) is two ``multiprocessing`` *spawn* processes, side A
(producer, then pinger) and side B (consumer, then ponger), synchronised by
one ``Barrier`` before and after every timed run, reporting to the parent
through a results queue.  A contender supplies the two side functions; the
ones here (``link_side_a`` / ``link_side_b``) drive any blocking transport
that offers the small ``Link`` interface, so a contender built on a blocking
API only writes an ``opener``.

Timing: a throughput run starts when side A reads ``time.monotonic_ns()``
right after the start barrier and ends when side B has received (and
deserialised) the last item and reads the same clock.  CLOCK_MONOTONIC is
one system-wide clock on Linux (and the other platforms CPython supports),
so the two readings can be subtracted.  A round trip is timed inside side A
with ``time.perf_counter_ns()``.  Every run is preceded by one untimed
warm-up run of a tenth of the size.
"""

from __future__ import annotations

import multiprocessing
import queue
import statistics
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

ITEM_PAYLOAD = "x" * 16


def make_items(n: int) -> list[dict[str, Any]]:
    """The item every contender moves: a small msgpack-able dict."""
    return [{"i": i, "payload": ITEM_PAYLOAD} for i in range(n)]


def chunked(items: list[Any], size: int) -> list[list[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def batch_sizes(n: int, size: int) -> list[int]:
    """The lengths of ``chunked`` of ``n`` items: what a batched consumer takes."""
    return [min(size, n - i) for i in range(0, n, size)]


# --------------------------------------------------------------------------
# settings and measurements


@dataclass(frozen=True)
class RunConfig:
    """What one contender is asked to do."""

    repeat: int  # timed runs per measurement; the median is reported
    items: int  # items (or tasks) per throughput run
    round_trips: int  # timed round trips per latency run
    batch: int = 64  # items per batch in the batched measurements
    timeout: float = 120.0  # seconds any single wait may take before giving up

    @property
    def warmup_items(self) -> int:
        return max(1, self.items // 10)

    @property
    def warmup_round_trips(self) -> int:
        return max(1, self.round_trips // 10)


@dataclass(frozen=True)
class Throughput:
    """Units per second, one figure per timed run."""

    runs: list[float]
    count: int  # units moved per run
    unit: str = "items/s"
    note: str = ""
    kind: str = field(default="throughput", init=False)

    @property
    def median(self) -> float:
        return statistics.median(self.runs)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "median": self.median}


@dataclass(frozen=True)
class Latency:
    """Round-trip percentiles in seconds, one pair per timed run."""

    p50_runs: list[float]
    p99_runs: list[float]
    count: int  # timed round trips per run
    note: str = ""
    kind: str = field(default="latency", init=False)

    @property
    def p50(self) -> float:
        return statistics.median(self.p50_runs)

    @property
    def p99(self) -> float:
        return statistics.median(self.p99_runs)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "unit": "s", "p50": self.p50, "p99": self.p99}


Measurement = Throughput | Latency


def percentiles(durations: list[float]) -> tuple[float, float]:
    """(p50, p99) of a list of durations."""
    if len(durations) < 2:
        return durations[0], durations[0]
    cuts = statistics.quantiles(durations, n=100, method="inclusive")
    return cuts[49], cuts[98]


def time_round_trips(one_round_trip: Callable[[], object], n: int) -> tuple[float, float]:
    """Call ``one_round_trip`` ``n`` times; (p50, p99) of its duration in s."""
    durations = []
    for _ in range(n):
        start = time.perf_counter_ns()
        one_round_trip()
        durations.append((time.perf_counter_ns() - start) * 1e-9)
    return percentiles(durations)


# --------------------------------------------------------------------------
# the process pair


@dataclass(frozen=True)
class PairPlan:
    """The schedule both sides follow, identical in both processes."""

    cfg: RunConfig
    modes: tuple[str, ...] = ("single", "batched")

    def throughput_runs(self) -> Iterator[tuple[str, int, int]]:
        """(mode, run index, item count); run -1 is the untimed warm-up."""
        for mode in self.modes:
            yield mode, -1, self.cfg.warmup_items
            for run in range(self.cfg.repeat):
                yield mode, run, self.cfg.items

    def latency_runs(self) -> Iterator[tuple[int, int]]:
        """(run index, round trips); run -1 is the untimed warm-up."""
        yield -1, self.cfg.warmup_round_trips
        for run in range(self.cfg.repeat):
            yield run, self.cfg.round_trips


# A side function runs in a child process: side(spec, plan, barrier, results).
Side = Callable[[dict[str, Any], PairPlan, Any, Any], None]


def _guarded(side: Side, spec: dict[str, Any], plan: PairPlan, barrier: Any, results: Any) -> None:
    """Child entry point: run ``side``; an exception reaches the parent as text."""
    try:
        side(spec, plan, barrier, results)
    except BaseException:
        results.put(("error", traceback.format_exc()))
        barrier.abort()  # release the other side at once
        raise SystemExit(1) from None  # the parent prints the traceback


def run_pair(
    side_a: Side,
    side_b: Side,
    spec: dict[str, Any],
    cfg: RunConfig,
    *,
    ctx: Any = None,
    notes: dict[str, str] | None = None,
    modes: tuple[str, ...] = ("single", "batched"),
) -> dict[str, Measurement]:
    """Run ``side_a`` and ``side_b`` in two spawned processes; collect.

    ``modes`` are the throughput runs (none: round trips only).

    ``spec`` is handed to both (it may hold queues from ``ctx``, the spawn
    context, which the caller created).  The sides report
    ``("start", mode, run, ns)`` (A), ``("end", mode, run, ns)`` (B) and
    ``("rt", run, p50, p99)`` (A).  Both processes are terminated and
    joined whatever happens.
    """
    ctx = ctx or multiprocessing.get_context("spawn")
    plan = PairPlan(cfg, modes)
    barrier = ctx.Barrier(2, timeout=cfg.timeout)
    results = ctx.Queue()
    procs = [
        ctx.Process(target=_guarded, args=(side, spec, plan, barrier, results), daemon=True)
        for side in (side_a, side_b)
    ]
    expected = 2 * sum(1 for _ in plan.throughput_runs()) + sum(1 for _ in plan.latency_runs())
    try:
        for proc in procs:
            proc.start()
        messages = _collect(results, procs, expected, cfg.timeout)
        for proc in procs:
            proc.join(cfg.timeout)
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.terminate()
            proc.join(5)
            if proc.is_alive():
                proc.kill()
                proc.join()
        results.close()
        results.join_thread()
    return _measurements(messages, plan, notes or {})


def _collect(results: Any, procs: list[Any], expected: int, timeout: float) -> list[tuple]:
    messages: list[tuple] = []
    deadline = time.monotonic() + timeout
    while len(messages) < expected:
        try:
            message = results.get(timeout=0.2)
        except queue.Empty:
            dead = [p for p in procs if p.exitcode not in (None, 0)]
            if dead:
                code = dead[0].exitcode
                raise RuntimeError(f"a benchmark process died (exit code {code})") from None
            if time.monotonic() > deadline:
                raise TimeoutError(f"no progress for {timeout:.0f} s") from None
            continue
        if message[0] == "error":
            raise RuntimeError("a benchmark process failed:\n" + message[1])
        messages.append(message)
        deadline = time.monotonic() + timeout
    return messages


def _measurements(
    messages: list[tuple], plan: PairPlan, notes: dict[str, str]
) -> dict[str, Measurement]:
    starts = {(m[1], m[2]): m[3] for m in messages if m[0] == "start"}
    ends = {(m[1], m[2]): m[3] for m in messages if m[0] == "end"}
    out: dict[str, Measurement] = {}
    for mode in plan.modes:
        rates = [
            plan.cfg.items / ((ends[mode, run] - starts[mode, run]) * 1e-9)
            for run in range(plan.cfg.repeat)
        ]
        key = f"throughput_{mode}"
        out[key] = Throughput(rates, plan.cfg.items, note=notes.get(key, ""))
    trips = sorted((m[1], m[2], m[3]) for m in messages if m[0] == "rt" and m[1] >= 0)
    out["round_trip"] = Latency(
        [t[1] for t in trips],
        [t[2] for t in trips],
        plan.cfg.round_trips,
        note=notes.get("round_trip", ""),
    )
    return out


# --------------------------------------------------------------------------
# sides for any blocking transport


class Link(Protocol):
    """One end of a blocking transport, as one side sees it."""

    def send(self, item: Any) -> None: ...
    def send_many(self, items: list[Any]) -> None: ...
    def recv(self) -> Any: ...
    def recv_many(self, n: int) -> list[Any]: ...
    def close(self) -> None: ...


# opener(spec, role) -> Link, role one of "producer", "consumer", "pinger",
# "ponger"; it must be a module-level function (it is pickled for spawn).
Opener = Callable[[dict[str, Any], str], Link]


def link_side_a(spec: dict[str, Any], plan: PairPlan, barrier: Any, results: Any) -> None:
    """Producer, then pinger, over ``spec["opener"]``."""
    opener: Opener = spec["opener"]
    cfg = plan.cfg
    link = opener(spec, "producer")
    try:
        for mode, run, n in plan.throughput_runs():
            items = make_items(n)
            batches = chunked(items, cfg.batch)
            barrier.wait()
            start = time.monotonic_ns()
            if mode == "single":
                for item in items:
                    link.send(item)
            else:
                for batch in batches:
                    link.send_many(batch)
            results.put(("start", mode, run, start))
            barrier.wait()  # B has everything
    finally:
        link.close()
    link = opener(spec, "pinger")
    try:
        ping = make_items(1)[0]

        def one_round_trip() -> None:
            link.send(ping)
            link.recv()

        for run, n in plan.latency_runs():
            barrier.wait()
            p50, p99 = time_round_trips(one_round_trip, n)
            results.put(("rt", run, p50, p99))
    finally:
        link.close()


def link_side_b(spec: dict[str, Any], plan: PairPlan, barrier: Any, results: Any) -> None:
    """Consumer, then ponger, over ``spec["opener"]``."""
    opener: Opener = spec["opener"]
    cfg = plan.cfg
    link = opener(spec, "consumer")
    try:
        for mode, run, n in plan.throughput_runs():
            barrier.wait()
            if mode == "single":
                for _ in range(n):
                    link.recv()
            else:
                for size in batch_sizes(n, cfg.batch):
                    link.recv_many(size)
            results.put(("end", mode, run, time.monotonic_ns()))
            barrier.wait()
    finally:
        link.close()
    link = opener(spec, "ponger")
    try:
        for _run, n in plan.latency_runs():
            barrier.wait()
            for _ in range(n):
                link.send(link.recv())
    finally:
        link.close()
