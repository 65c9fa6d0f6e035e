"""Picks the compiled core (``trioq._core``) or its pure-Python twin.

Rules: ``TRIOQ_PURE_PYTHON=1`` forces the twin.  ``TRIOQ_REQUIRE_COMPILED=1``
turns a missing or broken extension into an ``ImportError`` instead of a
silent fallback (CI sets it, so a build that quietly failed cannot pass).
The environment is read once, when trioq is first imported.
"""

from __future__ import annotations

import os
from types import ModuleType

__all__ = ["core", "core_impl", "compiled_core", "python_core"]


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def compiled_core() -> ModuleType | None:
    """The compiled extension module, or ``None`` if it cannot be imported."""
    try:
        from . import _core
    except ImportError:
        return None
    return _core


def python_core() -> ModuleType:
    """The pure-Python twin (always available)."""
    from . import _core_py

    return _core_py


def _select() -> ModuleType:
    if _flag("TRIOQ_PURE_PYTHON"):
        if _flag("TRIOQ_REQUIRE_COMPILED"):
            raise ImportError("TRIOQ_PURE_PYTHON and TRIOQ_REQUIRE_COMPILED are both set")
        return python_core()
    compiled = compiled_core()
    if compiled is not None:
        return compiled
    if _flag("TRIOQ_REQUIRE_COMPILED"):
        raise ImportError(
            "TRIOQ_REQUIRE_COMPILED is set but the compiled core trioq._core cannot be "
            "imported; build it with `pip install -e .` (or `pip install .` and run "
            "outside the source tree)"
        )
    return python_core()


core: ModuleType = _select()


def core_impl() -> str:
    """Which core is active: ``"compiled"`` (Cython) or ``"python"`` (the twin)."""
    return str(core.IMPLEMENTATION)
