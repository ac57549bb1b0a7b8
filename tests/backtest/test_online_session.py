"""The hybrid's online layer learns test-then-train: no score ever used its own label.

Uses the real Cython FTRL and featurizer on hand-made base scores (no base fit needed).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from base_model.artifact import BaseScores
from online_layer.config import OnlineLayerConfig
from serving.backtest.data import ReplayData
from serving.backtest.online import OnlineSession

N, D, BATCH = 600, 4, 50


def _data(labels: np.ndarray) -> ReplayData:
    rng = np.random.default_rng(0)
    n = labels.size
    return ReplayData(
        training_set=pa.table({"x": np.zeros(n)}),
        ts_us=np.arange(n, dtype=np.int64) * 1_000_000,
        labels=labels.astype(np.float64),
        user_ids=np.array([f"u{i % 7}" for i in range(n)], dtype=object),
        item_ids=np.array([f"i{i % 5}" for i in range(n)], dtype=object),
        user_features=np.zeros((n, 6), np.float32),
        item_features=np.zeros((n, 10), np.float32),
        fresh=rng.random((n, 3)).astype(np.float32),
        item_categories=np.array([f"c{i % 3}" for i in range(n)], dtype=object),
        positions=np.arange(n, dtype=np.int64) % 4,
        hours=(np.arange(n, dtype=np.int64) // 30) % 24,
    )


def _scores(n: int) -> BaseScores:
    rng = np.random.default_rng(1)
    return BaseScores(
        logits=rng.normal(-1.0, 0.5, n).astype(np.float32),
        user_embeddings=rng.normal(0, 1, (n, D)).astype(np.float32),
        item_embeddings=rng.normal(0, 1, (n, D)).astype(np.float32),
    )


def _run(labels: np.ndarray) -> tuple[np.ndarray, OnlineSession]:
    session = OnlineSession("b1", D, OnlineLayerConfig(hash_bits=10, alpha=0.5))
    probs = session.test_then_train(_data(labels), 0, labels.size, _scores(labels.size), BATCH)
    return probs, session


def test_first_batch_is_exactly_the_base():
    labels = (np.arange(N) % 3 == 0).astype(float)
    probs, session = _run(labels)
    base = 1 / (1 + np.exp(-_scores(N).logits.astype(np.float64)))
    np.testing.assert_allclose(probs[:BATCH], base[:BATCH], rtol=1e-9)
    assert not np.allclose(probs[BATCH:], base[BATCH:])  # and it did learn afterwards
    assert session.batches == N // BATCH and session.examples == N
    assert session.learn_seconds > 0


@pytest.mark.parametrize("flip_from", [BATCH * 4, BATCH * 4 + 17])
def test_scores_never_depend_on_their_own_or_later_labels(flip_from):
    """Flip every label from ``flip_from`` on: the batch holding it and all before score the same."""
    labels = (np.random.default_rng(3).random(N) < 0.3).astype(float)
    flipped = labels.copy()
    flipped[flip_from:] = 1.0 - flipped[flip_from:]
    a, _ = _run(labels)
    b, _ = _run(flipped)
    unchanged = (flip_from // BATCH + 1) * BATCH  # end of the batch that holds flip_from
    np.testing.assert_array_equal(a[:unchanged], b[:unchanged])
    assert not np.allclose(a[unchanged:], b[unchanged:])  # later batches did learn from them


def test_learning_helps_on_a_learnable_stream():
    """Items i0 always clicked, others never: after a few batches the hybrid knows it."""
    items = np.arange(N) % 5
    labels = (items == 0).astype(float)
    probs, _ = _run(labels)
    late = slice(N // 2, N)
    assert probs[late][items[late] == 0].mean() > probs[late][items[late] != 0].mean() + 0.2


def _delayed(labels: np.ndarray, delay_s: float, batch: int = 7) -> np.ndarray:
    """Learning as serving's learner does: each row's feedback ``delay_s`` after it (rows
    are 1 s apart in ``_data``)."""
    session = OnlineSession("b1", D, OnlineLayerConfig(hash_bits=10, alpha=0.5))
    return session.test_then_train(
        _data(labels), 0, labels.size, _scores(labels.size), batch, delay_us=int(delay_s * 1e6)
    )


def test_delay_mode_scores_with_exactly_the_feedback_due():
    """Row i sees the labels of rows j with ts_j + delay <= ts_i, and no other: flipping the
    labels from row k on changes no score before row k + delay."""
    labels = (np.random.default_rng(3).random(N) < 0.3).astype(float)
    delay, k = 40, 250
    flipped = labels.copy()
    flipped[k:] = 1.0 - flipped[k:]
    a, b = _delayed(labels, delay), _delayed(flipped, delay)
    np.testing.assert_array_equal(a[: k + delay], b[: k + delay])
    assert a[k + delay] != b[k + delay]  # the first row whose due feedback includes row k
    base = 1 / (1 + np.exp(-_scores(N).logits.astype(np.float64)))
    np.testing.assert_allclose(a[:delay], base[:delay], rtol=1e-9)  # nothing due yet
    assert a[delay] != base[delay]  # row 0's feedback is due at exactly ts_0 + delay


def test_delay_mode_is_independent_of_the_learn_call_size():
    """FTRL learns per example: the size of the learn_many calls changes nothing."""
    labels = (np.arange(N) % 3 == 0).astype(float)
    np.testing.assert_array_equal(_delayed(labels, 25, batch=1), _delayed(labels, 25, batch=512))


def test_zero_delay_is_learning_each_event_before_the_next():
    labels = (np.random.default_rng(8).random(N) < 0.4).astype(float)
    one_by_one = OnlineSession("b1", D, OnlineLayerConfig(hash_bits=10, alpha=0.5)).test_then_train(
        _data(labels), 0, N, _scores(N), 1
    )
    np.testing.assert_array_equal(_delayed(labels, 0), one_by_one)
