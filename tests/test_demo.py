"""The README's main job, ``python -m trioq demo``, runs and checks its results."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from trioq import _demo
from trioq.__main__ import main


async def test_scheduler_demo_part_runs_under_pytest_trio() -> None:
    await _demo.demo_scheduler(300)


def test_codec_demo_part_checks_its_frames() -> None:
    _demo.demo_codec(1_000)


@pytest.mark.parametrize("pure", ["0", "1"], ids=["compiled", "python"])
def test_quick_demo_command_exits_zero_and_names_the_core(pure: str) -> None:
    env = dict(os.environ, TRIOQ_PURE_PYTHON=pure)
    if pure == "1":
        env.pop("TRIOQ_REQUIRE_COMPILED", None)
    result = subprocess.run(
        [sys.executable, "-m", "trioq", "demo", "--quick"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    expected = "python" if pure == "1" else "compiled"
    assert f"core: {expected}" in result.stdout
    assert "all results checked out" in result.stdout


def test_demo_failure_is_reported_with_exit_status_one(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    async def failing(quick: bool = False) -> None:
        raise _demo.DemoFailure("a result was wrong")

    monkeypatch.setattr(_demo, "run_demo", failing)
    assert main(["demo", "--quick"]) == 1
    assert "demo FAILED: a result was wrong" in capsys.readouterr().err
