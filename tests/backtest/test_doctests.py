"""The Examples in the backtest's docstrings run (and stay true)."""

from __future__ import annotations

import doctest
import importlib

import pytest


@pytest.mark.parametrize(
    "name",
    [
        "serving.backtest.metrics",
        "serving.backtest.config",
        "serving.backtest.policies",
        "serving.backtest.sweep",
        "serving.backtest.summary",
    ],
)
def test_docstring_examples(name: str) -> None:
    result = doctest.testmod(importlib.import_module(name))
    assert result.attempted > 0 and result.failed == 0
