"""The Cython kernel computes exactly what the NumPy reference states (to 1e-9)."""

from __future__ import annotations

import numpy as np
import pytest

from online_layer.ftrl import FTRLProximal
from online_layer.reference import FTRLReference
from online_layer.synthetic import benchmark_batch


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"alpha": 0.3, "beta": 0.1, "l1": 0.0, "l2": 0.0},
        {"alpha": 0.1, "beta": 2.0, "l1": 2.0, "l2": 5.0},
    ],
    ids=["defaults", "no-regularisation", "strong-regularisation"],
)
def test_same_batches_give_the_same_weights_and_scores(params: dict) -> None:
    # 64 dense + 20 hashed slots into 2**12: production-shaped, with many collisions so
    # repeated coordinates within a row and across rows are exercised.
    fast = FTRLProximal(64, 12, "base-1", **params)
    slow = FTRLReference(64, 12, "base-1", **params)
    for seed, size in enumerate([1, 7, 64, 256, 1, 300]):
        inputs, labels = benchmark_batch(size, hash_bits=12, seed=seed)
        np.testing.assert_allclose(
            fast.predict_many(inputs), slow.predict_many(inputs), rtol=0, atol=1e-9
        )
        fast.learn_many(inputs, labels)
        slow.learn_many(inputs, labels)
    np.testing.assert_allclose(fast.weights(), slow.weights(), rtol=0, atol=1e-9)
    for a, b in zip(fast.state(), slow.state(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-9)
    probe, _ = benchmark_batch(500, hash_bits=12, seed=99)
    np.testing.assert_allclose(fast.predict_many(probe), slow.predict_many(probe), rtol=0, atol=1e-9)
    assert fast.nnz() == slow.nnz() > 0


def test_a_snapshot_moves_between_implementations() -> None:
    fast = FTRLProximal(64, 12, "base-1")
    for seed in range(3):
        fast.learn_many(*benchmark_batch(200, hash_bits=12, seed=seed))
    slow = FTRLReference.from_snapshot(fast.snapshot(), "base-1")
    probe, _ = benchmark_batch(100, hash_bits=12, seed=7)
    np.testing.assert_allclose(fast.predict_many(probe), slow.predict_many(probe), rtol=0, atol=1e-12)
    back = FTRLProximal.from_snapshot(slow.snapshot(), "base-1")
    assert np.array_equal(back.weights(), fast.weights())
    assert fast.nnz() > 0  # not an agreement on zero weights
