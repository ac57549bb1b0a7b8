"""Shadow comparison: a staged candidate base scores a copy of the champion's requests.

Each Ranker replica, for a ``serving.shadow_share`` of the requests the champion serves
while a candidate is staged, scores the same candidates with the candidate base after the
reply is built (never served) and folds the comparison into ``ShadowStats``: top-k overlap,
Spearman rank correlation, mean absolute difference of the click probabilities, mean
predicted click rate of each, and each base's scoring time. Replicas send their stats with
their weight poll; the Learner sums the stats of the current plan serial
(``merge_stats``) into the ``CandidateReport`` the controller judges.

Why base against base: in shadow the candidate has no online layer yet, so comparing it
with the champion's hybrid score would measure the correction, not the new base.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from protos.metrics import sigmoid

__all__ = ["LATENCY_SAMPLES", "ShadowStats", "compare_orders", "merge_stats"]

LATENCY_SAMPLES = 512  # recent scoring times kept per replica, per base
DEFAULT_TOP_K = 10  # the overlap's k when a request asks for every candidate (top_k 0)


def compare_orders(champion_logits: np.ndarray, candidate_logits: np.ndarray, top_k: int) -> tuple[float, float, float]:
    """(top-k overlap, Spearman correlation, mean |p_candidate - p_champion|) of one request.

    ``top_k`` 0 (every candidate returned) compares the first ``DEFAULT_TOP_K``: the overlap
    of a whole list with itself would always be 1. Ties are ranked by position (stable
    sort), like the ranker's own ordering. Spearman of
    fewer than two items, or of a constant score vector, is 1.0 when the orders agree
    trivially (a single item), else 0.0.
    """
    champ = np.asarray(champion_logits, dtype=np.float64)
    cand = np.asarray(candidate_logits, dtype=np.float64)
    n = champ.shape[0]
    k = min(DEFAULT_TOP_K if top_k <= 0 else top_k, n)
    order_champ = np.argsort(-champ, kind="stable")
    order_cand = np.argsort(-cand, kind="stable")
    overlap = len(set(order_champ[:k].tolist()) & set(order_cand[:k].tolist())) / k if k else 1.0
    if n < 2:
        spearman = 1.0
    else:
        rank_champ = np.empty(n)
        rank_champ[order_champ] = np.arange(n)
        rank_cand = np.empty(n)
        rank_cand[order_cand] = np.arange(n)
        spearman = float(np.corrcoef(rank_champ, rank_cand)[0, 1])
        if not np.isfinite(spearman):
            spearman = 0.0
    diff = float(np.mean(np.abs(sigmoid(cand) - sigmoid(champ)))) if n else 0.0
    return overlap, spearman, diff


@dataclass
class ShadowStats:
    """One replica's running comparison for one plan serial (plain, no Ray)."""

    serial: str = ""
    requests: int = 0
    overlap_sum: float = 0.0
    spearman_sum: float = 0.0
    abs_diff_sum: float = 0.0
    items: int = 0
    champion_ctr_sum: float = 0.0
    candidate_ctr_sum: float = 0.0
    champion_requests: int = 0
    canary_requests: int = 0
    champion_ms: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCY_SAMPLES))
    candidate_ms: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCY_SAMPLES))

    def reset(self, serial: str) -> None:
        """Start over for a new plan (stats never mix two candidates)."""
        self.__init__(serial=serial)  # type: ignore[misc]

    def served(self, by_candidate: bool) -> None:
        """Count one request served while a candidate is staged, by the group that served it."""
        if by_candidate:
            self.canary_requests += 1
        else:
            self.champion_requests += 1

    def add(
        self,
        champion_logits: np.ndarray,
        candidate_logits: np.ndarray,
        top_k: int,
        champion_ms: float,
        candidate_ms: float,
    ) -> None:
        """Fold one shadow-scored request in."""
        overlap, spearman, diff = compare_orders(champion_logits, candidate_logits, top_k)
        self.requests += 1
        self.overlap_sum += overlap
        self.spearman_sum += spearman
        self.abs_diff_sum += diff
        self.items += int(len(champion_logits))
        self.champion_ctr_sum += float(np.sum(sigmoid(np.asarray(champion_logits, dtype=np.float64))))
        self.candidate_ctr_sum += float(np.sum(sigmoid(np.asarray(candidate_logits, dtype=np.float64))))
        self.champion_ms.append(float(champion_ms))
        self.candidate_ms.append(float(candidate_ms))

    def to_dict(self) -> dict[str, Any]:
        return {
            "serial": self.serial,
            "requests": self.requests,
            "overlap_sum": self.overlap_sum,
            "spearman_sum": self.spearman_sum,
            "abs_diff_sum": self.abs_diff_sum,
            "items": self.items,
            "champion_ctr_sum": self.champion_ctr_sum,
            "candidate_ctr_sum": self.candidate_ctr_sum,
            "champion_requests": self.champion_requests,
            "canary_requests": self.canary_requests,
            "champion_ms": list(self.champion_ms),
            "candidate_ms": list(self.candidate_ms),
        }


def merge_stats(per_replica: Iterable[Mapping[str, Any]], serial: str) -> dict[str, float]:
    """The replicas' stats for plan ``serial`` as the report's figures (means, p50/p99)."""
    keys = ("requests", "overlap_sum", "spearman_sum", "abs_diff_sum", "items",
            "champion_ctr_sum", "candidate_ctr_sum", "champion_requests", "canary_requests")
    total = dict.fromkeys(keys, 0.0)
    champion_ms: list[float] = []
    candidate_ms: list[float] = []
    for stats in per_replica:
        if stats.get("serial") != serial:
            continue
        for key in keys:
            total[key] += float(stats.get(key, 0.0))
        champion_ms.extend(stats.get("champion_ms", ()))
        candidate_ms.extend(stats.get("candidate_ms", ()))
    n, items = total["requests"], total["items"]

    def pct(values: list[float], q: float) -> float:
        return float(np.percentile(values, q)) if values else 0.0

    return {
        "shadow_requests": n,
        "top_k_overlap": total["overlap_sum"] / n if n else 0.0,
        "rank_correlation": total["spearman_sum"] / n if n else 0.0,
        "mean_abs_score_difference": total["abs_diff_sum"] / n if n else 0.0,
        "champion_mean_ctr": total["champion_ctr_sum"] / items if items else 0.0,
        "candidate_mean_ctr": total["candidate_ctr_sum"] / items if items else 0.0,
        "champion_latency_ms_p50": pct(champion_ms, 50),
        "candidate_latency_ms_p50": pct(candidate_ms, 50),
        "champion_latency_ms_p99": pct(champion_ms, 99),
        "candidate_latency_ms_p99": pct(candidate_ms, 99),
        "canary_requests": total["canary_requests"],
        "champion_requests": total["champion_requests"],
    }
