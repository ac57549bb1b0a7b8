"""protos.metrics against hand-computed values and brute force (no scikit-learn here).

The log-loss and AUC tests came from the backtest's tests (its metrics now delegate here).
"""

from __future__ import annotations

import doctest
import itertools
import math

import numpy as np
import pytest

import protos.metrics
from protos.errors import InvalidInput
from protos.metrics import (
    EPS,
    auc,
    calibration_ratio,
    log_loss,
    log_loss_from_logits,
    log_losses,
    log_losses_from_logits,
    nan_to_none,
    normalized_entropy,
    sigmoid,
)


def test_the_docstring_examples_run() -> None:
    result = doctest.testmod(protos.metrics)
    assert result.attempted >= 10 and result.failed == 0


def brute_force_auc(labels, scores) -> float:
    """Every (positive, negative) pair: 1 if the positive scores higher, 1/2 on a tie."""
    pos = [s for y, s in zip(labels, scores) if y >= 0.5]
    neg = [s for y, s in zip(labels, scores) if y < 0.5]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


def test_log_loss_by_hand():
    # -(ln 0.8 + ln(1 - 0.3) + ln 0.5) / 3
    expected = -(math.log(0.8) + math.log(0.7) + math.log(0.5)) / 3
    assert log_loss([1, 0, 1], [0.8, 0.3, 0.5]) == pytest.approx(expected, rel=1e-12)


def test_log_loss_soft_labels_are_cross_entropy():
    expected = -(0.25 * math.log(0.4) + 0.75 * math.log(0.6))
    assert log_loss([0.25], [0.4]) == pytest.approx(expected, rel=1e-12)


def test_log_loss_clips_certain_mistakes():
    assert log_loss([1, 0], [0.0, 1.0]) == pytest.approx(-math.log(EPS), rel=1e-6)
    assert math.isfinite(log_loss([1], [0.0]))


def test_log_loss_empty_is_nan_and_shape_mismatch_is_an_error():
    assert math.isnan(log_loss([], []))
    with pytest.raises(ValueError, match="labels has 2 values"):
        log_loss([1, 0], [0.5])


def test_auc_by_hand():
    # positives 0.35, 0.8; negatives 0.1, 0.4: pairs won 1 + 0 + 1 + 1 = 3 of 4
    assert auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    assert auc([1, 1, 0], [0.9, 0.8, 0.1]) == 1.0
    assert auc([0, 0, 1], [0.9, 0.8, 0.1]) == 0.0


@pytest.mark.parametrize("seed", range(6))
def test_auc_matches_brute_force_with_many_ties(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, size=60)
    scores = rng.integers(0, 5, size=60) / 4.0  # five distinct values: ties everywhere
    labels[0], labels[1] = 0, 1
    assert auc(labels, scores) == pytest.approx(brute_force_auc(labels, scores), abs=1e-12)


def test_auc_all_ties_is_half_and_one_class_is_nan():
    assert auc([0, 1, 0, 1], [0.3] * 4) == 0.5
    assert math.isnan(auc([1, 1, 1], [0.1, 0.2, 0.3]))
    assert math.isnan(auc([0, 0], [0.1, 0.2]))
    assert math.isnan(auc([], []))
    assert math.isnan(auc([0, 1], [0.1, float("nan")]))


def test_auc_graded_labels_split_at_one_half():
    assert auc([0.2, 0.9, 0.5], [0.1, 0.8, 0.7]) == 1.0


def test_sigmoid_by_hand_and_at_the_extremes() -> None:
    x = np.array([0.0, math.log(3.0), -math.log(3.0), 800.0, -800.0])
    np.testing.assert_allclose(sigmoid(x), [0.5, 0.75, 0.25, 1.0, 0.0], rtol=0, atol=1e-15)
    assert sigmoid(np.zeros(2, dtype=np.float32)).dtype == np.float32


def test_per_example_log_losses_by_hand() -> None:
    np.testing.assert_allclose(
        log_losses([1, 0, 1], [0.8, 0.3, 0.5]),
        [-math.log(0.8), -math.log(0.7), -math.log(0.5)],
        rtol=1e-12,
    )


def test_eps_clipping_is_a_parameter() -> None:
    assert log_loss([1], [0.0], eps=1e-3) == pytest.approx(-math.log(1e-3), rel=1e-9)
    assert log_loss([1], [1.0]) == pytest.approx(-math.log1p(-EPS), rel=1e-9)


def test_empty_is_nan_and_mismatch_is_invalid_input() -> None:
    assert math.isnan(log_loss_from_logits([], []))
    with pytest.raises(InvalidInput, match="labels has 2 values but scores has 1"):
        log_loss([1, 0], [0.5])
    with pytest.raises(ValueError):
        auc([1, 0], [0.5])


def test_logits_path_equals_the_probability_path() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(0.0, 3.0, 500)
    labels = rng.random(500)  # graded labels too
    np.testing.assert_allclose(
        log_losses_from_logits(labels, logits), log_losses(labels, sigmoid(logits)), rtol=1e-9
    )
    assert log_loss_from_logits(labels, logits) == pytest.approx(
        log_loss(labels, sigmoid(logits)), rel=1e-9
    )
    # Where probabilities would clip, the logit path stays exact: log(1 + e^40) - 0 = ~40.
    assert log_loss_from_logits([0], [40.0]) == pytest.approx(40.0, rel=1e-12)


def test_auc_ties_are_averaged() -> None:
    # positives 0.5, 0.9; negatives 0.5, 0.1: wins 0.5 (tie) + 1 + 1 + 1 = 3.5 of 4
    assert auc([1, 0, 1, 0], [0.5, 0.5, 0.9, 0.1]) == pytest.approx(0.875)


def test_nan_to_none_for_json() -> None:
    assert nan_to_none(auc([0, 0], [0.1, 0.2])) is None


def test_normalized_entropy_of_the_base_rate_is_one() -> None:
    labels = np.array([1, 0, 0, 0, 0, 1, 0, 0])  # rate 1/4
    assert normalized_entropy(labels, np.full(8, 0.25)) == pytest.approx(1.0, rel=1e-12)
    # by hand: log loss of a better model over H(1/4) = -(1/4 ln 1/4 + 3/4 ln 3/4)
    probs = np.where(labels == 1, 0.6, 0.1)
    h = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    ll = -(2 * math.log(0.6) + 6 * math.log(0.9)) / 8
    assert normalized_entropy(labels, probs) == pytest.approx(ll / h, rel=1e-12)
    assert math.isnan(normalized_entropy([1, 1], [0.5, 0.5]))
    assert math.isnan(normalized_entropy([0, 0], [0.5, 0.5]))
    assert math.isnan(normalized_entropy([], []))


def test_calibration_ratio_by_hand() -> None:
    assert calibration_ratio([1, 0, 0, 1], [0.5, 0.25, 0.25, 0.5]) == pytest.approx(0.75)
    assert calibration_ratio([1, 0], [0.9, 0.3]) == pytest.approx(1.2)
    assert math.isnan(calibration_ratio([0, 0], [0.1, 0.2]))
