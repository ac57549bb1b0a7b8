"""A small backtest end to end: simulated days through Feast features, Ray Train bases, the
Cython online layer, scored like serving; then the report read back as a user would.

Five simulated days, warm-up 2d, base every 2d: fits = 1 shared (static = base_only[0] =
daily_retrain[0]) + 1 warm base_only + 2 daily + the fresh ceiling's calibration fit and 2
warm no-holdout daily fits, twice (daily_fresh, daily_fresh_new) = 10 fits (in process:
``fit_backend = "local"``). The online layer learns as
serving's learner would (each event's feedback 306 s after it, the default settings). The last day's labels are
flipped: a policy that had learned from a day's labels before scoring it would look good on
that day; a correct one cannot.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from serving.backtest import POLICIES
from serving.backtest.config import BacktestConfig
from serving.backtest.render import load_report

pytestmark = pytest.mark.slow

START = datetime(2026, 1, 5, tzinfo=UTC)
DAYS = 5
LAST_DAY = START + timedelta(days=DAYS - 1)


@pytest.fixture(scope="module")
def events_file(tmp_path_factory):
    from feature_store.simulate import SimulatorConfig, simulate

    table = simulate(
        SimulatorConfig(
            seed=11, start=START, days=DAYS, impressions_per_day=2500, n_users=250,
            initial_items=80, items_per_day=40, base_ctr=0.12,
        )
    )
    # Flip every label of the last day.
    last = pc.greater_equal(table["ts"], pa.scalar(LAST_DAY, table.schema.field("ts").type))
    flipped = pc.if_else(last, pc.subtract(pa.scalar(1.0, pa.float32()), table["label"]), table["label"])
    table = table.set_column(table.schema.get_field_index("label"), "label", flipped)
    path = tmp_path_factory.mktemp("events") / "sim.parquet"
    pq.write_table(table, path)
    return path


@pytest.fixture(scope="module")
def backtest(events_file, tmp_path_factory):
    from serving.backtest.replay import run_backtest

    out = tmp_path_factory.mktemp("backtest")
    lines: list[str] = []
    cfg = BacktestConfig.from_dict(
        {
            "warmup": "2d",
            "base_every": "2d",
            # The base tier's training loop in this process: 10 fits, each a Ray Train
            # start-up otherwise (tests/base_model covers the Ray Train path).
            "fit_backend": "local",
            # A small model and relaxed data gates: 2,500 events a day has thin night hours.
            "tier_settings": {"base_model": {"epochs": 3, "batch_size": 256, "embedding_dim": 8,
                                             "hidden_layers": [16], "min_train_rows": 200,
                                             "bootstrap_samples": 20, "min_hour_fraction": 0.0}},
        }
    )
    report = run_backtest(events_file, out, cfg, progress=lambda phase, msg: lines.append(f"{phase} {msg}"))
    return out, report, lines


def test_report_files_and_schema(backtest):
    out, report, lines = backtest
    for name in ("report.json", "report.md", "logloss.png", "auc.png", "scores.parquet"):
        assert (out / name).is_file(), name
    assert load_report(out / "report.json") == report
    assert report["schema_version"] == 2
    assert list(report["policies"]) == list(POLICIES)
    assert {"gap_closed", "compute_ratio", "hybrid_vs_base_only", "target"} <= set(report["comparison"])
    md = (out / "report.md").read_text()
    assert "| `hybrid` |" in md and "gap" in md
    assert any(line.startswith("fit ") for line in lines) and any(line.startswith("online ") for line in lines)


def test_every_policy_scored_the_same_events_day_by_day(backtest):
    _, report, _ = backtest
    days = report["days"]
    assert len(days) == DAYS - 2
    assert days[0].startswith("2026-01-07")
    n = report["span"]["events_evaluated"]
    counts = None
    for name in POLICIES:
        p = report["policies"][name]
        assert p["events"] == n
        assert len(p["daily"]["logloss"]) == len(p["daily"]["auc"]) == len(days)
        assert counts is None or p["daily"]["events"] == counts
        counts = p["daily"]["events"]
        assert sum(counts) == n
        assert 0.0 < p["logloss"] < 5.0 and math.isfinite(p["logloss"])
        assert 0.0 <= p["auc"] <= 1.0
    assert report["span"]["events_train_only"] + n == report["span"]["events_total"]


def test_compute_accounting(backtest, events_file):
    """Both compute figures, per fit and per policy, add up; the training figure is the work
    the trainer did (rows x epochs it actually ran), which the wall figure only bounds."""
    _, report, _ = backtest
    p = report["policies"]
    assert [p[k]["fits"] for k in POLICIES] == [1, 2, 2, 3]
    assert len(report["fits"]) == 10  # the first fit is shared, not repeated
    fresh = report["evidence"]["policies"]["daily_fresh"]
    assert fresh["fits"] == 4  # shared + calibration + 2 no-holdout fits
    assert p["hybrid"]["base_versions"] == p["base_only"]["base_versions"]
    assert p["hybrid"]["base_train_seconds"] == pytest.approx(p["base_only"]["train_seconds"])
    assert p["hybrid"]["online_train_seconds"] > 0
    assert p["hybrid"]["online_examples"] == report["span"]["events_evaluated"]
    assert p["hybrid"]["train_seconds"] == pytest.approx(
        p["hybrid"]["base_train_seconds"] + p["hybrid"]["online_train_seconds"]
    )
    assert p["hybrid"]["compute_seconds"] == pytest.approx(
        p["base_only"]["compute_seconds"] + p["hybrid"]["online_train_seconds"]
    )
    assert p["daily_retrain"]["train_seconds"] > p["static"]["train_seconds"] > 0
    ts = pq.read_table(events_file, columns=["ts"]).column("ts").to_pylist()
    fits = {f["version"]: f for f in report["fits"]}
    epochs = report["production"]["daily_fresh_epochs"]
    for fit in report["fits"]:
        # Each fit trains on every event before its validation day (the day before the
        # cut-off), for as many epochs as it ran before early stopping; daily_fresh's
        # no-holdout fits on every event before the cut-off, for the fixed epoch count.
        cutoff = datetime.fromisoformat(fit["cutoff"])
        no_holdout = fit["policy"].startswith("daily_fresh") and fit["gate"] == "registered"
        end = cutoff if no_holdout else cutoff - timedelta(days=1)
        start = end - timedelta(days=1) if fit["policy"] == "daily_fresh_new" else None
        rows = sum(1 for t in ts if t < end and (start is None or t >= start))
        if no_holdout:
            assert fit["epochs"] == (epochs if fit["policy"] == "daily_fresh" else
                                     report["production"]["daily_fresh_new_epochs"])
        assert fit["epochs"] >= 1
        assert fit["parent"] is not None or fit["epochs"] <= 3  # a cold fit's cap is `epochs`
        assert fit["samples"] == rows * fit["epochs"], fit["version"]
        assert 0 < fit["fit_seconds"] < fit["seconds"]
    for name in POLICIES:
        assert p[name]["train_samples"] == sum(fits[v]["samples"] for v in p[name]["base_versions"])
        assert p[name]["base_compute_seconds"] == pytest.approx(
            sum(fits[v]["fit_seconds"] for v in p[name]["base_versions"])
        )
    c = report["comparison"]
    assert c["compute_ratio"] == pytest.approx(p["hybrid"]["train_seconds"] / p["daily_retrain"]["train_seconds"])
    assert c["compute_ratio_training"] == pytest.approx(
        p["hybrid"]["compute_seconds"] / p["daily_retrain"]["compute_seconds"]
    )
    assert c["samples_ratio"] == pytest.approx(p["hybrid"]["train_samples"] / p["daily_retrain"]["train_samples"])
    eval_start = datetime.fromisoformat(report["span"]["eval_start"])
    shared = [f for f in report["fits"] if datetime.fromisoformat(f["cutoff"]) <= eval_start]
    assert len(shared) == 1 and shared[0]["parent"] is None  # the warm-up fit, every policy's
    in_span = {n: p[n]["compute_seconds"] - shared[0]["fit_seconds"] for n in ("hybrid", "daily_retrain")}
    assert c["compute_ratio_span"] == pytest.approx(in_span["hybrid"] / in_span["daily_retrain"])
    assert c["target"]["tenth_of_the_compute"] == (c["compute_ratio_span"] <= 0.1)


def test_policies_are_fair(backtest):
    """daily_retrain: a cold fit every day; base_only: warm from its previous base; every fit
    on the same window (all history before its validation day)."""
    _, report, _ = backtest
    fits = {f["version"]: f for f in report["fits"]}
    shared, *daily = report["policies"]["daily_retrain"]["base_versions"]
    _, warm = report["policies"]["base_only"]["base_versions"]
    assert fits[shared]["parent"] is None
    assert all(fits[v]["parent"] is None for v in daily)
    assert fits[warm]["parent"] == shared
    assert report["settings"]["tiers"]["train_window"] == "all history before the validation day"
    assert report["settings"]["online_batch"] is None
    assert report["settings"]["online_learning"].startswith("each event's feedback learned 306 s after it")


def test_no_fit_saw_the_events_it_scores(backtest):
    out, report, _ = backtest
    scores = pq.read_table(out / "scores.parquet").to_pandas()
    fits = {f["version"]: f for f in report["fits"]}
    for policy in ("static", "base_only", "daily_retrain"):
        for version, rows in scores.groupby(f"{policy}_base"):
            # production never serves a rejected base (the shared first one has no predecessor)
            assert fits[version]["gate"] != "rejected" or policy == "daily_retrain" or (
                fits[version]["parent"] is None and datetime.fromisoformat(fits[version]["cutoff"])
                <= datetime.fromisoformat(report["span"]["eval_start"]))
            fit = fits[version]
            first_scored = rows["ts"].min()
            assert datetime.fromisoformat(fit["train_max_ts"]) < datetime.fromisoformat(fit["cutoff"])
            assert datetime.fromisoformat(fit["cutoff"]) <= first_scored.to_pydatetime()


def test_flipped_last_day_is_not_known_in_advance(backtest):
    """No policy saw the flip coming. The last day is ~95% positives: a base that had trained
    on it would predict them; one trained before it predicts a low click rate and pays for it.
    On each new base, the hybrid scores exactly as the base until the first feedback is due
    (306 s: the online layer's join window + batch delay + publish interval)."""
    out, report, _ = backtest
    last = len(report["days"]) - 1
    for policy in ("static", "base_only", "daily_retrain"):
        daily = report["policies"][policy]["daily"]
        assert daily["logloss"][last] > 1.0 > daily["logloss"][last - 1], policy
    scores = pq.read_table(out / "scores.parquet").to_pandas()
    for _, rows in scores.groupby("hybrid_base"):
        head = rows[rows["ts"] < rows["ts"].min() + timedelta(seconds=306)]
        assert len(head) >= 1
        np.testing.assert_allclose(head["hybrid_ungated"], head["base_only"], rtol=1e-9)
        assert not np.allclose(rows["hybrid_ungated"], rows["base_only"])
    # ... and the layer learned afterwards, within the flipped day, test-then-train.
    ev = report["evidence"]["policies"]
    flipped = scores["day"] == last
    from protos.metrics import log_loss

    assert log_loss(scores.loc[flipped, "label"], scores.loc[flipped, "hybrid_ungated"]) < log_loss(
        scores.loc[flipped, "label"], scores.loc[flipped, "base_only"])
    # Production's hybrid: each base's layer serves only once it learned readiness_min_examples
    # (5,000, about a base's 2 days here): until then the base alone served, and is counted so.
    served_late = 0
    for _, rows in scores.groupby("hybrid_base"):
        np.testing.assert_array_equal(rows["hybrid"][:5000], rows["base_only"][:5000])
        served_late += max(0, len(rows) - 5000)
    assert report["production"]["hybrid_online_share"] <= served_late / len(scores)
    assert ev["hybrid"]["online_share"] == report["production"]["hybrid_online_share"]
    assert ev["hybrid_ungated"]["online_share"] == 1.0
    assert {"constant", "item_rate", "oracle", "daily_fresh", "ftrl_alone", "counter_ftrl"} <= set(ev)
    assert ev["ftrl_alone"]["compute_seconds_span"] > 0  # no fits: its online learning counts


def test_sweep_replays_the_runs_hybrid_exactly(backtest):
    """serving.backtest.sweep re-runs the online layer alone on the run's bases: the run's own
    settings give its hybrid column bit for bit; another alpha gives other scores."""
    from serving.backtest.sweep import HybridSweep

    out, report, _ = backtest
    sweep = HybridSweep(out)
    try:
        same, _ = sweep.replay({})
        np.testing.assert_array_equal(same.probs, sweep.reference["hybrid"])
        np.testing.assert_array_equal(sweep.last_served, sweep.served_reference)
        other, _ = sweep.replay({"alpha": 0.5})
        assert not np.allclose(other.probs, same.probs)
        ungated = sweep.evaluate(same.probs)
        assert ungated["logloss"] == pytest.approx(report["evidence"]["policies"]["hybrid_ungated"]["logloss"])
        sweep.replay({})
        result = sweep.evaluate(sweep.last_served)
        assert result["logloss"] == pytest.approx(report["policies"]["hybrid"]["logloss"])
        assert result["days_worse"] == report["comparison"]["hybrid_vs_base_only"]["days_worse_beyond_noise"]
    finally:
        sweep.close()
