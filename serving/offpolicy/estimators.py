"""IPS, self-normalised IPS and doubly robust estimates of a candidate policy's click rate
per logged slot, each written as per-event numerator and denominator terms so one interval
routine (``serving.offpolicy.intervals``) serves all three: the estimate is
``sum(num) / sum(den)`` and requests are resampled whole.

With ``w = pi(item, slot) / propensity`` for each logged impression:

- **IPS** ``mean(w * r)``: unbiased when the logging policy gave every (item, slot) the
  candidate may choose a positive probability; its variance grows with the weights.
- **SNIPS** ``sum(w * r) / sum(w)``: IPS divided by the mean weight (whose expectation is 1
  under full support), slightly biased, far less variable, and invariant to adding a
  constant to rewards; it equals IPS when the weights average to exactly 1.
- **DR** ``mean(dm + w * (r - q))`` with ``q`` a reward model's prediction for the logged
  (item, slot) and ``dm = sum_a pi(a, slot) q(a, slot)`` the model's value of the candidate
  at that slot (Dudik et al. 2011): unbiased if either the propensities or the model are
  right, and with a good model the weighted term is small, so the variance is too.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from serving.offpolicy.logdata import BanditLog
from serving.offpolicy.policies import TargetPolicy

__all__ = ["Terms", "direct_values", "doubly_robust", "ips", "kish_ess", "snips", "weights"]


@dataclass(frozen=True, eq=False)
class Terms:
    """Per-event ``num`` and ``den``: the estimate is ``num.sum() / den.sum()``."""

    name: str
    num: np.ndarray
    den: np.ndarray

    @property
    def estimate(self) -> float:
        return float(self.num.sum() / self.den.sum())


def weights(log: BanditLog, target: TargetPolicy) -> np.ndarray:
    """``(n,)`` importance weights ``pi / propensity`` of the logged impressions."""
    return target.at_logged(log) / log.propensity


def ips(log: BanditLog, target: TargetPolicy) -> Terms:
    w = weights(log, target)
    return Terms("ips", w * log.reward, np.ones(log.n))


def snips(log: BanditLog, target: TargetPolicy) -> Terms:
    w = weights(log, target)
    return Terms("snips", w * log.reward, w)


def direct_values(log: BanditLog, target: TargetPolicy, q: np.ndarray) -> np.ndarray:
    """``(n,)`` the reward model's value of the candidate at each logged slot.

    For the logging policy (marginals unknown) the logged item is one draw from it, so its
    prediction is an unbiased stand-in; then DR reduces to the logged rate exactly.
    """
    if target.probs is None:
        return q[log.event_cand, log.slot]
    per_slot = np.add.reduceat(target.probs * q, log.cand_start[:-1], axis=0)  # (R, slots)
    return per_slot[log.request, log.slot]


def doubly_robust(log: BanditLog, target: TargetPolicy, q: np.ndarray) -> Terms:
    """``q``: ``(M, n_slots)`` predicted click probabilities of every candidate at every
    slot (``serving.offpolicy.reward_model.cross_fitted_rewards``)."""
    w = weights(log, target)
    logged_q = q[log.event_cand, log.slot]
    return Terms("dr", direct_values(log, target, q) + w * (log.reward - logged_q), np.ones(log.n))


def kish_ess(w: np.ndarray) -> float:
    """Kish's effective sample size ``(sum w)^2 / sum w^2``: how many equally weighted
    impressions the weighted log is worth (n when all weights are equal)."""
    square = float(np.square(w).sum())
    return float(w.sum()) ** 2 / square if square > 0 else 0.0
