"""The metrics the backtest's claim rests on, against hand computation and brute force.

The basic ones (log loss, AUC) are ``protos.metrics``'s: their tests are in tests/test_metrics.py.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from serving.backtest.metrics import (
    compute_ratio,
    daily_series,
    critical_value,
    familywise_level,
    gap_closed,
    log_loss,
    paired_delta,
    per_event_log_loss,
)


def test_daily_series_aligns_days_and_marks_empty_and_one_class_days():
    days = np.array([0, 0, 0, 2, 2])
    labels = np.array([1, 0, 1, 1, 1])
    probs = np.array([0.9, 0.2, 0.6, 0.7, 0.8])
    lls, aucs, counts = daily_series(days, labels, probs, n_days=3)
    assert counts == [3, 0, 2]
    assert lls[0] == pytest.approx(log_loss(labels[:3], probs[:3]))
    assert math.isnan(lls[1]) and math.isnan(aucs[1])
    assert aucs[0] == 1.0
    assert math.isnan(aucs[2])  # one class that day
    assert lls[2] == pytest.approx(-(math.log(0.7) + math.log(0.8)) / 2)


def test_gap_closed_arithmetic():
    assert gap_closed(0.50, 0.47, 0.44) == pytest.approx(0.5)
    assert gap_closed(0.50, 0.44, 0.44) == pytest.approx(1.0)
    assert gap_closed(0.50, 0.50, 0.44) == 0.0
    assert gap_closed(0.50, 0.42, 0.44) == pytest.approx(4 / 3)  # beats the ceiling
    assert gap_closed(0.50, 0.53, 0.44) == pytest.approx(-0.5)  # worse than base_only
    assert math.isnan(gap_closed(0.44, 0.43, 0.44))  # no gap
    assert math.isnan(gap_closed(0.40, 0.43, 0.44))  # ceiling worse than base_only
    assert math.isnan(gap_closed(0.50, float("nan"), 0.44))


def test_compute_ratio():
    assert compute_ratio(10.0, 200.0) == pytest.approx(0.05)
    assert math.isnan(compute_ratio(10.0, 0.0))


def test_paired_delta_sees_a_consistent_small_difference():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, size=4000).astype(float)
    good = np.where(labels == 1, 0.7, 0.3)
    slightly_worse = np.where(labels == 1, 0.68, 0.32)
    d = paired_delta(labels, slightly_worse, good)
    assert d.events == 4000
    assert d.low > 0 and d.mean > 0
    same = paired_delta(labels, good, good)
    assert same.mean == 0.0 and same.low == 0.0 and same.high == 0.0


def test_paired_delta_clustered_by_user():
    """One user's session is one unit of evidence: 200 worse events from a single user are
    not 'worse beyond noise' once clustered, though per event they look decisive."""
    rng = np.random.default_rng(4)
    labels = rng.integers(0, 2, size=200).astype(float)
    good = np.where(labels == 1, 0.7, 0.3)
    worse = np.where(labels == 1, 0.6, 0.4)
    per_event = paired_delta(labels, worse, good)
    assert per_event.low > 0 and per_event.clusters == 200
    one_user = paired_delta(labels, worse, good, clusters=np.full(200, "u1"))
    assert one_user.mean == pytest.approx(per_event.mean)
    assert one_user.clusters == 1 and math.isinf(one_user.high) and one_user.low < 0
    # Singleton clusters give exactly the per-event interval.
    singletons = paired_delta(labels, worse, good, clusters=np.arange(200))
    assert singletons.low == pytest.approx(per_event.low) and singletons.high == pytest.approx(per_event.high)
    # Clusters that each hold a mix: the interval widens with the within-user correlation.
    users = np.repeat(np.arange(10), 20)
    shifted = good + np.where(users % 2 == 0, 0.05, -0.05) * (2 * labels - 1)
    clustered = paired_delta(labels, shifted, good, clusters=users)
    assert clustered.clusters == 10
    assert clustered.high - clustered.low > paired_delta(labels, shifted, good).high - paired_delta(labels, shifted, good).low
    with pytest.raises(ValueError, match="clusters has 3 values"):
        paired_delta(labels, worse, good, clusters=np.arange(3))


def test_critical_values_are_students_t_and_widen_with_the_number_of_days():
    # Published t quantiles (two-sided 95%) and the normal limit.
    assert critical_value(0.95, 1) == pytest.approx(12.7062, abs=1e-3)
    assert critical_value(0.95, 4) == pytest.approx(2.7764, abs=1e-3)
    assert critical_value(0.95, 30) == pytest.approx(2.0423, abs=1e-3)
    assert critical_value(0.99, 10) == pytest.approx(3.1693, abs=1e-3)
    assert critical_value(0.95) == pytest.approx(1.95996, abs=1e-5)
    assert critical_value(0.95, 100_000) == critical_value(0.95)
    assert familywise_level(20) == pytest.approx(0.9975)
    assert critical_value(familywise_level(26), 50) > critical_value(familywise_level(20), 50)
    with pytest.raises(ValueError):
        familywise_level(0)
    with pytest.raises(ValueError):
        critical_value(1.0)


def test_few_clusters_give_a_wide_interval():
    """36 events from 5 users are 5 observations: the half-width is Student's t on 4 degrees
    of freedom (2.78) times the cluster-robust standard error, not 1.96 times it."""
    rng = np.random.default_rng(4)
    y = rng.integers(0, 2, 36).astype(float)
    a, b = rng.uniform(0.2, 0.8, 36), rng.uniform(0.2, 0.8, 36)
    users = np.array([f"u{i % 5}" for i in range(36)])
    diff = per_event_log_loss(y, a) - per_event_log_loss(y, b)
    sums = np.array([(diff[users == u] - diff.mean()).sum() for u in sorted(set(users))])
    se = math.sqrt(5 / 4 * (sums**2).sum()) / 36
    d = paired_delta(y, a, b, users)
    assert d.clusters == 5
    assert d.high - d.mean == pytest.approx(2.7764 * se, rel=1e-4)
    assert d.mean - d.low == pytest.approx(2.7764 * se, rel=1e-4)
