"""The evidence section's arithmetic on cases checked by hand (issue 18's judgement rules).

Normalised entropy, the cluster bootstrap, the "better" verdict, "gap closed" only where its
denominator's interval lies above zero, and the no-model baselines' causality.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from protos.metrics import normalized_entropy
from serving.backtest.baselines import item_rate_so_far
from serving.backtest.evidence import (
    JUDGEMENT_RULES,
    bootstrap_ne,
    cluster_sums,
    entropy,
    evidence,
    verdict,
)


def test_ne_point_value_is_log_loss_over_the_base_rate_entropy():
    y = np.array([1.0, 0.0, 0.0, 0.0])
    p = np.array([0.5, 0.2, 0.2, 0.2])
    ll = -(math.log(0.5) + 3 * math.log(0.8)) / 4
    h = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    point, _ = bootstrap_ne(cluster_sums(y, {"m": p}, None), samples=10)
    assert point[0] == pytest.approx(ll / h, rel=1e-12)
    assert point[0] == pytest.approx(normalized_entropy(y, p), rel=1e-9)


def test_two_user_bootstrap_interval_is_the_two_users_own_ne():
    """With two users the resamples are AA (1/4), AB (1/2), BB (1/4): a 95% percentile
    interval runs from one user's own NE to the other's (duplicating a user changes no NE)."""
    y = np.array([1, 0, 0, 0, 1, 1, 0, 0], dtype=float)
    p = np.array([0.6, 0.3, 0.2, 0.1, 0.7, 0.4, 0.5, 0.2])
    users = np.array(["a"] * 4 + ["b"] * 4)
    ne_a = normalized_entropy(y[:4], p[:4])
    ne_b = normalized_entropy(y[4:], p[4:])
    _, draws = bootstrap_ne(cluster_sums(y, {"m": p}, users), samples=2000)
    values = np.unique(np.round(draws[:, 0], 12))
    assert len(values) == 3  # AA, AB, BB and nothing else
    assert values.min() == pytest.approx(min(ne_a, ne_b)) and values.max() == pytest.approx(max(ne_a, ne_b))
    assert np.mean(np.isclose(draws[:, 0], ne_a)) == pytest.approx(0.25, abs=0.04)


def test_verdicts_follow_rule_3():
    assert verdict(-0.02, -0.001) == "better"
    assert verdict(0.001, 0.02) == "worse"
    assert verdict(-0.01, 0.01) == "not distinguishable"
    assert "below 0" in JUDGEMENT_RULES["better"]


def _policies(n: int, seed: int = 0) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
    rng = np.random.default_rng(seed)
    truth = rng.uniform(0.05, 0.6, n)
    y = (rng.random(n) < truth).astype(float)
    users = np.array([f"u{i % 200}" for i in range(n)])
    good = np.clip(truth, 0.01, 0.99)
    flat = np.full(n, y.mean())
    return y, {"base_only": flat, "hybrid": good, "daily_fresh": flat + 1e-6, "oracle": good,
               "constant": flat}, users


def test_gap_closed_is_not_estimable_when_the_ceiling_ties_base_only():
    y, probs, users = _policies(4000)
    ev = evidence(y, probs, users, samples=200)
    gap = ev["gap_closed"]["daily_fresh"]
    lo, hi = gap["denominator"]["ci95"]
    assert lo <= 0 <= hi or hi <= 0
    assert gap["status"] == "not estimable" and gap["value"] is None
    assert ev["pairs"]["hybrid - base_only"]["verdict"] == "better"
    assert ev["noise_unit"] == "user" and ev["clusters"] == 200


def test_gap_closed_is_estimated_with_an_interval_when_the_ceiling_is_better():
    y, probs, users = _policies(4000)
    probs["daily_fresh"] = probs["hybrid"]  # the ceiling is as good as hybrid: gap closed = 1
    ev = evidence(y, probs, users, samples=200)
    gap = ev["gap_closed"]["daily_fresh"]
    assert gap["status"] == "estimable" and gap["value"] == pytest.approx(1.0)
    assert gap["ci95"][0] == pytest.approx(1.0) and gap["ci95"][1] == pytest.approx(1.0)
    share = ev["oracle_gap_share"]["hybrid"]
    assert share["value"] == pytest.approx(1.0)


def test_identical_policies_are_not_distinguishable():
    y, probs, users = _policies(2000)
    probs["twin"] = probs["hybrid"].copy()
    pair = evidence(y, probs, users, samples=200)["pairs"]["twin - hybrid"]
    assert pair["ne_delta"] == 0 and pair["ci95"] == [0.0, 0.0]
    assert pair["verdict"] == "not distinguishable"


def test_few_users_fall_back_to_resampling_events():
    y, probs, _ = _policies(500)
    ev = evidence(y, probs, np.array(["u"] * 500), samples=50)
    assert ev["noise_unit"] == "event" and ev["clusters"] == 500


def test_entropy_of_half_is_log_two():
    assert float(entropy(0.5)) == pytest.approx(math.log(2))


def test_item_rate_never_sees_its_own_or_a_simultaneous_label():
    ts = np.array([0, 0, 5, 5, 9], dtype=np.int64)
    items = np.array(["a", "a", "a", "b", "a"], dtype=object)
    y = np.array([1.0, 1.0, 0.0, 1.0, 0.0])
    flipped = y.copy()
    flipped[4] = 1.0  # the last event's own label
    np.testing.assert_array_equal(item_rate_so_far(ts, y, items, 0), item_rate_so_far(ts, flipped, items, 0))
    rate = item_rate_so_far(ts, y, items, 0, prior_events=0.0)
    # event 2 (a, ts 5) sees the two a-events at ts 0 (both clicked), not itself
    assert rate[2] == 1.0
    # event 4 (a, ts 9) sees a@0, a@0, a@5: 2 clicks of 3
    assert rate[4] == pytest.approx(2 / 3)


def test_report_renders_the_evidence_section_and_stays_json(tmp_path):
    """``add_evidence`` on a replay outcome: every policy and baseline gets NE and an
    interval, the section is rendered, and report.json has no NaN."""
    from datetime import UTC, datetime, timedelta

    from serving.backtest.policies import Fit, PolicyRun
    from serving.backtest.render import load_report, write_report
    from serving.backtest.replay import ReplayOutcome, add_evidence
    from serving.backtest.summary import build_report
    from serving.backtest.timeline import make_timeline

    day0 = datetime(2024, 1, 3, tzinfo=UTC)
    y, probs, users = _policies(600)
    shared = Fit(day0, 100, day0, 10.0, "/a", "v1", None, fit_seconds=2.0, samples=300, epochs=3)
    fresh = Fit(day0 + timedelta(days=1), 100, day0, 10.0, "/a", "f1", "v1", fit_seconds=1.0)
    runs = {k: PolicyRun(k, probs["hybrid" if k == "hybrid" else "base_only"], fits=[shared])
            for k in ("static", "base_only", "hybrid", "daily_retrain")}
    runs["hybrid"].online_share = 0.25
    extra = {"daily_fresh": PolicyRun("daily_fresh", probs["daily_fresh"], fits=[shared, fresh]),
             "constant": PolicyRun("constant", probs["constant"]),
             "oracle": PolicyRun("oracle", probs["oracle"])}
    timeline = make_timeline(day0, day0 + timedelta(hours=20), timedelta(0))
    outcome = ReplayOutcome(timeline, y, np.zeros(600, int), runs, 610, 10, [], extra,
                            {"hybrid_online_share": 0.25, "rejected_fits": [], "daily_fresh_epochs": 2})
    report = build_report(
        labels=y, day_index=np.zeros(600, int), days=[day0], runs=runs, events_file="x",
        settings={"warmup": "0d", "base_every": "7d", "daily_every": "1d", "seed": 0,
                  "obey_gate": True},
        span={"eval_start": day0, "eval_end": day0 + timedelta(days=1), "events_evaluated": 600,
              "events_train_only": 10},
        wall_seconds=1.0,
    )
    report = add_evidence(report, outcome, users)
    ev = report["evidence"]
    assert set(ev["policies"]) == {*runs, *extra}
    assert ev["policies"]["hybrid"]["online_share"] == 0.25
    assert ev["policies"]["daily_fresh"]["compute_seconds_span"] == 1.0  # the shared fit left out
    assert "f1" in {f["version"] for f in report["fits"]}
    write_report(tmp_path, report)
    assert load_report(tmp_path / "report.json") == report
    md = (tmp_path / "report.md").read_text()
    assert "## Evidence" in md and "not estimable" in md and "`oracle`" in md
