"""Synthetic data for the online layer's tests and benchmark (no other package needed).

``benchmark_batch`` makes rows shaped like production (64 dense columns, 20 hashed slots
drawn Zipf-like over 100k ids each) with labels from a hidden logistic model.

``SyntheticWorld`` is a tiny ranking world whose base model is right about user-item
affinity but blind to two things the online layer can learn: a per-item trend (what fresh
feedback reveals) and a per-(user, category) taste; clicks also fall with position.
Requests come out as ``ServedRecord`` built with the real ``OnlineFeaturizer``, feedback as
events-schema dicts, so tests drive the learner exactly as serving would.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import TypeAlias

import numpy as np

from online_layer.features import OnlineFeaturizer, OnlineInputs
from online_layer.hashing import mix64, to_index
from online_layer.served import ServedRecord

# One feedback event in the events schema, as a dict (``add_feedback`` takes a list of them).
Event: TypeAlias = dict[str, str | datetime | float | int]


def benchmark_batch(
    n: int,
    n_dense: int = 64,
    n_sparse: int = 20,
    hash_bits: int = 18,
    seed: int = 0,
) -> tuple[OnlineInputs, np.ndarray]:
    """``n`` production-shaped rows and 0/1 labels (deterministic given ``seed``)."""
    rng = np.random.default_rng(seed)
    dense = rng.normal(size=(n, n_dense)) / np.sqrt(n_dense)
    ids = (rng.zipf(1.3, size=(n, n_sparse)) % 100_000).astype(np.uint64)
    slots = np.arange(n_sparse, dtype=np.uint64)[None, :]
    sparse = to_index(mix64(ids * np.uint64(n_sparse) + slots), hash_bits)
    base = rng.normal(-2.0, 1.0, size=n)
    hidden = np.sin(np.arange(n_dense) * 0.7)
    slot_effect = ((ids % np.uint64(7)).astype(np.float64) - 3.0) * 0.05
    logit = base + dense @ hidden + slot_effect.sum(axis=1)
    labels = (rng.random(n) < 1.0 / (1.0 + np.exp(-logit))).astype(np.float64)
    return OnlineInputs(base, dense, sparse), labels


class SyntheticWorld:
    """A seeded ranking world (see the module docstring).

    Parameters
    ----------
    featurizer : OnlineFeaturizer
        Builds the served rows (its ``embedding_dim`` sizes the embeddings).
    base_version : str
        Written into every served record.
    trend_scale, taste_scale : float
        Standard deviations of the item trend and the user x category taste (logits).
    """

    def __init__(
        self,
        featurizer: OnlineFeaturizer,
        base_version: str = "base-1",
        n_users: int = 200,
        n_items: int = 300,
        n_categories: int = 6,
        trend_scale: float = 1.0,
        taste_scale: float = 0.7,
        position_decay: float = 0.12,
        seed: int = 0,
    ) -> None:
        self.featurizer = featurizer
        self.base_version = base_version
        self.rng = np.random.default_rng(seed)
        d = featurizer.embedding_dim
        self.users = [f"u{i}" for i in range(n_users)]
        self.items = [f"i{i}" for i in range(n_items)]
        self.categories = [f"c{i}" for i in range(n_categories)]
        self.user_emb = self.rng.normal(size=(n_users, d))
        self.item_emb = self.rng.normal(size=(n_items, d))
        self.item_cat = self.rng.integers(0, n_categories, size=n_items)
        self.trend = self.rng.normal(0.0, trend_scale, size=n_items)
        self.taste = self.rng.normal(0.0, taste_scale, size=(n_users, n_categories))
        self.position_decay = position_decay
        self._user_index = {u: i for i, u in enumerate(self.users)}
        self._item_index = {it: i for i, it in enumerate(self.items)}
        self._count = 0

    def base_logits(self, user: int, items: np.ndarray) -> np.ndarray:
        u = self.user_emb[user] / np.linalg.norm(self.user_emb[user])
        v = self.item_emb[items] / np.linalg.norm(self.item_emb[items], axis=1, keepdims=True)
        return -2.2 + 1.5 * (v @ u)

    def true_logits(self, user: int, items: np.ndarray, positions: np.ndarray) -> np.ndarray:
        return (
            self.base_logits(user, items)
            + self.trend[items]
            + self.taste[user, self.item_cat[items]]
            - self.position_decay * positions
        )

    def request(self, when: datetime, k: int = 8, n_candidates: int = 24) -> ServedRecord:
        """One Rank call: candidates scored by the base, top-k recorded as shown."""
        self._count += 1
        user = int(self.rng.integers(0, len(self.users)))
        cands = self.rng.choice(len(self.items), size=n_candidates, replace=False)
        shown = cands[np.argsort(-self.base_logits(user, cands), kind="stable")[:k]]
        inputs = self.featurizer.transform(
            self.base_logits(user, shown),
            self.user_emb[user],
            self.item_emb[shown],
            np.zeros((k, len(self.featurizer.fresh_features))),
            self.users[user],
            [self.items[i] for i in shown],
            [self.categories[c] for c in self.item_cat[shown]],
            hours=when.hour,
        )
        return ServedRecord(
            request_id=f"r{self._count}",
            user_id=self.users[user],
            request_time=when,
            base_version=self.base_version,
            item_ids=tuple(self.items[i] for i in shown),
            inputs=inputs,
        )

    def feedback(self, record: ServedRecord, when: datetime) -> list[Event]:
        """One event per shown item, label drawn from the true click probability."""
        user = self._user_index[record.user_id]
        items = np.array([self._item_index[i] for i in record.item_ids])
        positions = np.arange(len(items))
        p = 1.0 / (1.0 + np.exp(-self.true_logits(user, items, positions)))
        clicks = self.rng.random(len(items)) < p
        return [
            {
                "request_id": record.request_id,
                "user_id": record.user_id,
                "item_id": item,
                "ts": when,
                "label": float(click),
                "position": int(pos),
            }
            for item, click, pos in zip(record.item_ids, clicks, positions, strict=True)
        ]

    def stream(
        self, n_requests: int, start: datetime, step: timedelta = timedelta(seconds=1),
        k: int = 8,
    ) -> Iterator[tuple[ServedRecord, list[Event]]]:
        """``(served record, its feedback events)`` for consecutive requests."""
        when = start
        for _ in range(n_requests):
            record = self.request(when, k=k)
            yield record, self.feedback(record, when)
            when += step
