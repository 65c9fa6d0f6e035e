"""Sphinx configuration for trioq's documentation.

Build with ``python -m sphinx -W --keep-going -b html docs docs/_build/html``
(``tests/test_docs_examples.py`` does exactly that).  The build needs no
network: there is no intersphinx, so references to trio's and Python's
objects render as plain code instead of links.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # document the checkout, even when trioq is not installed

import trioq  # noqa: E402

project = "trioq"
author = "the trioq developers"
copyright = "the trioq developers"
release = trioq.__version__
version = ".".join(release.split(".")[:2])

extensions = ["sphinx.ext.autodoc"]

# _generated/ holds fragments ``bench/report.py`` writes for ``.. include::``.
exclude_patterns = ["_build", "_generated"]
templates_path: list[str] = []
html_static_path = ["_static"]
html_theme = "alabaster"
html_title = f"trioq {release}"

# Docstrings use ``double backticks`` for code; make single backticks code too.
default_role = "code"

# References to objects outside these pages (trio's, the standard library's)
# have no target without intersphinx; they are left as plain text.
nitpicky = False

autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_class_signature = "mixed"
autodoc_inherit_docstrings = False  # trio's own docstrings are not ours to render
# The public names live in private modules and are re-exported (with
# ``__module__`` rewritten) from ``trioq``; evaluating their postponed
# annotations would need names that exist only under TYPE_CHECKING.
autodoc_type_aliases: dict[str, str] = {}
