"""The doubly robust estimator's reward model: click probability of an item at a slot,
fitted on the log itself and **cross-fitted** so that no request's prediction used its
own clicks (Chernozhukov et al. 2018). A model that saw the request it predicts would
cancel part of that request's correction term and make the interval too narrow.

The model is an examination model with shrinkage, pure counts, so it fits in
milliseconds and has no setting worth tuning per log: ``q(item, slot) = p_slot * theta``,
where ``p_slot`` is the slot's click rate (shrunk towards the overall rate) and ``theta``
the item's clicks over those expected at the slots it was shown in, shrunk towards 1 with
``prior`` pseudo-clicks (a gamma-Poisson posterior mean). An item never seen in the other
folds gets ``theta = 1``: the slot's rate. DR stays unbiased whatever the model (the
propensity-weighted correction takes care of its error); a better model only narrows it.
"""

from __future__ import annotations

import numpy as np

from protos.errors import InvalidInput
from serving.offpolicy.logdata import BanditLog

__all__ = ["cross_fitted_rewards", "fit_predict"]

#: Pseudo-clicks of the prior on each item's factor and of each slot's rate.
PRIOR = 2.0


def fit_predict(log: BanditLog, train: np.ndarray, cand_rows: np.ndarray,
                prior: float = PRIOR) -> np.ndarray:
    """Fit on the events ``train`` (a boolean ``(n,)`` mask) and predict ``(len(cand_rows),
    n_slots)`` click probabilities for those candidate rows."""
    slot, reward, item = log.slot[train], log.reward[train], log.item[train]
    overall = (reward.sum() + 0.5) / (reward.size + 1.0)  # never 0: the slots' prior needs it
    shown = np.bincount(slot, minlength=log.n_slots).astype(np.float64)
    clicks = np.bincount(slot, weights=reward, minlength=log.n_slots)
    # A slot's prior weight in impressions: ``prior`` clicks' worth at the overall rate.
    weight = prior / max(overall, 1e-6)
    p_slot = (clicks + weight * overall) / (shown + weight)
    n_items = log.items.size
    expected = np.bincount(item, weights=p_slot[slot], minlength=n_items)
    observed = np.bincount(item, weights=reward, minlength=n_items)
    theta = (observed + prior) / (expected + prior)
    q = p_slot[None, :] * theta[log.cand_item[cand_rows], None]
    return np.clip(q, 0.0, 1.0)


def cross_fitted_rewards(log: BanditLog, folds: int = 5, seed: int = 0,
                         prior: float = PRIOR) -> np.ndarray:
    """``(M, n_slots)`` predictions, each request's from a model fitted on the other folds
    (requests are split at random into ``folds`` groups)."""
    if folds < 2:
        raise InvalidInput(f"cross-fitting needs at least 2 folds, got {folds}")
    fold_of_request = np.random.default_rng(seed).permutation(log.n_requests) % folds
    fold_of_event = fold_of_request[log.request]
    fold_of_cand = fold_of_request[log.cand_request]
    q = np.empty((log.cand_item.size, log.n_slots))
    for f in range(folds):
        rows = np.flatnonzero(fold_of_cand == f)
        if rows.size:
            q[rows] = fit_predict(log, fold_of_event != f, rows, prior)
    return q
