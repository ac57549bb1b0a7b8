"""Progress lines for a long replay: phase, step, elapsed time.

The engine reports through a plain callable so library code never prints: by default the
lines go to this module's logger; the CLI passes ``StderrProgress`` so a user watching the
terminal sees them whatever the log level.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Protocol, TextIO

__all__ = ["ProgressSink", "LogProgress", "StderrProgress"]

logger = logging.getLogger(__name__)


class ProgressSink(Protocol):
    def __call__(self, phase: str, message: str) -> None: ...


class _Clock:
    def __init__(self) -> None:
        self._t0 = time.monotonic()

    def elapsed(self) -> str:
        seconds = int(time.monotonic() - self._t0)
        return f"{seconds // 3600:d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class LogProgress(_Clock):
    """Progress as INFO log lines (the library default)."""

    def __call__(self, phase: str, message: str) -> None:
        logger.info("[%s] %-8s %s", self.elapsed(), phase, message)


class StderrProgress(_Clock):
    """Progress as one line per step on stderr: ``[0:01:23] fit      daily_retrain 3/7 ...``."""

    def __init__(self, stream: TextIO | None = None) -> None:
        super().__init__()
        self._stream = stream if stream is not None else sys.stderr

    def __call__(self, phase: str, message: str) -> None:
        self._stream.write(f"[backtest {self.elapsed()}] {phase:<8} {message}\n")
        self._stream.flush()
