"""Smoke passes of the benchmark scripts: they run and report, figures aside.

Performance claims come from the full runs recorded in bench/RESULTS.md;
these tests only keep the scripts working (CI runs nothing heavier).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench"


def _run(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def test_core_ratio_quick_pass_reports_every_workload_for_both_cores() -> None:
    result = _run(str(BENCH / "core_ratio.py"), "--quick")
    assert result.returncode == 0, result.stderr
    for workload in ("decode", "schedule", "encode"):
        assert f"\n{workload} " in result.stdout


def test_peers_quick_pass_measures_trioq_beside_the_peers_and_prints_ratios(
    tmp_path: Path,
) -> None:
    out = tmp_path / "peers.json"
    result = _run(
        str(BENCH / "peers.py"), "--quick", "--only", "trioq,mp-queue", "--json", str(out)
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "vs mp-queue" in result.stdout
    contenders = json.loads(out.read_text())["contenders"]
    for name in ("trioq", "mp-queue"):
        assert contenders[name]["status"] == "ok", contenders[name]
        measured = contenders[name]["measurements"]
        assert measured["throughput_single"]["median"] > 0
        assert measured["round_trip"]["p50"] > 0


def test_peers_quick_pass_measures_the_relay_floor_and_the_cross_key_ratio(
    tmp_path: Path,
) -> None:
    out = tmp_path / "peers.json"
    result = _run(
        str(BENCH / "peers.py"), "--quick", "--only", "trioq,trio-relay", "--json", str(out)
    )
    assert result.returncode == 0, result.stdout + result.stderr
    doc = json.loads(out.read_text())
    assert doc["contenders"]["trio-relay"]["status"] == "ok", doc["contenders"]["trio-relay"]
    assert doc["contenders"]["trio-relay"]["measurements"]["round_trip"]["p50"] > 0
    keys = {(row["peer"], row["key"]) for row in doc["ratios"] if row["trioq"] == "trioq"}
    assert ("trio-relay", "round_trip") in keys
    assert ("trio-relay", "throughput_batched_vs_single") in keys
    assert "batched vs peer's 1 per message" in result.stdout


def test_the_performance_page_figures_are_generated_from_the_committed_run() -> None:
    """docs/_generated/performance_figures.rst is ``bench/report.py``'s output for
    bench/results/peers-latest.json: nobody edited the figures by hand."""
    import importlib.util

    root = Path(__file__).resolve().parent.parent
    spec = importlib.util.spec_from_file_location("report", root / "bench" / "report.py")
    assert spec is not None and spec.loader is not None
    report = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(report)
    doc = json.loads((root / "bench" / "results" / "peers-latest.json").read_text("utf-8"))
    generated = (root / "docs" / "_generated" / "performance_figures.rst").read_text("utf-8")
    assert generated == report.figures_rst(doc)
