"""Synthetic logs with known values for the off-policy estimators' tests."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pyarrow as pa

from protos.events import conform
from serving.offpolicy.logdata import BanditLog, bandit_log
from serving.offpolicy.policies import TargetPolicy

T0 = datetime(2026, 1, 5, tzinfo=UTC)


def events_table(request: np.ndarray, item: np.ndarray, slot: np.ndarray, label: np.ndarray,
                 propensity: np.ndarray) -> pa.Table:
    """An events table of the given rows (ids ``r<request>``, ``i<item>``; a NaN
    propensity is a null: not known)."""
    n = len(request)
    return conform(pa.table({
        "user_id": pa.array([f"u{r % 7}" for r in request], pa.string()),
        "item_id": pa.array([f"i{i}" for i in item], pa.string()),
        "ts": pa.array([T0] * n, pa.timestamp("us", tz="UTC")),
        "label": pa.array(np.asarray(label, dtype=np.float32)),
        "request_id": pa.array([f"r{r}" for r in request], pa.string()),
        "position": pa.array(np.asarray(slot, dtype=np.int32)),
        "propensity": pa.array(np.asarray(propensity, dtype=np.float32), from_pandas=True),
    }))


def one_slot_bandit(n: int, mu: np.ndarray, q: np.ndarray, seed: int,
                    deterministic: bool = False) -> BanditLog:
    """``n`` one-slot requests: item ``a ~ mu``, click ``~ Bernoulli(q[a])`` (or ``q[a]``
    itself when ``deterministic``); catalogue candidates (every item in every request)."""
    rng = np.random.default_rng(seed)
    item = rng.choice(mu.size, size=n, p=mu)
    item[: mu.size] = np.arange(mu.size)  # every item appears: the catalogue is complete
    label = q[item] if deterministic else (rng.random(n) < q[item]).astype(float)
    return bandit_log(events_table(np.arange(n), item, np.zeros(n, int), label, mu[item]),
                      "catalogue")


def item_policy(log: BanditLog, pi: np.ndarray, name: str = "target") -> TargetPolicy:
    """The one-slot policy showing item ``a`` with probability ``pi[a]`` (ids ``i<a>``)."""
    index = np.array([int(s[1:]) for s in log.items])
    return TargetPolicy(name, pi[index][log.cand_item][:, None])


def item_values(log: BanditLog, q: np.ndarray) -> np.ndarray:
    """``(M, 1)`` the true click probability of every candidate (a perfect reward model)."""
    index = np.array([int(s[1:]) for s in log.items])
    return q[index][log.cand_item][:, None].astype(float)
