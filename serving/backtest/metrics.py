"""Progressive metrics for the backtest: per-day series, gap closed, paired intervals.

The basic metrics are ``protos.metrics``'s (re-exported here: ``log_loss``, ``auc``,
``per_event_log_loss`` = ``protos.metrics.log_losses``, ``EPS``), the same definitions the
gates and the online readiness use: log loss on clipped probabilities, AUC as the rank
statistic with ties counted half, NaN (never an exception) when a slice has one class.
Labels may be graded in [0, 1]: log loss uses them as soft targets; AUC counts
``label >= 0.5`` as a positive. This module adds what only the backtest's claim needs.

Examples
--------
>>> round(log_loss([1, 0], [0.5, 0.5]), 6) == round(math.log(2), 6)
True
>>> auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
0.75
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

from protos.metrics import EPS, as_arrays, auc, log_loss
from protos.metrics import log_losses as per_event_log_loss

__all__ = [
    "EPS",
    "log_loss",
    "auc",
    "per_event_log_loss",
    "daily_series",
    "gap_closed",
    "compute_ratio",
    "PairedDelta",
    "paired_delta",
    "critical_value",
    "familywise_level",
    "days_worse",
]


def daily_series(
    day_index: np.ndarray, labels: np.ndarray, probs: np.ndarray, n_days: int
) -> tuple[list[float], list[float], list[int]]:
    """Log loss, AUC and event count for each day ``0 .. n_days - 1`` (NaN for empty days)."""
    days = np.asarray(day_index)
    y, p = as_arrays(labels, probs)
    if days.shape != y.shape:
        raise ValueError(f"day_index has {days.size} values but labels has {y.size}")
    lls, aucs, counts = [], [], []
    for day in range(n_days):
        mask = days == day
        lls.append(log_loss(y[mask], p[mask]))
        aucs.append(auc(y[mask], p[mask]))
        counts.append(int(mask.sum()))
    return lls, aucs, counts


def gap_closed(base_only: float, hybrid: float, ceiling: float) -> float:
    """Share of the ``base_only`` -> ``ceiling`` log-loss gap that ``hybrid`` closes.

    ``(base_only - hybrid) / (base_only - ceiling)``: 1 means hybrid matches daily
    retraining, 0 means no better than base_only, > 1 beats the ceiling, < 0 is worse than
    base_only. NaN when there is no gap to close (the ceiling is not better than base_only)
    or an input is NaN.

    Examples
    --------
    >>> round(gap_closed(0.50, 0.47, 0.44), 6)
    0.5
    """
    gap = base_only - ceiling
    if not math.isfinite(gap) or not math.isfinite(hybrid) or gap <= 0:
        return math.nan
    return (base_only - hybrid) / gap


def compute_ratio(numerator_seconds: float, denominator_seconds: float) -> float:
    """``numerator / denominator`` of compute seconds; NaN when the denominator is 0."""
    if denominator_seconds <= 0 or not math.isfinite(denominator_seconds):
        return math.nan
    return numerator_seconds / denominator_seconds


@dataclass(frozen=True)
class PairedDelta:
    """Mean per-event log-loss difference (a - b) with a normal 95% interval.

    ``a`` is worse than ``b`` beyond noise when ``low > 0``; better when ``high < 0``.
    ``clusters``: how many independent units (users) the interval treats as the sample
    (``events`` when the events themselves were).
    """

    mean: float
    low: float
    high: float
    events: int
    clusters: int = 0

    def to_json(self) -> dict[str, float | int]:
        return {
            "mean": self.mean,
            "ci95_low": self.low,
            "ci95_high": self.high,
            "events": self.events,
            "clusters": self.clusters or self.events,
        }


def paired_delta(
    labels: np.ndarray,
    probs_a: np.ndarray,
    probs_b: np.ndarray,
    clusters: np.ndarray | None = None,
    level: float = 0.95,
) -> PairedDelta:
    """Per-event log-loss of ``a`` minus ``b`` on the same events: mean and an interval
    (two-sided, at ``level``).

    Pairing removes the events' own difficulty from the noise, so a small but consistent
    difference is resolved. Events are not independent, though: one user's session of
    ratings, or one slate, moves together. ``clusters`` (one key per event, e.g. the user
    id) gives the cluster-robust interval: the variance of the mean from per-cluster sums,
    ``G / (G - 1) * sum_g (S_g - n_g * mean)^2 / n^2`` with ``G`` clusters, and Student's
    t with ``G - 1`` degrees of freedom for its width (with few clusters the variance is
    itself a noisy estimate: 36 ratings from 5 users are 5 observations, not 36), so a day
    whose events are one user's session cannot be judged beyond noise on its own. Without
    ``clusters`` every event is its own cluster (the optimistic per-event interval).
    Fewer than 2 clusters (or events): an infinite interval.

    Examples
    --------
    >>> y = np.array([1.0, 0.0, 1.0, 0.0])
    >>> d = paired_delta(y, np.full(4, 0.4), np.full(4, 0.5), clusters=np.array(["u", "u", "v", "v"]))
    >>> d.clusters, round(d.mean, 4)
    (2, 0.0204)
    """
    diff = per_event_log_loss(labels, probs_a) - per_event_log_loss(labels, probs_b)
    n = diff.size
    if n == 0:
        return PairedDelta(math.nan, math.nan, math.nan, 0)
    mean = float(diff.mean())
    if clusters is None:
        if n < 2:
            return PairedDelta(mean, -math.inf, math.inf, n, n)
        half = critical_value(level, n - 1) * float(diff.std(ddof=1)) / math.sqrt(n)
        return PairedDelta(mean, mean - half, mean + half, n, n)
    keys = np.asarray(clusters).ravel()
    if keys.size != n:
        raise ValueError(f"clusters has {keys.size} values but there are {n} events")
    _, group = np.unique(keys, return_inverse=True)
    g = int(group.max()) + 1
    if g < 2:
        return PairedDelta(mean, -math.inf, math.inf, n, g)
    resid = np.bincount(group, weights=diff - mean, minlength=g)  # (G,) S_g - n_g * mean
    var = g / (g - 1) * float((resid**2).sum()) / n**2
    half = critical_value(level, g - 1) * math.sqrt(var)
    return PairedDelta(mean, mean - half, mean + half, n, g)


def _t_cdf_from_zero(x: float, df: int) -> float:
    """P(0 <= T <= x) for Student's t with ``df`` degrees of freedom (Simpson's rule on its
    density: NumPy and the standard library have no t distribution)."""
    xs = np.linspace(0.0, x, 4001)
    log_c = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
    pdf = np.exp(log_c - (df + 1) / 2 * np.log1p(xs**2 / df))
    h = x / 4000
    return float(h / 3 * (pdf[0] + pdf[-1] + 4 * pdf[1:-1:2].sum() + 2 * pdf[2:-1:2].sum()))


def critical_value(level: float, df: int | None = None) -> float:
    """The half-width multiplier of a two-sided interval at ``level``: Student's t quantile
    with ``df`` degrees of freedom, or the normal one (``df`` None or beyond 10,000).

    Examples
    --------
    >>> round(critical_value(0.95), 3), round(critical_value(0.95, 4), 3), round(critical_value(0.95, 1), 2)
    (1.96, 2.776, 12.71)
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    z = NormalDist().inv_cdf(1 - (1 - level) / 2)
    if df is None or df > 10_000:
        return z
    if df < 1:
        raise ValueError(f"df must be >= 1, got {df}")
    half_mass = level / 2  # P(0 <= T <= t) at the quantile
    lo, hi = 0.0, z
    while _t_cdf_from_zero(hi, df) < half_mass:
        lo, hi = hi, hi * 2
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _t_cdf_from_zero(mid, df) < half_mass else (lo, mid)
    return (lo + hi) / 2


def familywise_level(tests: int, level: float = 0.95) -> float:
    """Each interval's level so that ``tests`` of them hold jointly at ``level`` (Bonferroni):
    "worse on no day" is one claim about every day at once.

    With each day's own 95% interval, 26 days of two identical policies would show at least
    one day "worse beyond noise" with probability 1 - 0.975**26 = 48% (one side); the
    family-wise intervals hold that chance at 2.5% whatever the number of days.

    Examples
    --------
    >>> familywise_level(1), round(familywise_level(20), 4)
    (0.95, 0.9975)
    """
    if tests < 1:
        raise ValueError(f"tests must be >= 1, got {tests}")
    return 1 - (1 - level) / tests


def days_worse(
    labels: np.ndarray,
    probs_a: np.ndarray,
    probs_b: np.ndarray,
    day_index: np.ndarray,
    n_days: int,
    clusters: np.ndarray | None = None,
    familywise: bool = True,
) -> tuple[int, int]:
    """``(days on which a is worse than b beyond noise, days compared)``.

    A day is compared when it holds 2 events or more; ``a`` is worse on it when the lower
    end of its paired interval (clustered by ``clusters``) is above zero. ``familywise``
    (default): the intervals hold jointly at 95% over the compared days (``familywise_level``);
    otherwise each day's own 95%.
    """
    y = np.asarray(labels, dtype=np.float64)
    index = np.asarray(day_index)
    days = [d for d in range(n_days) if int((index == d).sum()) >= 2]
    if not days:
        return 0, 0
    level = familywise_level(len(days)) if familywise else 0.95
    worse = 0
    for day in days:
        mask = index == day
        keys = None if clusters is None else np.asarray(clusters)[mask]
        worse += int(paired_delta(y[mask], probs_a[mask], probs_b[mask], keys, level).low > 0)
    return worse, len(days)
