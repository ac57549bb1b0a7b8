"""The backtest's errors: bad settings or an events file the backtest cannot replay."""

from __future__ import annotations

__all__ = ["BacktestError", "BacktestSettingsError", "BacktestDataError"]


class BacktestError(ValueError):
    """Base class: something about the input makes the backtest impossible."""


class BacktestSettingsError(BacktestError):
    """A flag or setting is malformed or inconsistent (a bad duration, warm-up too long)."""


class BacktestDataError(BacktestError):
    """The events cannot be backtested as asked (empty after filtering, no evaluation span)."""
