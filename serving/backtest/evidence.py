"""The evidence section of ``report.json`` (issue 18): normalised entropy with intervals,
every pairwise difference, and "gap closed" only where it is estimable.

Judgement rules, fixed before any run of issue 18 (``JUDGEMENT_RULES``, written into every
report and into ``bench/RESULTS.md``; they are not changed after results):

1. **Metric**: normalised entropy, NE = log loss / entropy of the evaluated events' click
   rate (``protos.metrics.normalized_entropy``; 1.0 = the best constant). Lower is better.
2. **Noise**: a cluster bootstrap over users (every resample draws users with replacement
   and keeps all their events: a user's session moves together), ``BOOTSTRAP_SAMPLES``
   resamples, seed 0, percentile 95% intervals. Logs with fewer than ``MIN_CLUSTERS``
   distinct users resample events instead (the report says which unit).
3. **Better / worse**: policy A is better than B when the 95% interval of NE(A) - NE(B),
   from the same resamples (paired by event), lies below 0; worse when above; otherwise
   "not distinguishable". Nothing else is called better.
4. **Gap closed** by ``hybrid`` towards a ceiling C: ``(NE(base_only) - NE(hybrid)) /
   (NE(base_only) - NE(C))``, reported with its interval only when the denominator's
   interval lies above zero (C better than base_only beyond noise); otherwise "not
   estimable", with the denominator's interval. The ceiling judged on is ``daily_fresh``;
   ``daily_retrain`` is shown beside it.
5. **What counts as hybrid**: what production would have served (the readiness-gated layer,
   on bases that passed their gate; base-alone requests included); the layer's own ungated
   score is ``hybrid_ungated``. The served share is reported.
6. On a simulated log the share of the ``constant`` -> ``oracle`` NE gap each policy
   captures is reported with its interval.

Examples
--------
>>> import numpy as np
>>> y = np.array([1.0, 0.0, 1.0, 0.0])
>>> ev = evidence(y, {"a": np.full(4, 0.5), "b": np.array([0.9, 0.1, 0.9, 0.1])},
...               clusters=None, samples=50)
>>> round(ev["policies"]["a"]["ne"], 6), ev["pairs"]["b - a"]["verdict"]
(1.0, 'better')
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from protos.metrics import EPS, auc, calibration_ratio, log_losses

__all__ = [
    "BOOTSTRAP_SAMPLES",
    "JUDGEMENT_RULES",
    "MIN_CLUSTERS",
    "ClusterSums",
    "bootstrap_ne",
    "cluster_sums",
    "entropy",
    "evidence",
    "verdict",
]

BOOTSTRAP_SAMPLES = 1000
MIN_CLUSTERS = 30
LEVEL = 0.95
GAP_CEILING = "daily_fresh"

JUDGEMENT_RULES: dict[str, Any] = {
    "fixed": "2026-12-01, before any issue-18 run; unchanged after results",
    "metric": "normalised entropy (log loss / entropy of the evaluated click rate), lower is better",
    "noise": f"cluster bootstrap over users, {BOOTSTRAP_SAMPLES} resamples, seed 0, percentile "
             f"{LEVEL:.0%}; events when fewer than {MIN_CLUSTERS} distinct users",
    "better": "A better than B iff the 95% interval of NE(A) - NE(B) (same resamples, paired "
              "by event) lies below 0; worse iff above; else not distinguishable",
    "gap_closed": "(NE(base_only) - NE(hybrid)) / (NE(base_only) - NE(ceiling)), only when the "
                  "denominator's 95% interval lies above 0, else 'not estimable' with that "
                  f"interval; ceiling judged: {GAP_CEILING} (daily_retrain shown beside)",
    "hybrid": "what production serves: readiness-gated layer (online_layer.readiness with "
              "serving's settings) on bases that passed their evaluation gate; base-alone "
              "requests counted as base; hybrid_ungated is the layer's own score",
    "simulator": "share of the constant -> oracle NE gap, with its interval",
}


def entropy(rate: np.ndarray | float, eps: float = EPS) -> np.ndarray:
    """Binary entropy (nats) of a click rate, clipped as log loss clips."""
    p = np.clip(np.asarray(rate, dtype=np.float64), eps, 1 - eps)
    r = np.asarray(rate, dtype=np.float64)
    return -(r * np.log(p) + (1 - r) * np.log1p(-p))


class ClusterSums:
    """Per-cluster sums: events ``n``, positives ``pos``, and each policy's summed log loss."""

    def __init__(self, n: np.ndarray, pos: np.ndarray, loss: np.ndarray, names: list[str]) -> None:
        self.n, self.pos, self.loss, self.names = n, pos, loss, names

    @property
    def clusters(self) -> int:
        return int(self.n.size)


def cluster_sums(
    labels: np.ndarray, probs: Mapping[str, np.ndarray], clusters: np.ndarray | None
) -> ClusterSums:
    """Sums per cluster (``clusters`` None: every event its own cluster)."""
    y = np.asarray(labels, dtype=np.float64)
    names = list(probs)
    losses = np.column_stack([log_losses(y, probs[k]) for k in names])
    if clusters is None:
        return ClusterSums(np.ones(y.size), y.copy(), losses, names)
    _, group = np.unique(np.asarray(clusters).astype(str), return_inverse=True)
    g = int(group.max()) + 1
    n = np.bincount(group, minlength=g).astype(np.float64)
    pos = np.bincount(group, weights=y, minlength=g)
    loss = np.column_stack([np.bincount(group, weights=losses[:, j], minlength=g)
                            for j in range(len(names))])
    return ClusterSums(n, pos, loss, names)


def bootstrap_ne(sums: ClusterSums, samples: int = BOOTSTRAP_SAMPLES, seed: int = 0,
                 chunk: int = 50) -> tuple[np.ndarray, np.ndarray]:
    """(point NE per policy (K,), resampled NE (samples, K)) from a cluster bootstrap."""
    total_n = sums.n.sum()
    point = sums.loss.sum(axis=0) / total_n / entropy(sums.pos.sum() / total_n)
    rng = np.random.default_rng(seed)
    g = sums.clusters
    out = np.empty((samples, sums.loss.shape[1]))
    for start in range(0, samples, chunk):
        b = min(chunk, samples - start)
        draws = rng.integers(0, g, size=(b, g))
        rows = np.repeat(np.arange(b), g) * g
        w = np.bincount(rows + draws.ravel(), minlength=b * g).reshape(b, g).astype(np.float64)
        n = w @ sums.n
        rate = (w @ sums.pos) / n
        out[start:start + b] = (w @ sums.loss) / n[:, None] / entropy(rate)[:, None]
    return point, out


def _interval(draws: np.ndarray) -> tuple[float, float]:
    finite = draws[np.isfinite(draws)]
    if finite.size == 0:
        return math.nan, math.nan
    tail = (1 - LEVEL) / 2 * 100
    lo, hi = np.percentile(finite, [tail, 100 - tail])
    return float(lo), float(hi)


def verdict(low: float, high: float) -> str:
    """Rule 3 on an interval of NE(A) - NE(B)."""
    if high < 0:
        return "better"
    if low > 0:
        return "worse"
    return "not distinguishable"


def _ratio(num: float, den: float) -> float:
    return num / den if den != 0 else math.nan


def evidence(
    labels: np.ndarray,
    probs: Mapping[str, np.ndarray],
    clusters: np.ndarray | None,
    samples: int = BOOTSTRAP_SAMPLES,
    extra: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """The evidence section: NE and interval per policy, every pair, gap closed, oracle share.

    ``clusters``: one user id per event (None, or fewer than ``MIN_CLUSTERS`` distinct:
    events are resampled). ``extra``: per-policy fields merged into its entry.
    """
    y = np.asarray(labels, dtype=np.float64)
    unit = "user"
    if clusters is None or np.unique(np.asarray(clusters).astype(str)).size < MIN_CLUSTERS:
        clusters, unit = None, "event"
    sums = cluster_sums(y, probs, clusters)
    point, draws = bootstrap_ne(sums, samples)
    names = sums.names
    idx = {k: i for i, k in enumerate(names)}
    policies: dict[str, Any] = {}
    for k in names:
        lo, hi = _interval(draws[:, idx[k]])
        policies[k] = {"ne": float(point[idx[k]]), "ne_ci95": [lo, hi],
                       "logloss": float(sums.loss[:, idx[k]].sum() / y.size),
                       "auc": auc(y, probs[k]), "calibration": calibration_ratio(y, probs[k]),
                       **dict((extra or {}).get(k, {}))}
    pairs: dict[str, Any] = {}
    for a in names:
        for b in names:
            if a == b:
                continue
            d = draws[:, idx[a]] - draws[:, idx[b]]
            lo, hi = _interval(d)
            pairs[f"{a} - {b}"] = {"ne_delta": float(point[idx[a]] - point[idx[b]]),
                                   "ci95": [lo, hi], "verdict": verdict(lo, hi)}
    out: dict[str, Any] = {
        "rules": JUDGEMENT_RULES,
        "noise_unit": unit,
        "clusters": sums.clusters,
        "bootstrap_samples": samples,
        "click_rate": float(y.mean()) if y.size else math.nan,
        "policies": policies,
        "pairs": pairs,
        "gap_closed": {},
    }
    if "hybrid" in idx and "base_only" in idx:
        for ceiling in (GAP_CEILING, "daily_retrain", "daily_fresh_new"):
            if ceiling in idx:
                out["gap_closed"][ceiling] = _gap(point, draws, idx, "base_only", "hybrid", ceiling)
    if "oracle" in idx and "constant" in idx:
        out["oracle_gap_share"] = {
            k: _share(point, draws, idx, k) for k in names if k not in ("oracle", "constant")
        }
    return out


def _gap(point: np.ndarray, draws: np.ndarray, idx: Mapping[str, int],
         base: str, policy: str, ceiling: str) -> dict[str, Any]:
    """Rule 4."""
    den_draws = draws[:, idx[base]] - draws[:, idx[ceiling]]
    num_draws = draws[:, idx[base]] - draws[:, idx[policy]]
    den = float(point[idx[base]] - point[idx[ceiling]])
    num = float(point[idx[base]] - point[idx[policy]])
    den_lo, den_hi = _interval(den_draws)
    entry: dict[str, Any] = {"denominator": {"ne": den, "ci95": [den_lo, den_hi]},
                             "numerator": {"ne": num, "ci95": list(_interval(num_draws))}}
    if not den_lo > 0:
        entry.update(status="not estimable", value=None, ci95=None,
                     why=f"the {ceiling} - base_only NE gap's interval "
                         f"[{den_lo:.5f}, {den_hi:.5f}] does not lie above 0")
        return entry
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = num_draws / den_draws
    entry.update(status="estimable", value=_ratio(num, den), ci95=list(_interval(ratio)))
    return entry


def _share(point: np.ndarray, draws: np.ndarray, idx: Mapping[str, int], k: str) -> dict[str, Any]:
    """Share of the constant -> oracle NE gap that policy ``k`` captures (rule 6)."""
    c, o, i = idx["constant"], idx["oracle"], idx[k]
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = (draws[:, c] - draws[:, i]) / (draws[:, c] - draws[:, o])
    return {"value": _ratio(float(point[c] - point[i]), float(point[c] - point[o])),
            "ci95": list(_interval(ratio))}
