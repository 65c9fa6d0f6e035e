"""trioq's peers, side by side in one run on this machine.

Why: trioq claims to do what dask.distributed's ``Queue`` and tasks do, over
TCP, faster.  Figures measured on different days and machines cannot back
that; this script measures every contender in one invocation, with the same
items and the same shapes of work, and prints trioq/peer ratios.

What: every contender is one entry in ``CONTENDERS``: a function that takes a
``RunConfig`` and returns measurements under shared keys.

* queue peers (two spawned OS processes, producer/consumer then
  pinger/ponger; items ``{"i": i, "payload": "x" * 16}``):
  ``throughput_single`` (items/s, one item per put/get),
  ``throughput_batched`` (items/s, ``--batch`` items per call where the peer
  offers it), ``round_trip`` (ping-pong p50/p99: A puts on "ping", B gets and
  puts on "pong", A gets):
  ``mp-queue`` (``multiprocessing.Queue``), ``zmq`` (pyzmq PUSH/PULL and
  REQ/REP, msgpack), ``trio-tcp`` (raw trio TCP, length-prefixed msgpack
  frames: the floor under any round trip), ``trio-relay`` (the same
  through a third process that copies bytes both ways: the floor under a
  brokered round trip such as trioq's), ``dask-queue``
  (``distributed.Queue``, one client per process).
* task peers: ``tasks_throughput`` (tasks/s, map + gather of N no-op tasks)
  and ``task_round_trip`` (submit one no-op, wait for its result):
  ``dask-tasks`` (LocalCluster, 2 worker processes, dask's defaults) and
  ``dask-tasks-inf`` (the same with the scheduler's task queuing turned off,
  ``worker-saturation: inf``; throughput only).

Each measurement has one untimed warm-up run, then ``--repeat`` timed runs;
the median is reported (for latency, the median of the runs' p50 and of their
p99).  Everything listens on 127.0.0.1 with ports the OS picks, and every
process and cluster started is closed when its contender ends, failed or not.
A contender whose package is missing is skipped with the reason; one that
fails is reported and makes the exit status 1.  Timing details:
``peers/harness.py``.

Usage (from the repository root)::

    python bench/peers.py                      # full run, < 3 minutes on 2 cores
    python bench/peers.py --quick              # smoke pass, well under 30 s
    python bench/peers.py --only zmq,trio-tcp --repeat 9 --json peers.json
    python bench/peers.py --items 20000 --items dask-queue=2000 --round-trips 1000
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import importlib.util
import json
import os
import platform
import shlex
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # for the peers/ package beside this file
if importlib.util.find_spec("trioq") is None:  # not installed: use the source tree
    sys.path.insert(1, str(HERE.parent))

from machine import describe_machine  # noqa: E402
from peers.dask_peers import (  # noqa: E402
    measure_dask_pipeline,
    measure_dask_queue,
    measure_dask_tasks,
    measure_dask_tasks_unqueued,
)
from peers.harness import Latency, Measurement, RunConfig, Throughput  # noqa: E402
from peers.local import (  # noqa: E402
    measure_mp_queue,
    measure_trio_relay,
    measure_trio_tcp,
    measure_zmq,
)

# The keys the ratios pair up, in printing order, with their labels.
KEYS = {
    "throughput_single": "throughput, 1 item per call",
    "throughput_batched": "throughput, batched",
    "round_trip": "round trip",
    "tasks_throughput": "no-op tasks, map+gather",
    "task_round_trip": "no-op task round trip",
    "pipeline_throughput": "pipeline scatter-map-map-gather",
}

# Ratios across keys: (trioq's key, the peer's key) -> the ratio's key and label.
# trioq's put_batch/get_batch keep every item separate (each leased, acked and
# handed to any consumer) while a peer's "batched" run ships one message per
# batch; this row compares them with the peer's one message per item instead.
CROSS_KEYS = {
    ("throughput_batched", "throughput_single"): (
        "throughput_batched_vs_single",
        "batched vs peer's 1 per message",
    ),
}


@dataclass(frozen=True)
class Contender:
    name: str
    summary: str
    run: Callable[[RunConfig], dict[str, Measurement]]
    requires: tuple[str, ...]  # modules that must import, else the contender is skipped
    counts: tuple[int, int]  # default (items or tasks per throughput run, round trips per run)
    quick_counts: tuple[int, int]  # the same under --quick


CONTENDERS: dict[str, Contender] = {}


def register(contender: Contender) -> None:
    CONTENDERS[contender.name] = contender


# ==========================================================================
# TRIOQ HOOK -- trioq's own contender is registered here, first.
#
# Write `measure_trioq(cfg: RunConfig) -> dict[str, Measurement]` (in
# peers/trioq_contender.py, say) doing the work the peers do, and return
# its figures under the keys in KEYS: "throughput_single",
# "throughput_batched", "round_trip" (its Queue, between two processes, as
# harness.run_pair runs them) and "tasks_throughput", "task_round_trip"
# (no-op tasks on 2 workers).  The ratios section compares it with every
# peer that has the same key; the name must stay "trioq".
# ==========================================================================

from peers.trioq_contender import (  # noqa: E402
    measure_trioq,
    measure_trioq_defaults,
    measure_trioq_pipe,
    measure_trioq_pipeline,
    measure_trioq_pipeline_pull,
    measure_trioq_tasks,
    measure_trioq_tasks_push,
)

# fmt: off
register(Contender("trioq", "trioq Queue between two processes, via a scheduler process",
                   measure_trioq, ("trioq",), (100_000, 5_000), (2_000, 200)))
register(Contender("trioq-defaults", "the same queue with every setting at its default",
                   measure_trioq_defaults, ("trioq",), (100_000, 5_000), (2_000, 200)))
register(Contender("trioq-tasks", "trioq no-op tasks, 2 worker processes, pull dispatch",
                   measure_trioq_tasks, ("trioq",), (20_000, 300), (500, 50)))
register(Contender("trioq-tasks-push", "the same, push dispatch with a prefetch window of 16",
                   measure_trioq_tasks_push, ("trioq",), (20_000, 300), (500, 50)))
register(Contender("trioq-pipeline", "trioq streaming pipeline, 2 worker processes, push",
                   measure_trioq_pipeline, ("trioq",), (5_000, 0), (300, 0)))
register(Contender("trioq-pipeline-pull", "the same pipeline, pull dispatch",
                   measure_trioq_pipeline_pull, ("trioq",), (5_000, 0), (300, 0)))
register(Contender("trioq-pipe", "trioq Pipe ping-pong between two processes",
                   measure_trioq_pipe, ("trioq",), (0, 5_000), (0, 200)))
# fmt: on

# fmt: off
register(Contender("mp-queue", "multiprocessing.Queue between two processes",
                   measure_mp_queue, (), (100_000, 5_000), (2_000, 200)))
register(Contender("zmq", "pyzmq PUSH/PULL + REQ/REP over TCP, msgpack",
                   measure_zmq, ("zmq", "msgpack"), (100_000, 5_000), (2_000, 200)))
register(Contender("trio-tcp", "raw trio TCP, length-prefixed msgpack frames",
                   measure_trio_tcp, ("trio", "msgpack"), (100_000, 5_000), (2_000, 200)))
register(Contender("trio-relay", "the same through a relay process that only copies bytes",
                   measure_trio_relay, ("trio", "msgpack"), (100_000, 5_000), (2_000, 200)))
register(Contender("dask-queue", "distributed.Queue, one client per process",
                   measure_dask_queue, ("distributed",), (5_000, 1_000), (200, 50)))
register(Contender("dask-tasks", "distributed no-op tasks, 2 worker processes",
                   measure_dask_tasks, ("distributed",), (2_000, 300), (200, 30)))
register(Contender("dask-tasks-inf", "the same, scheduler queuing off (worker-saturation inf)",
                   measure_dask_tasks_unqueued, ("distributed",), (4_000, 0), (200, 0)))
register(Contender("dask-pipeline", "the pipeline with distributed futures and as_completed",
                   measure_dask_pipeline, ("distributed",), (1_000, 0), (100, 0)))
# fmt: on


# --------------------------------------------------------------------------
# running


@dataclass
class Outcome:
    name: str
    status: str  # "ok", "skipped" or "failed"
    reason: str = ""
    cfg: RunConfig | None = None
    seconds: float = 0.0
    measurements: dict[str, Measurement] | None = None


def missing_module(contender: Contender) -> str | None:
    for module in contender.requires:
        try:
            __import__(module)
        except ImportError as exc:
            return f"{module} not importable ({exc})"
    return None


def run_contender(contender: Contender, cfg: RunConfig) -> Outcome:
    missing = missing_module(contender)
    if missing:
        return Outcome(contender.name, "skipped", missing)
    start = time.perf_counter()
    try:
        measurements = contender.run(cfg)
    except Exception as exc:
        traceback.print_exc()
        return Outcome(
            contender.name,
            "failed",
            f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1]}",
            cfg,
            time.perf_counter() - start,
        )
    return Outcome(contender.name, "ok", "", cfg, time.perf_counter() - start, measurements)


def _is_trioq(name: str) -> bool:
    return name == "trioq" or name.startswith("trioq-")


def ratios(outcomes: list[Outcome]) -> list[dict[str, Any]]:
    """Every trioq contender against every peer, key by key; > 1: trioq is better.

    Each trioq contender is compared on the keys it measures ("trioq": queue
    keys; "trioq-tasks" and "trioq-tasks-push": task keys, one per dispatch
    policy), so two policies measuring the same key each get their row.
    """
    by_name = {o.name: o.measurements for o in outcomes if o.measurements}
    rows: list[dict[str, Any]] = []
    for mine_name, ours in by_name.items():
        if not _is_trioq(mine_name):
            continue
        for peer, theirs in by_name.items():
            if _is_trioq(peer):
                continue
            for key in KEYS:
                mine, other = ours.get(key), theirs.get(key)
                if isinstance(mine, Throughput) and isinstance(other, Throughput):
                    pairs = [("median", mine.median / other.median)]
                elif isinstance(mine, Latency) and isinstance(other, Latency):
                    pairs = [("p50", other.p50 / mine.p50), ("p99", other.p99 / mine.p99)]
                else:
                    continue
                rows += [
                    {"trioq": mine_name, "peer": peer, "key": key, "stat": st, "ratio": r}
                    for st, r in pairs
                ]
            for (key, peer_key), (cross, _) in CROSS_KEYS.items():
                mine, other = ours.get(key), theirs.get(peer_key)
                if isinstance(mine, Throughput) and isinstance(other, Throughput):
                    ratio = mine.median / other.median
                    rows.append(
                        {
                            "trioq": mine_name,
                            "peer": peer,
                            "key": cross,
                            "stat": "median",
                            "ratio": ratio,
                        }
                    )
    return rows


# --------------------------------------------------------------------------
# printing


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "absent"


def describe_run() -> dict[str, str]:
    argv = getattr(sys, "orig_argv", None) or [sys.executable, *sys.argv]
    load = " ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": describe_machine(),
        "load": f"{load} (1/5/15 min)",
        "python": f"{platform.python_implementation()} {platform.python_version()} "
        f"({sys.executable})",
        "command": shlex.join(argv),
        "packages": ", ".join(
            f"{d} {_version(d)}" for d in ("trioq", "trio", "msgpack", "pyzmq", "distributed")
        ),
    }


def fmt_rate(value: float) -> str:
    return f"{value / 1e6:.2f} M" if value >= 1e6 else f"{value / 1e3:.1f} k"


def fmt_us(seconds: float) -> str:
    return f"{seconds * 1e6:,.1f} us"


def print_table(outcomes: list[Outcome]) -> None:
    w = max(len(o.name) for o in outcomes) + 2
    header = f"{'contender':<{w}}{'measurement':<30}{'median':>17}  {'runs min..max':<26}{'n':>7}"
    print(header)
    print("-" * len(header))
    notes = []
    for o in outcomes:
        if not o.measurements:
            continue
        order = {key: i for i, key in enumerate(KEYS)}
        for key, m in sorted(o.measurements.items(), key=lambda kv: order.get(kv[0], len(order))):
            label = KEYS.get(key, key)
            if key == "throughput_batched" and o.cfg:
                label += f" x{o.cfg.batch}"
            if isinstance(m, Throughput):
                spread = f"{fmt_rate(min(m.runs))}..{fmt_rate(max(m.runs))}"
                median = f"{fmt_rate(m.median)} {m.unit}"
                print(f"{o.name:<{w}}{label:<30}{median:>17}  {spread:<26}{m.count:>7}")
            else:
                for stat, value, runs in (("p50", m.p50, m.p50_runs), ("p99", m.p99, m.p99_runs)):
                    spread = f"{fmt_us(min(runs))}..{fmt_us(max(runs))}"
                    print(
                        f"{o.name:<{w}}{label + ' ' + stat:<30}{fmt_us(value):>17}  "
                        f"{spread:<26}{m.count:>7}"
                    )
            if m.note:
                notes.append(f"  {o.name} {label}: {m.note}")
    if notes:
        print("\nnotes (n = items, tasks or round trips per timed run):")
        print("\n".join(notes))


def print_ratios(rows: list[dict[str, Any]]) -> None:
    print("\nratios (trioq vs peer; throughput trioq/peer, latency peer/trioq; > 1: trioq better)")
    if not rows:
        print("  trioq not measured")
        return
    for row in rows:
        cross = {key: label for key, label in CROSS_KEYS.values()}
        label = f"{KEYS.get(row['key']) or cross[row['key']]} {row['stat']}"
        print(f"  {row['trioq']:<17} vs {row['peer']:<16}{label:<34}{row['ratio']:>8.2f}x")


# --------------------------------------------------------------------------
# command line


def parse_counts(values: list[str]) -> tuple[int | None, dict[str, int]]:
    """``["20000", "dask-queue=2000,zmq=50000"]`` -> (20000, {...})."""
    default, per_name = None, {}
    for value in values:
        for part in value.split(","):
            name, sep, number = part.rpartition("=")
            if sep:
                if name not in CONTENDERS:
                    raise SystemExit(f"unknown contender {name!r} in {part!r}")
                per_name[name] = int(number)
            else:
                default = int(number)
    return default, per_name


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--only", help="comma-separated contenders (default: all): " + ", ".join(CONTENDERS)
    )
    parser.add_argument("--repeat", type=int, help="timed runs per measurement (default 5)")
    parser.add_argument(
        "--items",
        action="append",
        default=[],
        metavar="N|NAME=N[,...]",
        help="items (tasks) per throughput run, for all or per contender",
    )
    parser.add_argument(
        "--round-trips",
        action="append",
        default=[],
        metavar="N|NAME=N[,...]",
        help="round trips per latency run, for all or per contender",
    )
    parser.add_argument("--batch", type=int, default=64, help="items per batch (default 64)")
    parser.add_argument(
        "--timeout",
        type=float,
        default=120.0,
        help="seconds without progress before a contender fails (default 120)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke pass: tiny counts, 2 runs; peers whose packages are missing are skipped",
    )
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write results as JSON")
    args = parser.parse_args(argv)

    names = args.only.split(",") if args.only else list(CONTENDERS)
    unknown = [n for n in names if n not in CONTENDERS]
    if unknown:
        parser.error(f"unknown contender(s) {', '.join(unknown)}; known: {', '.join(CONTENDERS)}")
    repeat = args.repeat or (2 if args.quick else 5)
    items_all, items_by = parse_counts(args.items)
    trips_all, trips_by = parse_counts(args.round_trips)

    run_info = describe_run()
    print("trioq peers: side-by-side throughput and round trip")
    for key, value in run_info.items():
        print(f"{key + ':':<10}{value}")
    print(
        f"settings: {repeat} timed runs per measurement (median reported) after 1 warm-up, "
        f"batch {args.batch}"
    )
    print()

    outcomes = []
    for name in names:
        c = CONTENDERS[name]
        items, round_trips = c.quick_counts if args.quick else c.counts
        cfg = RunConfig(
            repeat=repeat,
            items=items_by.get(name, items_all or items),
            round_trips=trips_by.get(name, trips_all or round_trips),
            batch=args.batch,
            timeout=args.timeout,
        )
        print(f"running {name} ({c.summary}) ...", end=" ", flush=True)
        outcome = run_contender(c, cfg)
        print(f"{outcome.status} {outcome.seconds:.1f} s {outcome.reason}".rstrip(), flush=True)
        outcomes.append(outcome)

    print()
    print_table(outcomes)
    for o in outcomes:
        if o.status != "ok":
            print(f"{o.name}: {o.status}: {o.reason}")
    ratio_rows = ratios(outcomes)
    print_ratios(ratio_rows)

    if args.json:
        doc = {
            **run_info,
            "settings": {"repeat": repeat, "batch": args.batch, "quick": args.quick},
            "contenders": {
                o.name: {
                    "status": o.status,
                    "reason": o.reason,
                    "seconds": o.seconds,
                    "items": o.cfg.items if o.cfg else None,
                    "round_trips": o.cfg.round_trips if o.cfg else None,
                    "measurements": {k: m.to_json() for k, m in (o.measurements or {}).items()},
                }
                for o in outcomes
            },
            "ratios": ratio_rows,
        }
        args.json.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
        print(f"\nwrote {args.json}")
    return 1 if any(o.status == "failed" for o in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
