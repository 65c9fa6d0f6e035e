"""The README's Python examples run as printed, and its commands are the CI's."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()
BLOCKS = re.findall(r"^```python\n(.*?)^```$", README, flags=re.S | re.M)


def test_readme_opens_with_the_demo_and_the_test_command() -> None:
    first = re.search(r"^```sh\n(.*?)^```$", README, flags=re.S | re.M)
    assert first is not None
    commands = first.group(1).strip().splitlines()
    assert len(commands) == 2
    assert commands[0].endswith("python -m trioq demo")
    assert "pytest" in commands[1]


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_python_example_runs(index: int, tmp_path: Path) -> None:
    script = tmp_path / f"readme_{index}.py"
    script.write_text(BLOCKS[index])
    result = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip(), "the example printed nothing"
