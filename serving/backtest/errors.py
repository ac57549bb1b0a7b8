"""The backtest's errors: bad settings or an events file the backtest cannot replay.

One root under ``protos.errors.FreshrankError``; both kinds are the caller's input, so both
are ``InvalidInput``s (``ValueError``, ``INVALID_ARGUMENT``).
"""

from __future__ import annotations

from protos.errors import FreshrankError, InvalidInput
from protos.settings_io import SettingsError

__all__ = ["BacktestError", "BacktestSettingsError", "BacktestDataError"]


class BacktestError(FreshrankError):
    """Root: something about the input makes the backtest impossible."""


class BacktestSettingsError(BacktestError, SettingsError):
    """A flag or setting is malformed or inconsistent (a bad duration, warm-up too long)."""


class BacktestDataError(BacktestError, InvalidInput):
    """The events cannot be backtested as asked (empty after filtering, no evaluation span)."""
