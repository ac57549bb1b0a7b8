"""Off-policy logs on the simulator, where every policy's true click rate is known.

``feature_store.simulate`` gives each impression its true click probability ``true_ctr =
examine(slot) * attraction(user, item, time)`` with ``examine(k) = 1 / (1 + k) **
position_decay``: the item-position model the estimators assume, exactly. So the
attraction of every item of a slate is ``true_ctr / examine(logged slot)``, and any
re-ordering of the slate has a known click probability at every slot.

``relog`` re-serves each simulated slate with a stochastic logging policy (epsilon-greedy
over a score: closed-form propensities), draws the clicks from the truth, and writes the
propensity of every shown (item, slot); ``true_value`` is a candidate policy's exact
click rate per slot on those same requests, what an estimate from the log must cover.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from protos.errors import InvalidInput
from serving.offpolicy.logdata import BanditLog, bandit_log
from serving.offpolicy.policies import TargetPolicy, epsilon_greedy, ranks

__all__ = ["Relogged", "examination", "relog", "true_value"]


@dataclass(frozen=True, eq=False)
class Relogged:
    """A simulator log re-served by a known stochastic policy.

    ``events``: the events (positions, labels, propensities, ``true_ctr`` as re-served);
    ``log``: their ``BanditLog`` (request candidates); ``attraction``: ``(M,)`` each
    candidate's click probability when examined; ``examine``: ``(n_slots,)``.
    """

    events: pa.Table
    log: BanditLog
    attraction: np.ndarray
    examine: np.ndarray
    logging: TargetPolicy


def examination(n_slots: int, position_decay: float) -> np.ndarray:
    """The simulator's probability that slot ``k`` is looked at."""
    return 1.0 / (1.0 + np.arange(n_slots)) ** position_decay


def relog(events: pa.Table, position_decay: float, scores: np.ndarray | None = None,
          epsilon: float = 0.3, seed: int = 0) -> Relogged:
    """Re-serve ``events`` (a ``feature_store.simulate`` log: ``true_ctr`` and ``position``
    on every row) with epsilon-greedy over ``scores`` (``(n,)`` one per event, i.e. per
    candidate; None: the attraction times lognormal noise, a mediocre ranker).

    Raises:
        InvalidInput: rows without ``true_ctr`` (not a simulator log).
    """
    if events.column("true_ctr").null_count:
        raise InvalidInput("relog needs a simulator log (true_ctr on every row)")
    # The simulator's own order is not used: any propensity will do to read the candidates.
    base = bandit_log(events.set_column(
        events.schema.get_field_index("propensity"), "propensity",
        pa.array(np.ones(events.num_rows), pa.float32())))
    rows = base.event_of_cand  # request mode: candidate row -> event
    true_ctr = events.column("true_ctr").to_numpy(zero_copy_only=False).astype(np.float64)[rows]
    examine = examination(base.n_slots, position_decay)
    attraction = true_ctr / examine[base.slot[rows]]
    rng = np.random.default_rng(seed)
    if scores is None:
        scores = attraction * rng.lognormal(0.0, 1.0, attraction.size)
    else:
        scores = np.asarray(scores, dtype=np.float64)[rows]
    logging = epsilon_greedy(base, scores, epsilon, name=f"epsilon-greedy({epsilon:g})")
    assert logging.probs is not None
    slot = _draw_slots(base, scores, epsilon, rng)
    shown_ctr = examine[slot] * attraction
    label = (rng.random(slot.size) < shown_ctr).astype(np.float32)
    propensity = logging.probs[np.arange(slot.size), slot]
    table = events.take(pa.array(rows))
    for name, values, type_ in (("position", slot.astype(np.int32), pa.int32()),
                                ("label", label, pa.float32()),
                                ("true_ctr", shown_ctr.astype(np.float32), pa.float32()),
                                ("propensity", propensity.astype(np.float32), pa.float32())):
        table = table.set_column(table.schema.get_field_index(name), name, pa.array(values, type_))
    log = bandit_log(table)
    # Rows were taken in candidate order, so the new log's candidates are the same rows.
    assert np.array_equal(log.event_of_cand, np.arange(log.n))
    return Relogged(table, log, attraction, examine, logging)


def true_value(relogged: Relogged, target: TargetPolicy) -> float:
    """The exact click rate per logged slot of ``target`` on the relogged requests."""
    log = relogged.log
    if target.probs is None:
        target = relogged.logging
    assert target.probs is not None
    value = target.probs * relogged.attraction[:, None] * relogged.examine[None, :]
    per_slot = np.add.reduceat(value, log.cand_start[:-1], axis=0)  # (R, slots)
    return float(per_slot[log.request, log.slot].mean())


def _draw_slots(log: BanditLog, scores: np.ndarray, epsilon: float,
                rng: np.random.Generator) -> np.ndarray:
    """One draw of the epsilon-greedy ranking: each request is shuffled with probability
    ``epsilon``, else sorted by ``scores``; returns each candidate's slot."""
    explore = rng.random(log.n_requests) < epsilon
    shuffled = rng.random(scores.size)
    key = np.where(explore[log.cand_request], shuffled, scores)
    return ranks(log, key)
