"""The README's main job, ``python -m trioq demo``, runs and checks its results.

Each part runs under pytest-trio on a cluster of its own in a small
configuration and must check out; a part given a wrong task function must
say so.  The command runs as a subprocess: ``--quick`` exits 0 on both
cores; a failing part exits 1; Ctrl-C stops it within seconds with one line
and leaves no child process behind.  Waits on the subprocess poll its
output and its children (another process: nothing to await); nothing
synchronises by sleeping.
"""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

import trioq
from trioq.__main__ import main
from trioq._demo import demo as _demo
from trioq._demo import parts as _demo_parts

WAIT = 60.0  # seconds a part may take under pytest (on a loaded 2-core machine)
STOP_WITHIN = 5.0  # seconds the demo may take to stop after SIGINT


@pytest.fixture
async def cluster() -> AsyncIterator[trioq.Cluster]:
    async with trioq.open_cluster(workers=2) as cluster:
        yield cluster
        cluster.scheduler.state.validate()


# -- each part, small ---------------------------------------------------------------------


async def test_queue_part_checks_out(cluster: trioq.Cluster) -> None:
    with trio.fail_after(WAIT):
        await _demo_parts.demo_queue(cluster.address, 300, maxsize=8)


async def test_queue_part_checks_out_when_the_queue_never_fills(cluster: trioq.Cluster) -> None:
    with trio.fail_after(WAIT):
        await _demo_parts.demo_queue(cluster.address, 5, maxsize=8)


async def test_pipeline_part_checks_out(cluster: trioq.Cluster) -> None:
    with trio.fail_after(WAIT):
        await _demo_parts.demo_pipeline(cluster.address, 100, buffer=4)


async def test_channel_part_checks_out(cluster: trioq.Cluster) -> None:
    with trio.fail_after(WAIT):
        await _demo_parts.demo_channel(cluster.address, 50)


async def test_simple_queue_and_pipe_part_checks_out(cluster: trioq.Cluster) -> None:
    with trio.fail_after(WAIT):
        await _demo_parts.demo_simple_queue_and_pipe(cluster.address, 100, 50)


async def test_taskqueue_part_checks_out() -> None:
    with trio.fail_after(WAIT):
        await _demo_parts.demo_taskqueue(200, k=8)


def triple(x: int) -> int:
    return 3 * x


async def test_a_wrong_task_result_raises_demo_failure(
    cluster: trioq.Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_demo_parts, "double", triple)
    with trio.fail_after(WAIT), pytest.raises(_demo.DemoFailure, match="result 0 is 3, not 2"):
        await _demo_parts.demo_pipeline(cluster.address, 100, buffer=4)


# -- the command ----------------------------------------------------------------------------


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
    for part in range(1, 6):
        assert f"\n{part}. " in result.stdout


def test_demo_failure_is_reported_with_exit_status_one(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    async def failing(quick: bool = False) -> None:
        raise _demo.DemoFailure("a result was wrong")

    monkeypatch.setattr(_demo, "run_demo", failing)
    assert main(["demo", "--quick"]) == 1
    assert "demo FAILED: a result was wrong" in capsys.readouterr().err


def test_a_part_failing_for_real_stops_the_command_with_exit_status_one(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(_demo_parts, "double", triple)  # the in-process workers run it
    assert main(["demo", "--quick"]) == 1
    captured = capsys.readouterr()
    assert "demo FAILED: result 0 is 3, not 2" in captured.err
    assert "Traceback" not in captured.err
    assert "\n2. " in captured.out and "\n3. " not in captured.out
    assert "all results checked out" not in captured.out


# -- Ctrl-C -----------------------------------------------------------------------------------


def _children(pid: int) -> set[int]:
    """The live descendants of ``pid`` (psutil if installed, else Linux /proc)."""
    try:
        import psutil
    except ImportError:
        parents: dict[int, int] = {}
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                text = stat.read_text()
            except OSError:
                continue
            fields = text[text.rindex(")") + 2 :].split()
            if fields[0] != "Z":
                parents[int(stat.parent.name)] = int(fields[1])
        found, frontier = set(), {pid}
        while frontier:
            frontier = {child for child, parent in parents.items() if parent in frontier}
            found |= frontier
        return found
    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return set()
    return {c.pid for c in children if _alive(c.pid)}


def _alive(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie (Linux /proc)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return text[text.rindex(")") + 2] != "Z"


class _Demo:
    """``python -m trioq demo`` in a subprocess, its stdout read line by line."""

    def __init__(self, *args: str) -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "trioq", "demo", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        assert self.process.stdout is not None
        os.set_blocking(self.process.stdout.fileno(), False)
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.process.stdout, selectors.EVENT_READ)
        self.stdout = b""
        self.children: set[int] = set()  # every descendant seen while it ran

    def wait_for(self, text: str, *, child: bool = False, timeout: float = 90.0) -> None:
        """Read stdout until ``text`` appeared (and, with ``child``, a child process
        too), noting the demo's children all along."""
        deadline = time.monotonic() + timeout
        while text.encode() not in self.stdout or (child and not self.children):
            assert self.process.poll() is None, f"the demo ended early: {self.stdout!r}"
            assert time.monotonic() < deadline, f"no {text!r} in {self.stdout!r}"
            self.children |= _children(self.process.pid)
            if self.selector.select(timeout=0.05):  # a poll period, not a synchronisation
                assert self.process.stdout is not None
                self.stdout += self.process.stdout.read() or b""

    def interrupt(self) -> tuple[int, str, float]:
        """SIGINT; the exit status, stderr and the seconds it took to exit."""
        self.children |= _children(self.process.pid)
        self.selector.close()
        self.process.send_signal(signal.SIGINT)
        sent = time.monotonic()
        try:
            _, err = self.process.communicate(timeout=30)
        finally:
            self.process.kill()
        return self.process.returncode, err.decode(), time.monotonic() - sent


def _check_clean_stop(demo: _Demo) -> None:
    status, err, seconds = demo.interrupt()
    assert status == 130, err
    assert seconds < STOP_WITHIN, f"the demo took {seconds:.1f} s to stop"
    # One line; it names an error some clean-up raised, if one did (see the
    # trioq issue about endpoints closing on a cancelled connection).
    assert err.strip().splitlines()[-1].startswith("demo interrupted"), err
    assert "Traceback" not in err, err
    assert [pid for pid in demo.children if _alive(pid)] == []


def test_ctrl_c_in_the_first_part_stops_cleanly_with_one_line() -> None:
    demo = _Demo()
    demo.wait_for("\n1. ")
    _check_clean_stop(demo)


@pytest.mark.slow
def test_ctrl_c_while_a_process_worker_runs_leaves_no_child_process() -> None:
    demo = _Demo()
    demo.wait_for("\n5. ", child=True)
    assert demo.children, "the TaskQueue part started no child process"
    _check_clean_stop(demo)


def test_progress_bars_are_quiet_for_short_work(capsys: pytest.CaptureFixture[str]) -> None:
    with _demo_parts.progress(10, "short") as bar:
        bar.update(10)
    assert capsys.readouterr().err == ""
