"""Every Example in every docstring of the packages runs, and stays true.

Modules are found by walking the packages, so a new module's examples run without anyone
listing it. A module whose docstrings hold no example is fine; one whose examples fail is not.
"""

from __future__ import annotations

import doctest
import importlib
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
PACKAGES = ("protos", "base_model", "online_layer", "feature_store", "serving")


def _module_names() -> list[str]:
    names = []
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            if path.name.endswith(("_pb2.py", "_pb2_grpc.py")) or path.name == "__main__.py":
                continue
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            names.append(".".join(parts))
    return names


def _with_examples(name: str) -> bool:
    text = (REPO / pathlib.Path(*name.split("."))).with_suffix(".py")
    path = text if text.exists() else REPO / pathlib.Path(*name.split(".")) / "__init__.py"
    return ">>> " in path.read_text(encoding="utf-8")


MODULES = [name for name in _module_names() if _with_examples(name)]


def test_the_packages_have_examples_to_run() -> None:
    assert len(MODULES) >= 10


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
