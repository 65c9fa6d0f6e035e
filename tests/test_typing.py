"""Typing as a user meets it: ``mypy --strict`` on small programs that use trioq.

``typing_programs/well_typed.py`` must pass (its ``assert_type`` lines pin
``Future[T]``, ``submit``, ``map``, ``gather``, ``scatter`` and
``TaskQueue.call``), and it runs too, so the types describe what trioq
really returns.  ``typing_programs/mistakes.py`` marks each of its mistakes
with the error code mypy must report on that line (and no other line may
have an error).  Those two are checked against this checkout's ``trioq``
(``MYPYPATH``), with trioq's own errors ignored: ``mypy`` on the package is a
separate check.  The last test checks the install itself: run from a
directory outside the checkout, mypy must find trioq, typed, through what
``pip install -e ".[test]"`` put in site-packages.

mypy runs in a subprocess (``sys.executable -m mypy``), so it sees this
interpreter's site-packages, with no configuration but the one written
here.
"""

from __future__ import annotations

import importlib
import os
import re
import site
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent  # the checkout under test
PROGRAMS = Path(__file__).resolve().parent / "typing_programs"
STRICT = "[mypy]\nstrict = True\n"
IGNORE_TRIOQ = "\n[mypy-trioq.*]\nignore_errors = True\n"  # only the programs are judged here
ERROR = re.compile(r"^(?P<file>[^:]+):(?P<line>\d+): error: .*?(?:  \[(?P<code>[\w-]+)\])?$")
MARK = re.compile(r"#\s*error:\s*(?P<code>[\w-]+)\s*$")
# An older mypy names the failed overload call instead of the argument at fault.
OVERLOADED = {"arg-type", "call-arg"}


def run_mypy(
    paths: list[Path], cwd: Path, *, config: str, mypypath: Path | None
) -> subprocess.CompletedProcess[str]:
    """``mypy`` in a fresh process, run from ``cwd`` with ``config`` as its only configuration."""
    (cwd / "mypy.ini").write_text(config)
    env = {k: v for k, v in os.environ.items() if k not in {"MYPYPATH", "PYTHONPATH"}}
    if mypypath is not None:
        env["MYPYPATH"] = str(mypypath)
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--config-file",
            str(cwd / "mypy.ini"),
            "--cache-dir",
            str(cwd / ".mypy_cache"),
            "--show-error-codes",
            "--no-color-output",
            "--no-error-summary",
            *(str(path) for path in paths),
        ],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def errors_by_line(output: str, name: str) -> dict[int, set[str]]:
    """The error codes mypy reported for the file called ``name``, by line."""
    found: dict[int, set[str]] = {}
    for line in output.splitlines():
        match = ERROR.match(line)
        if match and Path(match["file"]).name == name:
            found.setdefault(int(match["line"]), set()).add(match["code"] or "")
    return found


@pytest.fixture(scope="module")
def checked(tmp_path_factory: pytest.TempPathFactory) -> subprocess.CompletedProcess[str]:
    """One mypy run over copies of both programs (outside the checkout), against its trioq."""
    where = tmp_path_factory.mktemp("typing")
    paths = []
    for name in ("well_typed.py", "mistakes.py"):
        copy = where / name
        copy.write_text((PROGRAMS / name).read_text())
        paths.append(copy)
    return run_mypy(paths, where, config=STRICT + IGNORE_TRIOQ, mypypath=ROOT)


def test_the_well_typed_program_passes_mypy_strict(
    checked: subprocess.CompletedProcess[str],
) -> None:
    assert "error:" not in checked.stderr, checked.stderr
    assert errors_by_line(checked.stdout, "well_typed.py") == {}, checked.stdout


def test_every_mistake_is_reported_on_its_line_and_nothing_else(
    checked: subprocess.CompletedProcess[str],
) -> None:
    source = (PROGRAMS / "mistakes.py").read_text().splitlines()
    expected = {
        number: match["code"]
        for number, text in enumerate(source, start=1)
        if (match := MARK.search(text))
    }
    assert len(expected) >= 10  # the markers themselves were read
    found = errors_by_line(checked.stdout, "mistakes.py")
    assert sorted(found) == sorted(expected), checked.stdout
    for number, code in expected.items():
        codes = found[number]
        accepted = code in codes or (code in OVERLOADED and "call-overload" in codes)
        assert accepted, f"line {number} ({source[number - 1].strip()}): {codes}"


async def test_the_well_typed_program_runs() -> None:
    program = importlib.import_module("typing_programs.well_typed")
    await program.main()


def test_the_installed_package_is_found_and_typed_by_mypy(tmp_path: Path) -> None:
    """No checkout on the search path: mypy must follow the install in site-packages.

    ``pip install -e`` with setuptools' import-hook finder would fail this
    (mypy runs no code, so it cannot follow a hook); pyproject's
    ``package-dir`` makes the editable install a plain path .pth.
    """
    program = tmp_path / "user.py"
    program.write_text(
        "from typing import assert_type\n"
        "import trioq\n"
        "def double(x: int) -> int:\n"
        "    return 2 * x\n"
        "async def main(client: trioq.Client) -> None:\n"
        "    assert_type(await (await client.submit(double, 2)), int)\n"
    )
    result = run_mypy([program], tmp_path, config=STRICT, mypypath=None)
    pth_files = {
        path.name: path.read_text()
        for directory in site.getsitepackages()
        for path in Path(directory).glob("*trioq*.pth")
    }
    assert result.returncode == 0, (
        f"{result.stdout}{result.stderr}\ntrioq's .pth files in site-packages: {pth_files}"
    )
    assert (ROOT / "trioq" / "py.typed").is_file()
