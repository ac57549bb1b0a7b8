"""The backtest's exploration policy (``serving.backtest.exploration``) on a hand-made log:
requests found, slates re-ranked, clicks from the truth, the comparison and its verdict."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from base_model.artifact import BaseScores
from online_layer.config import OnlineLayerConfig
from serving.backtest.data import ReplayData
from serving.backtest.exploration import ArmLog, ExploreSettings, compare, request_starts, run_arm
from serving.backtest.online import OnlineSession

HOUR_US = 3_600_000_000
DIM = 4


def _log(requests: int = 120, slate: int = 6, seed: int = 0) -> tuple[ReplayData, BaseScores]:
    """``requests`` slates, one every 2 minutes; half the items are born mid-log."""
    rng = np.random.default_rng(seed)
    n = requests * slate
    req = np.repeat(np.arange(requests), slate)
    ts = (req * 120_000_000).astype(np.int64)
    born_late = rng.random(40) < 0.5
    items = np.empty(n, dtype=np.int64)
    for r in range(requests):
        live = np.flatnonzero(~born_late | (r >= requests // 2))
        items[r * slate:(r + 1) * slate] = rng.choice(live, slate, replace=False)
    quality = rng.normal(-1.5, 1.0, 40)
    positions = np.tile(np.arange(slate), requests)
    true_ctr = 1 / (1 + np.exp(-quality[items])) / (1.0 + positions) ** 0.7
    data = ReplayData(
        training_set=pa.table({"x": np.zeros(n)}), ts_us=ts, labels=np.zeros(n),
        user_ids=np.array([f"u{r % 7}" for r in req], dtype=object),
        item_ids=np.array([f"i{i}" for i in items], dtype=object),
        user_features=np.zeros((n, 1), np.float32), item_features=np.zeros((n, 1), np.float32),
        fresh=np.zeros((n, 3), np.float32), item_categories=np.array(["c"] * n, dtype=object),
        positions=positions.astype(np.int64), hours=((ts // HOUR_US) % 24).astype(np.int64),
        true_ctr=true_ctr,
    )
    emb = rng.normal(size=(n, DIM)).astype(np.float32)
    return data, BaseScores(np.full(n, -1.5, np.float32), emb, emb)


def _session() -> OnlineSession:
    return OnlineSession("b", DIM, OnlineLayerConfig())


def test_requests_are_runs_of_one_time_and_one_user() -> None:
    data, _ = _log(requests=10)
    assert request_starts(data, 0, 60).tolist() == list(range(0, 60, 6))
    assert request_starts(data, 12, 30).tolist() == [12, 18, 24]


def test_each_arm_shows_top_k_per_request_and_exploration_logs_its_propensity() -> None:
    data, scores = _log()
    settings = ExploreSettings(top_k=3, share=1.0, samples=16, learn_every=5, young_hours=1.0)
    greedy = run_arm(data, 0, len(data.ts_us), scores, _session(), settings, None)
    again = run_arm(data, 0, len(data.ts_us), scores, _session(), settings, None)
    assert len(greedy.prob) == 120 * 3 and np.bincount(greedy.request).tolist() == [3] * 120
    assert np.array_equal(greedy.prob, again.prob) and np.array_equal(greedy.click, again.click)
    assert (greedy.propensity == 1.0).all() and greedy.explored_requests == 0
    explored = run_arm(data, 0, len(data.ts_us), scores, _session(), settings, settings.policy())
    assert explored.explored_requests == 120
    assert ((explored.propensity > 0) & (explored.propensity <= 1)).all() and (explored.propensity < 1).any()
    # Shown probabilities are the truth at the shown position: never above position 0's.
    assert (explored.prob <= data.true_ctr.max() + 1e-12).all()
    assert explored.young.any() and not explored.young.all()


def _arm(prob: np.ndarray, young: np.ndarray, hours: np.ndarray) -> ArmLog:
    n = len(prob)
    return ArmLog(np.arange(n), hours, young, prob, (prob > 0.5) * 1.0, np.ones(n), 0)


def test_the_verdict_needs_a_young_gain_whose_interval_excludes_zero_within_budget() -> None:
    rng = np.random.default_rng(1)
    n = 4_000
    hours, young = rng.integers(0, 48, n), rng.random(n) < 0.4
    base = rng.uniform(0.02, 0.2, n)
    settings = ExploreSettings(budget=0.03, resamples=300)
    same = compare(_arm(base, young, hours), _arm(base, young, hours), settings)
    assert same["young_gain"] == 0 and same["verdict"] == "miss" and same["within_budget"]
    better_young = np.where(young, base * 1.3, base * 0.995)
    won = compare(_arm(base, young, hours), _arm(better_young, young, hours), settings)
    assert won["young_gain_ci"][0] > 0 and won["verdict"] == "pass"
    costly = np.where(young, base * 1.1, base * 0.7)
    lost = compare(_arm(base, young, hours), _arm(costly, young, hours), settings)
    assert lost["passes_young"] and not lost["within_budget"] and lost["verdict"] == "miss"
    assert lost["overall_change_ci"][1] < 0


def test_a_log_without_the_truth_is_refused() -> None:
    data, scores = _log(requests=4)
    from dataclasses import replace

    with pytest.raises(ValueError, match="true_ctr"):
        run_arm(replace(data, true_ctr=None), 0, 24, scores, _session(), ExploreSettings(), None)


def test_the_ope_of_the_greedy_order_recovers_its_click_rate_from_the_exploring_log() -> None:
    from serving.backtest.exploration_ope import ope_of_greedy

    # One slot per request: exploration shows the greedy item A with probability 0.4 (else B);
    # A clicks with 0.3, B with 0.1, so greedy's click rate is 0.3 and the log's 0.18.
    rng = np.random.default_rng(3)
    n = 20_000
    shows_a = rng.random(n) < 0.4
    prob = np.where(shows_a, 0.3, 0.1)
    click = (rng.random(n) < prob) * 1.0
    explored = ArmLog(np.arange(n), np.zeros(n, np.int64), np.zeros(n, bool), prob, click,
                      np.where(shows_a, 0.4, 0.6), n, greedy_hit=shows_a * 1.0)
    greedy = ArmLog(np.arange(n), np.zeros(n, np.int64), np.zeros(n, bool), np.full(n, 0.3),
                    (rng.random(n) < 0.3) * 1.0, np.ones(n), 0, greedy_hit=np.ones(n))
    report = ope_of_greedy(explored, greedy, resamples=200)
    assert report["ips_covers_replayed_expected"] and report["snips_covers_replayed_expected"]
    assert report["ips"]["high"] - report["ips"]["low"] < 0.03
    logged = report["logged_ctr_drawn"]
    assert logged["high"] < 0.25 and not logged["low"] <= 0.3 <= logged["high"]  # the log alone is biased
    with pytest.raises(ValueError, match="greedy_hit"):
        ope_of_greedy(ArmLog(np.arange(2), np.zeros(2), np.zeros(2), np.ones(2), np.ones(2), np.ones(2), 0), greedy)
