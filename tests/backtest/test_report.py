"""report.json / report.md / plots from synthetic policy runs (no tier involved)."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from serving.backtest import POLICIES
from serving.backtest.metrics import log_loss
from serving.backtest.plots import write_plots
from serving.backtest.policies import Fit, PolicyRun
from serving.backtest.render import load_report, render_markdown, results_row, write_report
from serving.backtest.summary import build_report

DAY0 = datetime(2024, 1, 3, tzinfo=UTC)


def _fit(version: str, seconds: float, day: int = 0, fit_seconds: float = 2.0, samples: int = 300) -> Fit:
    """A fit of ``seconds`` wall, ``fit_seconds`` of which were training steps."""
    return Fit(
        DAY0 + timedelta(days=day), 100, DAY0, seconds, f"/a/{version}", version, None,
        fit_seconds=fit_seconds, samples=samples, epochs=3,
    )


def _runs(labels: np.ndarray) -> dict[str, PolicyRun]:
    rng = np.random.default_rng(0)
    noise = rng.normal(0, 1, labels.size)
    truth = np.clip(0.5 + 0.4 * (2 * labels - 1) + 0.0 * noise, 0.01, 0.99)

    def blur(strength: float) -> np.ndarray:
        return np.clip(truth * (1 - strength) + 0.5 * strength + 0.05 * noise * strength, 0.01, 0.99)

    shared = _fit("v1", 20.0)
    return {
        "static": PolicyRun("static", blur(0.9), fits=[shared]),
        "base_only": PolicyRun("base_only", blur(0.8), fits=[shared, _fit("v2", 20.0, 2)]),
        "hybrid": PolicyRun("hybrid", blur(0.6), fits=[shared, _fit("v2", 20.0, 2)], online_seconds=1.5),
        "daily_retrain": PolicyRun(
            "daily_retrain", blur(0.5), fits=[shared] + [_fit(f"d{i}", 20.0, i) for i in range(1, 4)]
        ),
    }


def _weekly_vs_daily_report(labels: np.ndarray, runs: dict[str, PolicyRun], span_days: int) -> dict:
    """A report of 200 events on one day, a weekly base against a daily ceiling, whose
    evaluated span starts at DAY0 (fits cut off there are the shared warm-up)."""
    return build_report(
        labels=labels, day_index=np.zeros(200, int), days=[DAY0], runs=runs, events_file="x",
        settings={"warmup": "2d", "base_every": "7d", "daily_every": "1d", "online_batch": 64, "seed": 0},
        span={"eval_start": DAY0, "eval_end": DAY0 + timedelta(days=span_days), "events_evaluated": 200,
              "events_train_only": 10},
        wall_seconds=1.0,
    )


@pytest.fixture
def report(tmp_path):
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 400).astype(float)
    day_index = np.repeat(np.arange(4), 100)
    days = [DAY0 + timedelta(days=i) for i in range(4)]
    runs = _runs(labels)
    rep = build_report(
        labels=labels,
        day_index=day_index,
        days=days,
        runs=runs,
        events_file="/x/events.parquet",
        settings={"warmup": "2d", "base_every": "2d", "daily_every": "1d", "online_batch": 64, "seed": 0},
        span={
            "first_event": DAY0 - timedelta(days=2),
            "last_event": DAY0 + timedelta(days=4),
            "eval_start": DAY0,
            "eval_end": DAY0 + timedelta(days=4),
            "events_total": 600,
            "events_train_only": 200,
            "events_evaluated": 400,
        },
        wall_seconds=12.0,
    )
    return rep, labels, runs


def test_report_schema_and_values(report):
    rep, labels, runs = report
    assert rep["schema_version"] == 2
    assert list(rep["policies"]) == list(POLICIES)
    for name, row in rep["policies"].items():
        assert row["events"] == 400
        assert row["logloss"] == pytest.approx(log_loss(labels, runs[name].probs))
        assert len(row["daily"]["logloss"]) == len(row["daily"]["auc"]) == len(rep["days"]) == 4
        assert sum(row["daily"]["events"]) == 400
    assert rep["policies"]["hybrid"]["train_seconds"] == pytest.approx(41.5)
    assert rep["policies"]["hybrid"]["online_train_seconds"] == pytest.approx(1.5)
    assert rep["policies"]["daily_retrain"]["train_seconds"] == pytest.approx(80.0)
    c = rep["comparison"]
    p = rep["policies"]
    expected_gap = (p["base_only"]["logloss"] - p["hybrid"]["logloss"]) / (
        p["base_only"]["logloss"] - p["daily_retrain"]["logloss"]
    )
    assert c["gap_closed"] == pytest.approx(expected_gap)
    assert c["compute_ratio"] == pytest.approx(41.5 / 80.0)
    # training compute: 2 fits x 2 s + 1.5 s online, against 4 fits x 2 s; samples 600 / 1200
    assert rep["policies"]["hybrid"]["compute_seconds"] == pytest.approx(5.5)
    assert rep["policies"]["hybrid"]["base_compute_seconds"] == pytest.approx(4.0)
    assert rep["policies"]["daily_retrain"]["train_samples"] == 1200
    assert c["compute_ratio_training"] == pytest.approx(5.5 / 8.0)
    assert c["samples_ratio"] == pytest.approx(0.5)
    # in the evaluated span: less the shared warm-up fit v1 (cut-off at eval_start), 2 s each
    assert c["compute_ratio_span"] == pytest.approx((5.5 - 2.0) / (8.0 - 2.0))
    assert c["compute_judged_on"] == "compute_ratio_span"
    assert c["target"]["hybrid_beats_base_only_logloss"] is True
    assert c["target"]["tenth_of_the_compute"] is False
    assert c["target"]["met"] is False
    # every fit listed once, shared fits not duplicated
    assert sorted(f["version"] for f in rep["fits"]) == ["d1", "d2", "d3", "v1", "v2"]


def test_report_files_are_strict_json_and_readable_markdown(report, tmp_path):
    rep, _, _ = report
    rep["policies"]["static"]["daily"]["auc"][1] = None  # a one-class day
    json_path, md_path = write_report(tmp_path, rep)
    text = json_path.read_text()
    assert "NaN" not in text
    assert load_report(json_path) == json.loads(text)
    md = md_path.read_text()
    assert "| `hybrid` |" in md and "closes" in md and "n/a" in md
    assert "logloss.png" in md
    assert results_row("sim", rep).startswith("| sim | 400 |")


def test_nan_becomes_null(report):
    rep, _, _ = report
    rep["comparison"]["gap_closed"] = None
    assert "no `base_only` → `daily_retrain` log-loss gap" in render_markdown(rep)


def test_build_report_refuses_misaligned_runs(report):
    _, labels, runs = report
    runs["hybrid"] = PolicyRun("hybrid", runs["hybrid"].probs[:-1])
    with pytest.raises(ValueError, match="hybrid scored 399"):
        build_report(
            labels=labels, day_index=np.zeros(400, int), days=[DAY0], runs=runs,
            events_file="x", settings={}, span={}, wall_seconds=0.0,
        )


def test_plots_are_pngs(report, tmp_path):
    rep, _, _ = report
    rep = json.loads(json.dumps(rep))
    paths = write_plots(tmp_path, rep)
    assert [p.name for p in paths] == ["logloss.png", "auc.png"]
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert p.stat().st_size > 5000
    assert math.isfinite(rep["policies"]["hybrid"]["logloss"])


def test_auc_gap_closed_and_refresh(report, tmp_path):
    rep, _, _ = report
    p = rep["policies"]
    expected = (p["hybrid"]["auc"] - p["base_only"]["auc"]) / (p["daily_retrain"]["auc"] - p["base_only"]["auc"])
    assert rep["comparison"]["auc_gap_closed"] == pytest.approx(expected)
    # refresh re-derives the aggregates from report.json alone
    del rep["comparison"]["auc_gap_closed"]
    rep["comparison"]["gap_closed"] = 0.0
    write_report(tmp_path, rep)
    from serving.backtest.render import refresh_report

    again = refresh_report(tmp_path)
    assert again["comparison"]["auc_gap_closed"] == pytest.approx(expected)
    assert again["comparison"]["gap_closed"] > 0
    assert (tmp_path / "auc.png").is_file()
    assert load_report(tmp_path / "report.json") == again


def test_compute_clause_is_judged_on_training_compute_and_shows_wall(tmp_path):
    """Nine daily fits (2 s of training each) against none for the weekly base: a tenth of
    the training compute, although each fit's wall (start-up) is the same 15 s."""
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 2, 200).astype(float)
    runs = _runs(labels)
    shared = _fit("v1", 15.0, fit_seconds=0.5, samples=100)
    runs["base_only"].fits = runs["hybrid"].fits = [shared]
    runs["static"].fits = [shared]
    runs["hybrid"].online_seconds = 0.1
    runs["daily_retrain"].fits = [shared] + [_fit(f"d{i}", 15.0, i, 2.0, 1000) for i in range(1, 10)]
    rep = _weekly_vs_daily_report(labels, runs, span_days=1)
    c = rep["comparison"]
    assert c["compute_ratio_training"] == pytest.approx(0.6 / 18.5)
    assert c["compute_ratio_span"] == pytest.approx(0.1 / 18.0)
    assert c["samples_ratio"] == pytest.approx(100 / 9100)
    assert c["compute_ratio"] == pytest.approx(15.1 / 150.0)
    assert c["target"]["tenth_of_the_compute"] is True
    assert c["tenth_of_the_compute_wall"] is False
    md = render_markdown(rep)
    assert "On wall seconds" in md and "**not met** (0.101×)" in md


def test_never_worse_is_judged_per_user_not_per_event():
    """Day 0 is one user's session on which hybrid is worse: per event that is 'beyond
    noise', per user it is one observation. Day 1 spreads the same damage over 50 users."""
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 2, 400).astype(float)
    good = np.where(labels == 1, 0.7, 0.3)
    bad = np.where(labels == 1, 0.55, 0.45)
    runs = _runs(labels)
    runs["base_only"].probs = good.copy()
    runs["hybrid"].probs = np.concatenate([bad[:200], good[200:]])
    day_index = np.repeat([0, 1], 200)
    users = np.array(["solo"] * 200 + [f"u{i % 50}" for i in range(200)], dtype=object)
    kwargs = dict(
        labels=labels, day_index=day_index, days=[DAY0, DAY0 + timedelta(days=1)], runs=runs,
        events_file="x", settings={}, span={}, wall_seconds=0.0,
    )
    per_user = build_report(**kwargs, user_ids=users)["comparison"]["hybrid_vs_base_only"]
    assert (per_user["days_worse_beyond_noise"], per_user["days_worse_per_event"]) == (0, 1)
    assert per_user["noise_unit"] == "user"
    spread = users.copy()
    spread[:200] = [f"v{i % 50}" for i in range(200)]
    judged = build_report(**kwargs, user_ids=spread)["comparison"]
    assert judged["hybrid_vs_base_only"]["days_worse_beyond_noise"] == 1
    assert judged["target"]["never_worse_than_base_only"] is False
    unclustered = build_report(**kwargs)["comparison"]["hybrid_vs_base_only"]
    assert unclustered["noise_unit"] == "event" and unclustered["days_worse_beyond_noise"] == 1


def test_the_shared_warm_up_fit_does_not_count_against_the_compute_clause():
    """A costly warm-up fit (10 s) that every policy shares, then one warm base fit of 0.9 s
    against ten daily fits of 1 s: counting the shared fit on both sides the ratio is about
    0.5 (it says how long the span was, not what freshness costs); in the span it is 0.095."""
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, 200).astype(float)
    runs = _runs(labels)
    shared = _fit("v1", 15.0, fit_seconds=10.0)
    warm = _fit("v2", 15.0, 7, fit_seconds=0.9)
    runs["static"].fits = [shared]
    runs["base_only"].fits = runs["hybrid"].fits = [shared, warm]
    runs["hybrid"].online_seconds = 0.05
    runs["daily_retrain"].fits = [shared] + [_fit(f"d{i}", 15.0, i, 1.0) for i in range(1, 11)]
    rep = _weekly_vs_daily_report(labels, runs, span_days=11)
    c = rep["comparison"]
    assert c["compute_ratio_training"] == pytest.approx(10.95 / 20.0)
    assert c["compute_ratio_span"] == pytest.approx(0.95 / 10.0)
    assert c["target"]["tenth_of_the_compute"] is True
    assert "0.095×** the training compute" in render_markdown(rep)


def test_never_worse_holds_the_days_jointly_not_one_by_one():
    """20 days; on 19 the policies agree exactly, on day 0 hybrid is worse by a margin that
    is 2.5 standard errors: beyond each day's own 95% (1.96) but not beyond the family-wise
    95% over 20 days (3.02). "Worse on no day" is one claim about all 20."""
    n_days, per_day = 20, 100
    labels = np.ones(n_days * per_day)
    base = np.full(labels.size, 0.5)
    hybrid = base.copy()
    signs = np.where(np.arange(per_day) % 2 == 0, 1.0, -1.0)
    hybrid[:per_day] = 0.5 * np.exp(-(0.025 + 0.1 * signs))  # per-event log-loss diff 0.025 +- 0.1
    runs = _runs(labels)
    runs["base_only"].probs, runs["hybrid"].probs = base, hybrid
    users = np.array([f"u{i}" for i in range(labels.size)], dtype=object)
    rep = build_report(
        labels=labels, day_index=np.repeat(np.arange(n_days), per_day),
        days=[DAY0 + timedelta(days=i) for i in range(n_days)], runs=runs, events_file="x",
        settings={}, span={}, wall_seconds=0.0, user_ids=users,
    )
    d = rep["comparison"]["hybrid_vs_base_only"]
    assert d["days_compared"] == 20
    assert (d["days_worse_per_day_95"], d["days_worse_per_event"]) == (1, 1)
    assert d["days_worse_beyond_noise"] == 0
    # A margin of 4 standard errors is beyond noise however many days there are.
    hybrid[:per_day] = 0.5 * np.exp(-(0.04 + 0.1 * signs))
    again = build_report(
        labels=labels, day_index=np.repeat(np.arange(n_days), per_day),
        days=[DAY0 + timedelta(days=i) for i in range(n_days)], runs=runs, events_file="x",
        settings={}, span={}, wall_seconds=0.0, user_ids=users,
    )
    assert again["comparison"]["hybrid_vs_base_only"]["days_worse_beyond_noise"] == 1


def test_refresh_decides_the_target_exactly_as_the_build_did(report, tmp_path):
    """The clauses are computed in one place: a refresh of a written report re-decides every
    one of them (a tampered clause is put right) and agrees with the build."""
    rep, _, _ = report
    built = dict(rep["comparison"]["target"])
    tampered = json.loads(json.dumps(rep))
    tampered["comparison"]["target"] = {key: not value for key, value in built.items()}
    write_report(tmp_path, tampered)
    from serving.backtest.render import refresh_report

    assert refresh_report(tmp_path)["comparison"]["target"] == built
