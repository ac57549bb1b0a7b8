"""A small backtest end to end: simulated days through Feast features, Ray Train bases, the
Cython online layer, scored like serving; then the report read back as a user would.

Five simulated days, warm-up 2d, base every 2d: fits = 1 shared (static = base_only[0] =
daily_retrain[0]) + 1 warm base_only + 2 daily = 4 Ray Train fits. The last day's labels are
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
from serving.backtest.report import load_report

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
def backtest(events_file, ray_cluster, tmp_path_factory):
    from serving.backtest.replay import run_backtest

    out = tmp_path_factory.mktemp("backtest")
    lines: list[str] = []
    cfg = BacktestConfig.from_dict(
        {
            "warmup": "2d",
            "base_every": "2d",
            "online_batch": 128,
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
    assert report["schema_version"] == 1
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


def test_compute_accounting(backtest):
    _, report, _ = backtest
    p = report["policies"]
    assert [p[k]["fits"] for k in POLICIES] == [1, 2, 2, 3]
    assert len(report["fits"]) == 4  # the first fit is shared, not repeated
    assert p["hybrid"]["base_versions"] == p["base_only"]["base_versions"]
    assert p["hybrid"]["base_train_seconds"] == pytest.approx(p["base_only"]["train_seconds"])
    assert p["hybrid"]["online_train_seconds"] > 0
    assert p["hybrid"]["train_seconds"] == pytest.approx(
        p["hybrid"]["base_train_seconds"] + p["hybrid"]["online_train_seconds"]
    )
    assert p["daily_retrain"]["train_seconds"] > p["static"]["train_seconds"] > 0
    ratio = p["hybrid"]["train_seconds"] / p["daily_retrain"]["train_seconds"]
    assert report["comparison"]["compute_ratio"] == pytest.approx(ratio)


def test_no_fit_saw_the_events_it_scores(backtest):
    out, report, _ = backtest
    scores = pq.read_table(out / "scores.parquet").to_pandas()
    fits = {f["version"]: f for f in report["fits"]}
    for policy in ("static", "base_only", "daily_retrain"):
        for version, rows in scores.groupby(f"{policy}_base"):
            fit = fits[version]
            first_scored = rows["ts"].min()
            assert datetime.fromisoformat(fit["train_max_ts"]) < datetime.fromisoformat(fit["cutoff"])
            assert datetime.fromisoformat(fit["cutoff"]) <= first_scored.to_pydatetime()


def test_flipped_last_day_is_not_known_in_advance(backtest):
    """No policy saw the flip coming. The last day is ~95% positives: a base that had trained
    on it would predict them; one trained before it predicts a low click rate and pays for it.
    The hybrid's first mini-batch on each new base is exactly the base's score."""
    out, report, _ = backtest
    last = len(report["days"]) - 1
    for policy in ("static", "base_only", "daily_retrain"):
        daily = report["policies"][policy]["daily"]
        assert daily["logloss"][last] > 1.0 > daily["logloss"][last - 1], policy
    scores = pq.read_table(out / "scores.parquet").to_pandas()
    for _, rows in scores.groupby("hybrid_base"):
        head = rows.iloc[:128]
        np.testing.assert_allclose(head["hybrid"], head["base_only"], rtol=1e-9)
    # ... and the hybrid learned afterwards, within the flipped day, test-then-train.
    hybrid_last = report["policies"]["hybrid"]["daily"]["logloss"][last]
    assert hybrid_last < report["policies"]["base_only"]["daily"]["logloss"][last]
