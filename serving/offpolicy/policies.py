"""Candidate policies as item-position marginals ``pi(candidate, slot)`` over a log's
candidates (``serving.offpolicy.logdata``): an ``(M, n_slots)`` array whose column ``k``
sums to 1 within each request (each slot is filled by exactly one candidate).

A ranking policy's marginals are all the item-position estimators need, so a deterministic
ranker is a 0/1 array (its ranking) and a stochastic one the probabilities of its draws.
The logging policy itself is the one policy whose marginals need not be known: it is
``TargetPolicy(name, None)``, evaluated with the logged propensities (on-policy sanity).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from protos.errors import InvalidInput
from serving.offpolicy.logdata import BanditLog

__all__ = ["TargetPolicy", "epsilon_greedy", "logged", "ranking", "uniform"]


@dataclass(frozen=True, eq=False)
class TargetPolicy:
    """A candidate policy. ``probs``: ``(M, n_slots)`` marginals; None: the logging policy."""

    name: str
    probs: np.ndarray | None

    def at_logged(self, log: BanditLog) -> np.ndarray:
        """``(n,)`` the policy's probability of each logged (item, slot)."""
        if self.probs is None:
            return log.propensity.copy()
        return self.probs[log.event_cand, log.slot]


def logged() -> TargetPolicy:
    """The policy that wrote the log: every weight is 1, every estimator the logged rate."""
    return TargetPolicy("logged", None)


def uniform(log: BanditLog) -> TargetPolicy:
    """Each slot filled by a uniformly random candidate of its request (the marginal of a
    uniformly random permutation when there are at least as many candidates as slots)."""
    per = 1.0 / log.cand_count[log.cand_request]
    return TargetPolicy("uniform", np.repeat(per[:, None], log.n_slots, axis=1))


def ranking(log: BanditLog, scores: np.ndarray, name: str = "ranking") -> TargetPolicy:
    """The deterministic ranker that sorts each request's candidates by ``scores``
    (``(M,)``, higher first; ties keep candidate order) and fills slot k with its k-th."""
    return TargetPolicy(name, _rank_matrix(log, np.asarray(scores, dtype=np.float64)))


def epsilon_greedy(log: BanditLog, scores: np.ndarray, epsilon: float,
                   name: str = "epsilon-greedy") -> TargetPolicy:
    """With probability ``epsilon`` a uniformly random order, else the ranking by ``scores``:
    a stochastic ranker whose marginals are known in closed form."""
    if not 0.0 <= epsilon <= 1.0:
        raise InvalidInput(f"epsilon must be in [0, 1], got {epsilon!r}")
    greedy = _rank_matrix(log, np.asarray(scores, dtype=np.float64))
    random = uniform(log).probs
    assert random is not None
    return TargetPolicy(name, (1.0 - epsilon) * greedy + epsilon * random)


def ranks(log: BanditLog, scores: np.ndarray) -> np.ndarray:
    """``(M,)`` 0-based rank of each candidate within its request by ``scores`` (higher first)."""
    if scores.shape != log.cand_item.shape:
        raise InvalidInput(f"scores must have one value per candidate ({log.cand_item.size}), "
                           f"got shape {scores.shape}")
    if not np.all(np.isfinite(scores)):
        raise InvalidInput("scores must be finite")
    request = log.cand_request
    order = np.lexsort((np.arange(scores.size), -scores, request))
    rank = np.empty(scores.size, dtype=np.int64)
    rank[order] = np.arange(scores.size) - log.cand_start[request[order]]
    return rank


def _rank_matrix(log: BanditLog, scores: np.ndarray) -> np.ndarray:
    rank = ranks(log, scores)
    probs = np.zeros((scores.size, log.n_slots))
    inside = rank < log.n_slots
    probs[np.flatnonzero(inside), rank[inside]] = 1.0
    return probs
