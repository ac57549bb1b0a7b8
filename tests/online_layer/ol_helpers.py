"""Builders shared by the online-layer tests: small, seeded, real components only.

(A plain module with a unique name: the test directories are not packages.)
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import numpy as np

from online_layer.config import OnlineLayerConfig
from online_layer.features import OnlineInputs
from online_layer.learner import OnlineLearner
from online_layer.synthetic import SyntheticWorld

START = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)
EMBEDDING_DIM = 8


def random_batch(
    seed: int, n: int = 40, n_dense: int = 6, n_sparse: int = 4, hash_bits: int = 10
) -> tuple[OnlineInputs, np.ndarray]:
    """Rows with repeated hashed indices (a small index range) and 0/1 labels."""
    rng = np.random.default_rng(seed)
    inputs = OnlineInputs(
        rng.normal(-1.0, 1.0, size=n),
        rng.normal(size=(n, n_dense)) / np.sqrt(n_dense),
        rng.integers(0, min(1 << hash_bits, 64), size=(n, n_sparse)),
    )
    return inputs, (rng.random(n) < 0.3).astype(np.float64)


class FakeClock:
    """A wall clock the test moves by hand (unix seconds)."""

    def __init__(self, now: float = 1_798_761_600.0) -> None:  # 2027-01-01: after START
        self.now = now

    def __call__(self) -> float:
        return self.now


def synthetic_user(user_id: str) -> bool:
    """``SyntheticWorld``'s users (``u0``, ``u1``, ...) are the established population: the
    guard treats them as known from the start (as serving does the base's vocabulary)."""
    return user_id.startswith("u") and user_id[1:].isdigit()


def small_config(**overrides: Any) -> OnlineLayerConfig:
    settings: dict[str, Any] = {
        "hash_bits": 12,
        "batch_size": 64,
        "join_window_s": 60.0,
        "max_batch_delay_s": 30.0,
        "publish_every_batches": 5,
        "publish_every_s": 3600.0,
        "label_rate_min_events": 300,
        "readiness_min_examples": 500,
        "readiness_window": 2_000,
    }
    settings.update(overrides)
    return OnlineLayerConfig(**settings)


def world_for(learner: OnlineLearner, seed: int = 0, **kwargs: Any) -> SyntheticWorld:
    return SyntheticWorld(learner.featurizer, base_version=learner.base_version, seed=seed, **kwargs)


def feed(learner: OnlineLearner, world: SyntheticWorld, n_requests: int, start: datetime = START):
    """Serve and give feedback for ``n_requests`` requests; every batch must be accepted."""
    for record, events in world.stream(n_requests, start):
        learner.record_served(record)
        result = learner.add_feedback(events)
        assert result.rejected is None, result
    return learner
