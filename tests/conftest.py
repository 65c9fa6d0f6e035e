"""Shared fixtures: the core twins, and the guard against a silently missing build.

Every core test takes the ``core`` fixture and so runs once against the
compiled extension and once against the pure-Python twin.  The compiled
core is expected: if it cannot be imported the whole session fails, unless
``TRIOQ_ALLOW_MISSING_CORE=1`` says a twin-only run is intended.
"""

from __future__ import annotations

import os
from types import ModuleType

import pytest
from hypothesis import HealthCheck, settings

from trioq import _impl

# The embedded-cluster fixture ``cluster`` (test files may define their own).
pytest_plugins = ["clusters"]

settings.register_profile(
    "ci", max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "dev", max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("thorough", max_examples=2000, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

COMPILED = _impl.compiled_core()
PYTHON = _impl.python_core()


def pytest_sessionstart(session: pytest.Session) -> None:
    if COMPILED is None and not _impl._flag("TRIOQ_ALLOW_MISSING_CORE"):
        raise pytest.UsageError(
            "the compiled core trioq._core is missing: install with `pip install -e .` "
            "(which builds it in place), or set TRIOQ_ALLOW_MISSING_CORE=1 to test "
            "the pure-Python twin alone"
        )


def pytest_report_header(config: pytest.Config) -> str:
    return f"trioq core: active={_impl.core_impl()} compiled={'yes' if COMPILED else 'MISSING'}"


def _cores() -> list[object]:
    params: list[object] = [pytest.param(PYTHON, id="python")]
    params.insert(
        0,
        pytest.param(
            COMPILED,
            id="compiled",
            marks=pytest.mark.skipif(COMPILED is None, reason="compiled core not built"),
        ),
    )
    return params


@pytest.fixture(params=_cores())
def core(request: pytest.FixtureRequest) -> ModuleType:
    """The core module under test: compiled, then the twin."""
    return request.param


@pytest.fixture
def both_cores() -> tuple[ModuleType, ModuleType]:
    """(compiled, twin) for differential tests; skipped when not built."""
    if COMPILED is None:
        pytest.skip("compiled core not built")
    return COMPILED, PYTHON


@pytest.fixture(autouse=True)
def _fresh_gates() -> None:
    """Every test starts with the shared task gates closed (see gated_tasks)."""
    from gated_tasks import GATES

    GATES.clear()
