"""Progressive validation: every example is scored before it is learned (test-then-train).

For each learned mini-batch the learner records, on the same examples, the hybrid score
(base + correction, as serving would compute it) and the base score alone. Log loss is
exact; AUC comes from fixed logit histograms (``BINS`` bins over [-12, 12], ties within a
bin counted half), so memory stays constant however long the run: the error is below
1e-3 for scores spread over more than a few bins. Graded labels count as positive for AUC
when >= 0.5; log loss uses them as they are. The exact definitions (log loss from logits,
the rolling window's exact AUC) are ``protos.metrics``'s, the same as the gates' and the
backtest's; only the constant-memory histogram AUC is this module's own.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from protos.metrics import auc, log_loss_from_logits, log_losses_from_logits, nan_to_none

BINS = 4096
LOW, HIGH = -12.0, 12.0


@dataclass(frozen=True)
class ProgressiveSummary:
    """Progressive metrics over a set of examples (one day of event time, or all).

    ``auc_*`` is None when the examples hold only one class.
    """

    day: str
    examples: int
    positives: int
    logloss_hybrid: float
    logloss_base: float
    auc_hybrid: float | None
    auc_base: float | None

    @property
    def logloss_gain(self) -> float:
        """Relative log-loss reduction of hybrid over base (> 0: the layer helps)."""
        if self.examples == 0 or self.logloss_base == 0:
            return 0.0
        return 1.0 - self.logloss_hybrid / self.logloss_base


def _bins(logits: np.ndarray) -> np.ndarray:
    scaled = (np.clip(logits, LOW, HIGH) - LOW) * (BINS / (HIGH - LOW))
    return np.minimum(scaled.astype(np.int64), BINS - 1)


def _auc(pos: np.ndarray, neg: np.ndarray) -> float | None:
    n_pos, n_neg = pos.sum(), neg.sum()
    if n_pos == 0 or n_neg == 0:
        return None
    below = np.cumsum(neg) - neg  # negatives strictly below each bin
    return float((pos * (below + 0.5 * neg)).sum() / (n_pos * n_neg))


class _Accumulator:
    def __init__(self) -> None:
        self.examples = 0
        self.positives = 0
        self.loss_hybrid = 0.0
        self.loss_base = 0.0
        self.hist = np.zeros((4, BINS), dtype=np.int64)  # pos/neg x hybrid/base

    def add(self, labels: np.ndarray, hybrid: np.ndarray, base: np.ndarray) -> None:
        positive = labels >= 0.5
        self.examples += labels.shape[0]
        self.positives += int(positive.sum())
        self.loss_hybrid += float(log_losses_from_logits(labels, hybrid).sum())
        self.loss_base += float(log_losses_from_logits(labels, base).sum())
        for row, (logits, mask) in enumerate(
            ((hybrid, positive), (hybrid, ~positive), (base, positive), (base, ~positive))
        ):
            self.hist[row] += np.bincount(_bins(logits[mask]), minlength=BINS)

    def summary(self, day: str) -> ProgressiveSummary:
        n = max(self.examples, 1)
        return ProgressiveSummary(
            day=day,
            examples=self.examples,
            positives=self.positives,
            logloss_hybrid=self.loss_hybrid / n,
            logloss_base=self.loss_base / n,
            auc_hybrid=_auc(self.hist[0], self.hist[1]),
            auc_base=_auc(self.hist[2], self.hist[3]),
        )


class ProgressiveMetrics:
    """Hybrid vs base-alone progressive metrics, overall and per UTC day of event time."""

    def __init__(self) -> None:
        self._all = _Accumulator()
        self._days: dict[str, _Accumulator] = {}

    def update(
        self,
        days: np.ndarray,
        labels: np.ndarray,
        hybrid_logits: np.ndarray,
        base_logits: np.ndarray,
    ) -> None:
        """Add one scored batch; ``days`` is ``datetime64[D]`` per example."""
        self._all.add(labels, hybrid_logits, base_logits)
        for day in np.unique(days):
            mask = days == day
            key = str(day)
            acc = self._days.get(key)
            if acc is None:
                acc = self._days[key] = _Accumulator()
            acc.add(labels[mask], hybrid_logits[mask], base_logits[mask])

    def overall(self) -> ProgressiveSummary:
        return self._all.summary("all")

    def by_day(self) -> tuple[ProgressiveSummary, ...]:
        return tuple(self._days[day].summary(day) for day in sorted(self._days))


class RollingWindow:
    """The last (about) ``window`` progressively scored examples, by batch.

    Keeps the scores themselves (a few hundred kilobytes), so the readiness check can use
    exact log loss and exact AUC of hybrid and base over the same recent examples.
    """

    def __init__(self, window: int) -> None:
        self.window = window
        self._batches: deque[tuple[np.ndarray, np.ndarray, np.ndarray]] = deque()
        self.examples = 0

    def add(self, labels: np.ndarray, hybrid: np.ndarray, base: np.ndarray) -> None:
        self._batches.append((labels.copy(), hybrid.copy(), base.copy()))
        self.examples += labels.shape[0]
        while self._batches and self.examples - self._batches[0][0].shape[0] >= self.window:
            self.examples -= self._batches.popleft()[0].shape[0]

    def _stack(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return tuple(np.concatenate([b[i] for b in self._batches]) for i in range(3))  # type: ignore[return-value]

    def log_losses(self) -> tuple[float, float] | None:
        """(hybrid, base) mean log loss, or None before any example."""
        if self.examples == 0:
            return None
        labels, hybrid, base = self._stack()
        return log_loss_from_logits(labels, hybrid), log_loss_from_logits(labels, base)

    def aucs(self) -> tuple[float | None, float | None]:
        """(hybrid, base) AUC (labels >= 0.5 positive); None where undefined."""
        if self.examples == 0:
            return None, None
        labels, hybrid, base = self._stack()
        return nan_to_none(auc(labels, hybrid)), nan_to_none(auc(labels, base))

    def clear(self) -> None:
        self._batches.clear()
        self.examples = 0
