"""One off-policy evaluation: a candidate policy on a log, every estimator with its
interval, and the diagnostics a reader needs to trust them (effective sample size, mean
weight, the log's own click rate)."""

from __future__ import annotations

from typing import Any

import numpy as np

from serving.offpolicy.estimators import Terms, doubly_robust, ips, kish_ess, snips, weights
from serving.offpolicy.intervals import interval, per_request
from serving.offpolicy.logdata import BanditLog
from serving.offpolicy.policies import TargetPolicy
from serving.offpolicy.reward_model import cross_fitted_rewards

__all__ = ["ESTIMATORS", "evaluate"]

ESTIMATORS = ("ips", "snips", "dr")
#: Below this effective sample size the report warns that intervals are optimistic.
SMALL_ESS = 100.0


def evaluate(
    log: BanditLog,
    target: TargetPolicy,
    *,
    method: str = "bootstrap",
    level: float = 0.95,
    resamples: int = 1000,
    seed: int = 0,
    folds: int = 5,
    rewards: np.ndarray | None = None,
) -> dict[str, Any]:
    """The JSON-ready report of ``target`` on ``log``.

    ``rewards``: the DR reward model's ``(M, n_slots)`` predictions; None: cross-fitted
    on the log (``serving.offpolicy.reward_model``, ``folds`` folds of requests).
    """
    q = cross_fitted_rewards(log, folds=folds, seed=seed) if rewards is None else rewards
    w = weights(log, target)
    on_policy = Terms("logged", log.reward, np.ones(log.n))
    report: dict[str, Any] = {
        "policy": target.name,
        "events": log.n,
        "requests": log.n_requests,
        "candidates": log.candidates,
        "slots": log.n_slots,
        "interval": {"method": method, "level": level, "unit": "request",
                     **({"resamples": resamples, "seed": seed} if method == "bootstrap" else {})},
        "estimates": {},
    }
    for terms in (ips(log, target), snips(log, target), doubly_robust(log, target, q), on_policy):
        num = per_request(terms.num, log.request, log.n_requests)
        den = per_request(terms.den, log.request, log.n_requests)
        got = interval(method, num, den, level, resamples, seed).as_dict()
        if terms.name == "logged":
            report["logged_rate"] = got
        else:
            report["estimates"][terms.name] = got
    ess = kish_ess(w)
    report["ess"] = ess
    report["mean_weight"] = float(w.mean())
    report["max_weight"] = float(w.max())
    report["warnings"] = _warnings(log, target, ess, float(w.mean()))
    return report


def _warnings(log: BanditLog, target: TargetPolicy, ess: float, mean_weight: float) -> list[str]:
    notes = []
    if target.probs is not None and log.candidates == "request" and int(log.cand_count.max()) == 1:
        notes.append("every request holds one logged item, so the candidate can only show what "
                     "was shown; for a log with one row per slot over a fixed catalogue (Open "
                     "Bandit) use --candidates catalogue")
    if target.probs is not None and np.all(log.propensity == 1.0):
        notes.append("every propensity is 1: the log is deterministic, so impressions the "
                     "candidate would have placed elsewhere carry no information and the "
                     "estimates only see where the two policies agree")
    if ess < SMALL_ESS:
        notes.append(f"effective sample size {ess:.0f} < {SMALL_ESS:.0f}: intervals are optimistic")
    if target.probs is not None and abs(mean_weight - 1.0) > 0.1:
        notes.append(f"mean weight {mean_weight:.3f} is far from 1: the logging policy may not "
                     "cover what the candidate shows (IPS biased low; prefer SNIPS/DR)")
    return notes
