"""Build step for the compiled core; everything else lives in pyproject.toml.

The extension ``trioq._core`` is compiled from ``trioq/_core.pyx`` with
Cython (declared in ``[build-system] requires``).  A build failure is an
error, never a silent fallback: the pure-Python twin is for platforms where
the package is used from source on purpose (``TRIOQ_PURE_PYTHON=1``).
"""

from Cython.Build import cythonize
from setuptools import Extension, setup

setup(
    ext_modules=cythonize(
        [Extension("trioq._core", ["trioq/_core.pyx"])],
        compiler_directives={"language_level": "3"},
    ),
)
