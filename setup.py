"""Build steps that pyproject.toml cannot declare: the Cython extension and the gRPC code.

Both run on every ``pip install`` (editable or not), so a fresh install is never missing
generated code or a compiled kernel, and nothing generated is committed.
"""

from __future__ import annotations

import pathlib
import sys

from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_py import build_py

ROOT = pathlib.Path(__file__).resolve().parent


class BuildPyWithProtos(build_py):
    """Generate ``protos/freshrank/v1/*_pb2*.py`` in the source tree before collecting files."""

    def run(self) -> None:
        sys.path.insert(0, str(ROOT))
        try:
            from protos.build import generate
        finally:
            sys.path.pop(0)
        generate(ROOT)
        super().run()


EXTENSIONS = cythonize(
    [
        Extension(
            "online_layer._ftrl",
            ["online_layer/_ftrl.pyx"],
            extra_compile_args=["-O3"],
        )
    ],
    compiler_directives={
        "language_level": "3",
        "boundscheck": False,
        "wraparound": False,
        "cdivision": True,
        "initializedcheck": False,
    },
)

setup(ext_modules=EXTENSIONS, cmdclass={"build_py": BuildPyWithProtos})
