"""What the demo's replay saw, as a timeline: which (base, online) pair served when, the
live loop's steps as they happened, failed calls, and per day the log loss of what was
served against the base alone on the same items (so a day's gain counts the requests the
base served alone too: it is the gain users got, not the layer's best case)."""

from __future__ import annotations

import math
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np

__all__ = ["DayLoss", "Timeline"]

_EPS = 1e-7


@dataclass
class DayLoss:
    """Log-loss sums of one day's served items: as served (final score) and base alone."""

    items: int = 0
    served: float = 0.0
    base: float = 0.0
    requests: int = 0
    with_online: int = 0

    def add(self, labels: np.ndarray, served: np.ndarray, base: np.ndarray, online: bool) -> None:
        y = labels.astype(np.float64)
        for target, p in (("served", served), ("base", base)):
            p = np.clip(p.astype(np.float64), _EPS, 1 - _EPS)
            loss = float(-np.sum(y * np.log(p) + (1 - y) * np.log(1 - p)))
            setattr(self, target, getattr(self, target) + loss)
        self.items += int(y.size)
        self.requests += 1
        self.with_online += int(online)

    @property
    def gain(self) -> float:
        """Relative log-loss reduction of what was served over the base alone."""
        return (self.base - self.served) / self.base if self.base > 0 else math.nan


@dataclass
class Timeline:
    """Collects the replay's events (thread-safe: the live loop runs beside the replay)."""

    started: float = field(default_factory=time.perf_counter)
    entries: list[tuple[float, int, str]] = field(default_factory=list)
    days: dict[str, DayLoss] = field(default_factory=dict)
    failed_calls: Counter[str] = field(default_factory=Counter)
    pairs: Counter[tuple[str, str]] = field(default_factory=Counter)
    requests: int = 0
    _layer_of: dict[str, bool] = field(default_factory=dict)  # base -> served with a layer
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def note(self, text: str) -> None:
        with self._lock:
            self.entries.append((time.perf_counter() - self.started, self.requests, text))

    def failed(self, what: str) -> None:
        with self._lock:
            self.failed_calls[what] += 1

    def served(self, when: datetime, base_version: str, online_version: str,
               labels: np.ndarray, scores: np.ndarray, base_scores: np.ndarray) -> None:
        """One Rank reply and the labels of its items (in reply order)."""
        with self._lock:
            self.requests += 1
            # One line when a base first serves and when its layer starts or stops serving
            # (a canary interleaves two bases request by request: not a line each).
            with_layer = bool(online_version)
            if self._layer_of.get(base_version) != with_layer:
                layer = f"online {online_version}" if online_version else "base alone"
                self.entries.append((time.perf_counter() - self.started, self.requests,
                                     f"base {base_version} serving with {layer}"))
            self._layer_of[base_version] = with_layer
            self.pairs[(base_version, "online" if online_version else "base alone")] += 1
            day = self.days.setdefault(f"{when:%Y-%m-%d}", DayLoss())
            day.add(labels, scores, base_scores, bool(online_version))

    def format(self) -> list[str]:
        lines = ["", "Live loop timeline (wall seconds into the replay, request number):"]
        for seconds, request, text in self.entries:
            lines.append(f"  {seconds:7.1f}s  #{request:<7,} {text}")
        failed = sum(self.failed_calls.values())
        lines.append(f"  failed Rank calls during the replay (swaps included): {failed}"
                     + (f" {dict(self.failed_calls)}" if failed else ""))
        lines += ["", "Served per day (log loss of what users got vs the base alone on the same items):",
                  f"{'day':<12}{'requests':>9}{'with online':>12}{'logloss base':>14}"
                  f"{'logloss served':>16}{'gain':>8}"]
        for day, loss in sorted(self.days.items()):
            lines.append(
                f"{day:<12}{loss.requests:>9,}{loss.with_online:>12,}{loss.base / max(loss.items, 1):>14.4f}"
                f"{loss.served / max(loss.items, 1):>16.4f}{100 * loss.gain:>7.2f}%"
            )
        return lines
