"""Off-policy estimates from the exploring arm's log, beside the replayed metrics (issue 20).

The exploring arm logs, for every shown impression, the propensity of showing that item at
that position (``serving.exploration``) and its drawn click. From that log alone the
off-policy estimators of ``serving.offpolicy`` estimate the click rate of another policy:
here the greedy order of the exploring arm's own online layer (the target shows an item at
a position with probability 1 if its greedy order does, else 0), per-slot IPS and
self-normalised IPS, with the request-level percentile bootstrap of
``serving.offpolicy.intervals``. The simulator's clicks depend on the item and the position
only, so per-slot weights are unbiased given the propensities (which are Monte Carlo
estimates, floored at ``1 / (1 + samples)``). A deterministic greedy policy has no support
for exploring, so the other direction (the exploring policy from the greedy log) is not
estimable, and is not reported.

Beside them: the replayed greedy arm's drawn and expected click rates. The greedy arm's
layer learned from what it showed, the exploring arm's from what exploration showed, so the
two greedy policies are not the same one: the comparison is a check on scale, not a proof.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from serving.offpolicy.intervals import bootstrap, per_request

if TYPE_CHECKING:
    from serving.backtest.exploration import ArmLog

__all__ = ["ope_of_greedy"]


def ope_of_greedy(explored: ArmLog, greedy: ArmLog, resamples: int = 1_000) -> dict[str, Any]:
    """IPS and SNIPS of the exploring arm's greedy order, its logged (on-policy) click rate,
    and the replayed greedy arm's drawn and expected click rates (per shown impression)."""
    if explored.greedy_hit is None:
        raise ValueError("the exploring arm's log has no greedy_hit column (run_arm records it)")
    n_requests = int(explored.request.max()) + 1 if explored.request.size else 0
    w = explored.greedy_hit / explored.propensity

    def by_request(values: np.ndarray) -> np.ndarray:
        return per_request(values, explored.request, n_requests)

    ones = by_request(np.ones_like(w))
    weighted = by_request(w * explored.click)
    ips = bootstrap(weighted, ones, resamples=resamples)
    snips = bootstrap(weighted, by_request(w), resamples=resamples)
    logged = bootstrap(by_request(explored.click), ones, resamples=resamples)
    truth = float(greedy.prob.mean()) if greedy.prob.size else float("nan")
    return {
        "target": "greedy order of the exploring arm's online layer",
        "ips": ips.as_dict(), "snips": snips.as_dict(),
        "logged_ctr_drawn": logged.as_dict(),
        "replayed_greedy_ctr_drawn": float(greedy.click.mean()) if greedy.click.size else float("nan"),
        "replayed_greedy_ctr_expected": truth,
        "ips_covers_replayed_expected": ips.covers(truth),
        "snips_covers_replayed_expected": snips.covers(truth),
        "mean_weight": float(w.mean()) if w.size else float("nan"),
        "kish_ess": float(w.sum() ** 2 / (w * w).sum()) if (w * w).sum() > 0 else 0.0,
        "impressions": int(w.size),
    }
