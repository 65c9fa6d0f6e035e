"""Compiled core against its pure-Python twin, side by side in one run.

Times three workloads on ``trioq._core`` (Cython) and ``trioq._core_py``
(the twin), reports the median of ``--repeat`` runs, ops/s, and the
compiled/twin speed ratio, with the date, the machine and the command, so
the output can be pasted into ``bench/RESULTS.md`` as it is.

Workloads (defined in ``benchmarks/_workloads.py``, shared with asv):

* decode: ``--n`` frames with 16-byte payloads, fed to one ``FrameDecoder``
  in 64 KiB chunks, every whole frame drained after each ``feed``.
  One op = one frame.
* schedule: ``PriorityScheduler`` (pull), 4 workers x 4 slots, 1,024 tasks
  queued with mixed priorities; each step one task finishes and one is
  added and dispatched: ``task_done``, ``request_work``, ``add_task``,
  ``assignments`` (which returns one pair).  One op = one call, so
  ``--n`` ops = ``--n / 4`` steps.
* encode: ``--n`` frames with 16-byte payloads through one
  ``FrameEncoder.write``, ``take()`` every 256 frames.  One op = one frame.

Timing: ``time.perf_counter`` around the work only (setup is untimed), the
cyclic garbage collector off while timing (as ``timeit`` does), one
untimed warm-up run per workload and core, then the two cores alternate
run by run so a change in machine load hits both alike.  Exit status 2 when the
compiled core cannot be imported, unless ``--allow-missing``.

Usage: ``python bench/core_ratio.py [--n 100000] [--repeat 7] [--quick]``.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # for benchmarks._workloads

try:
    import trioq  # noqa: F401  (an installed trioq, e.g. `pip install -e .`)
except ImportError:  # run from a source tree that was built in place
    sys.path.insert(1, str(HERE.parent))

from benchmarks import _workloads  # noqa: E402
from machine import describe_machine  # noqa: E402

from trioq import _impl  # noqa: E402

TARGET_RATIO = 5.0
SCHEDULE_POLICY = "pull"

Prepare = Callable[[ModuleType, int], Callable[[], int]]


def _prepare_decode(core: ModuleType, n: int) -> Callable[[], int]:
    return _workloads.prepare_decode(core, n, payload_size=16, chunk_size=64 * 1024)


def _prepare_schedule(core: ModuleType, n: int) -> Callable[[], int]:
    steps = n // _workloads.calls_per_step(SCHEDULE_POLICY)
    return _workloads.prepare_schedule(core, steps, policy=SCHEDULE_POLICY)


def _prepare_encode(core: ModuleType, n: int) -> Callable[[], int]:
    return _workloads.prepare_encode(core, n, payload_size=16, flush_every=256)


def _schedule_ops(n: int) -> int:
    per_step = _workloads.calls_per_step(SCHEDULE_POLICY)
    return (n // per_step) * per_step


# name, prepare, ops actually done for --n, what one op is
WORKLOADS: list[tuple[str, Prepare, Callable[[int], int], str]] = [
    (
        "decode",
        _prepare_decode,
        lambda n: n,
        "frames (16-byte payloads) decoded from 64 KiB chunks, drained after each feed",
    ),
    (
        "schedule",
        _prepare_schedule,
        _schedule_ops,
        "scheduler calls, pull policy, 4 workers x 4 slots, backlog 1,024, mixed "
        "priorities; per step: task_done + request_work + add_task + assignments "
        "(1 pair); 1 call = 1 op",
    ),
    (
        "encode",
        _prepare_encode,
        lambda n: n,
        "frames (16-byte payloads) via FrameEncoder.write, take() every 256 frames",
    ),
]


def _time_once(run: Callable[[], int]) -> float:
    gc.collect()
    gc.disable()
    try:
        start = time.perf_counter()
        run()
        return time.perf_counter() - start
    finally:
        gc.enable()


def time_workload(
    prepare: Prepare, cores: list[ModuleType], n: int, repeat: int
) -> list[list[float]]:
    """Seconds of each of ``repeat`` runs on fresh state, per core.

    The cores take turns run by run (after one untimed warm-up each), so a
    change in the machine's load during the measurement hits both alike.
    """
    for core in cores:
        prepare(core, n)()  # warm-up: caches, allocator, first-call costs
    times: list[list[float]] = [[] for _ in cores]
    for _ in range(repeat):
        for core, core_times in zip(cores, times, strict=True):
            core_times.append(_time_once(prepare(core, n)))
    return times


def _command() -> str:
    argv = getattr(sys, "orig_argv", None) or [sys.executable, *sys.argv]
    return shlex.join(argv)


def _fmt_time(seconds: float) -> str:
    if seconds >= 1:
        return f"{seconds:.3f} s"
    return f"{seconds * 1e3:.2f} ms"


def _fmt_rate(ops_per_s: float) -> str:
    if ops_per_s >= 1e6:
        return f"{ops_per_s / 1e6:.2f} M/s"
    return f"{ops_per_s / 1e3:.1f} k/s"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Time trioq's compiled core against its pure-Python twin in one run."
    )
    parser.add_argument("--n", type=int, default=100_000, help="ops per workload (default 100000)")
    parser.add_argument(
        "--repeat", type=int, default=7, help="timed runs per workload and core (default 7)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="smoke pass: --n 2000 --repeat 3 (well under a second)"
    )
    parser.add_argument(
        "--allow-missing",
        action="store_true",
        help="time the twin alone when the compiled core is missing, instead of failing",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.n, args.repeat = 2_000, 3
    if args.n < 4 or args.repeat < 1:
        parser.error("--n must be at least 4 and --repeat at least 1")

    compiled = _impl.compiled_core()
    twin = _impl.python_core()
    if compiled is None and not args.allow_missing:
        print(
            "core_ratio: the compiled core trioq._core cannot be imported; build it with "
            "`pip install -e .` (or pass --allow-missing to time the twin alone)",
            file=sys.stderr,
        )
        return 2

    print("trioq core: compiled (trioq._core) vs pure-Python twin (trioq._core_py)")
    print(f"date:     {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}")
    print(
        f"machine:  {describe_machine()}; "
        f"{platform.python_implementation()} {platform.python_version()}"
    )
    if hasattr(os, "getloadavg"):
        print("load:     " + " ".join(f"{x:.2f}" for x in os.getloadavg()) + " (1/5/15 min)")
    print(f"command:  {_command()}")
    print(f"compiled: {compiled.__file__ if compiled is not None else 'MISSING'}")
    print(f"twin:     {twin.__file__}")
    print(
        f"timing:   median of {args.repeat} runs after 1 warm-up, cores alternating run by run, "
        "gc off while timing, setup untimed"
    )
    print()
    for name, _prepare, ops_for, what in WORKLOADS:
        print(f"  {name:<8} {ops_for(args.n):,} ops = {what}")
    print()

    header = (
        f"{'workload':<9}{'ops':>9}  {'compiled median':>16}{'compiled ops/s':>16}"
        f"  {'twin median':>12}{'twin ops/s':>13}  {'ratio':>7}"
    )
    print(header)
    print("-" * len(header))
    misses = []
    for name, prepare, ops_for, _what in WORKLOADS:
        ops = ops_for(args.n)
        if compiled is not None:
            compiled_times, twin_times = time_workload(
                prepare, [compiled, twin], args.n, args.repeat
            )
            twin_median = statistics.median(twin_times)
            compiled_median = statistics.median(compiled_times)
            ratio = twin_median / compiled_median
            compiled_cols = (
                f"{_fmt_time(compiled_median):>16}{_fmt_rate(ops / compiled_median):>16}"
            )
            ratio_col = f"{ratio:>6.1f}x"
            if ratio < TARGET_RATIO:
                misses.append(f"{name} {ratio:.1f}x")
        else:
            (twin_times,) = time_workload(prepare, [twin], args.n, args.repeat)
            twin_median = statistics.median(twin_times)
            compiled_cols = f"{'missing':>16}{'-':>16}"
            ratio_col = f"{'-':>7}"
        print(
            f"{name:<9}{ops:>9,}  {compiled_cols}"
            f"  {_fmt_time(twin_median):>12}{_fmt_rate(ops / twin_median):>13}  {ratio_col}"
        )
    print()
    if compiled is None:
        print("ratio: not measured (compiled core missing, --allow-missing)")
    elif misses:
        print(f"ratio: below the {TARGET_RATIO:g}x target on: {', '.join(misses)}")
    else:
        print(f"ratio: every workload meets the {TARGET_RATIO:g}x target")
    return 0


if __name__ == "__main__":
    sys.exit(main())
