"""The documentation's examples run, and the documentation builds.

Every ``docs/examples/*.py`` is a real program that checks its own results:
each one runs here in a fresh interpreter, once on the default core and
once on the pure-Python twin, and must exit 0.  The Sphinx build runs with
warnings as errors; it is skipped when Sphinx is not installed.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parent.parent / "docs"
EXAMPLES = sorted((DOCS / "examples").glob("*.py"))
TIMEOUT = 120  # seconds; each example takes about one


def _env(core: str) -> dict[str, str]:
    env = dict(os.environ)
    if core == "python":
        env["TRIOQ_PURE_PYTHON"] = "1"
        env.pop("TRIOQ_REQUIRE_COMPILED", None)
    else:
        env.pop("TRIOQ_PURE_PYTHON", None)
    return env


def test_there_are_examples() -> None:
    assert EXAMPLES, f"no examples found in {DOCS / 'examples'}"


@pytest.mark.parametrize("core", ["default", "python"])
@pytest.mark.parametrize("example", EXAMPLES, ids=[path.stem for path in EXAMPLES])
def test_example_runs_and_exits_zero(example: Path, core: str, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(example)],
        cwd=tmp_path,  # examples must not depend on the working directory
        env=_env(core),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, (
        f"{example.name} exited {result.returncode}\n"
        f"--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
    )


def test_every_example_is_shown_in_the_docs() -> None:
    included = set()
    for page in DOCS.glob("*.rst"):
        included.update(re.findall(r"literalinclude::\s*(\S+)", page.read_text("utf-8")))
    for example in EXAMPLES:
        assert f"examples/{example.name}" in included, f"no page includes {example.name}"


def test_docs_build_without_warnings(tmp_path: Path) -> None:
    pytest.importorskip("sphinx")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "sphinx",
            "-W",
            "--keep-going",
            "-b",
            "html",
            "-d",
            str(tmp_path / "doctrees"),
            str(DOCS),
            str(tmp_path / "html"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, f"--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
    assert (tmp_path / "html" / "index.html").is_file()
