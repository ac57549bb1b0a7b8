"""The hourly feature job: exact rows on a hand-made log, incremental == full, idempotent."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tests.feature_store.fs_testkit import events_table

from feature_store.compute import compute_features
from feature_store.sources import source_dir
from feature_store.config import FeatureStoreConfig
from feature_store.errors import WorkspaceError
from feature_store.event_log import write_event_log

DAY = "2026-01-05"
LOG = [
    ("u", "a", f"{DAY} 10:15", 1, "news"),
    ("u", "a", f"{DAY} 10:40", 0, "news"),
    ("v", "b", f"{DAY} 10:50", 0),
    ("v", "a", f"{DAY} 12:05", 1, "sport"),
]


def rows_of(cfg: FeatureStoreConfig, view: str, key: str, entity: str) -> pd.DataFrame:
    files = sorted(source_dir(cfg, view).glob("*.parquet"))
    frame = pa.concat_tables([pq.read_table(f) for f in files]).to_pandas()
    frame = frame[frame[entity] == key].sort_values("event_timestamp")
    frame["at"] = frame["event_timestamp"].dt.strftime("%d %H:%M")
    return frame.set_index("at")


@pytest.fixture()
def cfg(tmp_path: Path) -> FeatureStoreConfig:
    cfg = FeatureStoreConfig(workspace=tmp_path / "ws", ctr_prior=0.1, ctr_prior_strength=10)
    write_event_log(events_table(LOG), cfg.events_dir)
    return cfg


def test_windows_count_only_events_strictly_before_each_hour_and_decay_when_they_leave(
    cfg: FeatureStoreConfig,
) -> None:
    summary = compute_features(cfg, end=datetime(2026, 1, 13, tzinfo=timezone.utc))
    assert summary.changed_hours == 2 and summary.end.day == 13  # hours 10 and 12

    fresh = rows_of(cfg, "item_fresh", "a", "item_id")
    # birth (10:00), the 10:xx events at 11:00, empty at 12:00, 12:05 at 13:00, empty at 14:00
    assert list(fresh.index) == ["05 10:00", "05 11:00", "05 12:00", "05 13:00", "05 14:00"]
    assert fresh["item_imp_1h"].tolist() == [0, 2, 0, 1, 0]
    assert fresh["item_clk_1h"].tolist() == [0, 1, 0, 1, 0]
    assert fresh.loc["05 11:00", "item_ctr_1h"] == pytest.approx((1 + 10 * 0.1) / (2 + 10))
    assert fresh.loc["05 12:00", "item_ctr_1h"] == pytest.approx(0.1)  # the prior
    assert fresh.loc["05 11:00", "item_fresh_vec"].tolist() == pytest.approx([2, 1, 2 / 12])

    stats = rows_of(cfg, "item_stats", "a", "item_id")
    assert stats.loc["05 13:00", ["item_imp_24h", "item_imp_7d"]].tolist() == [3, 3]
    assert stats.loc["06 11:00", ["item_imp_24h", "item_clk_24h"]].tolist() == [1, 1]  # 10:xx left
    assert stats.loc["06 13:00", "item_imp_24h"] == 0 and stats.loc["06 13:00", "item_imp_7d"] == 3
    assert stats.loc["12 13:00", "item_imp_7d"] == 0  # a week after the last event
    assert "05 12:00" not in stats.index  # nothing changed at 12:00 for 24h/7d windows

    users = rows_of(cfg, "user_stats", "u", "user_id")
    assert users.loc["05 11:00", ["user_imp_7d", "user_clk_7d", "user_imp_30d"]].tolist() == [2, 1, 2]

    profile = rows_of(cfg, "item_profile", "a", "item_id")
    assert list(profile.index) == ["05 10:00", "05 11:00", "05 13:00"]
    assert pd.isna(profile.loc["05 10:00", "item_first_seen_s"])  # not seen before 10:00
    first = pd.Timestamp(f"{DAY} 10:15", tz="UTC").timestamp()
    assert profile["item_first_seen_s"].tolist()[1:] == [first, first]
    assert profile["item_category"].tolist() == [None, "news", "sport"]


def test_incremental_runs_equal_one_full_run_and_rerunning_changes_nothing(tmp_path: Path) -> None:
    late = [("w", "c", f"{DAY} 14:10", 1, "news"), ("u", "a", f"{DAY} 14:30", 0, "news")]
    steps = FeatureStoreConfig(workspace=tmp_path / "steps")
    write_event_log(events_table(LOG), steps.events_dir)
    compute_features(steps)
    write_event_log(events_table(late), steps.events_dir)
    second = compute_features(steps)
    assert second.changed_hours == 1
    again = compute_features(steps)
    assert again.changed_hours == 0 and again.days_written == 0 and sum(again.rows_written.values()) == 0

    full = FeatureStoreConfig(workspace=tmp_path / "full")
    write_event_log(events_table(LOG + late), full.events_dir)
    compute_features(full)
    for view in ("item_fresh", "item_stats", "user_stats", "item_profile"):
        a = _values(steps, view)
        b = _values(full, view)
        pd.testing.assert_frame_equal(a, b)


def test_a_forced_full_rerun_rewrites_the_same_values_with_a_newer_created_timestamp(
    cfg: FeatureStoreConfig,
) -> None:
    compute_features(cfg)
    before = _values(cfg, "item_stats", keep_created=True)
    compute_features(cfg, full=True)
    after = _values(cfg, "item_stats", keep_created=True)
    pd.testing.assert_frame_equal(before.drop(columns="created_timestamp"), after.drop(columns="created_timestamp"))
    assert (after["created_timestamp"] > before["created_timestamp"]).all()


def test_an_empty_log_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(WorkspaceError, match="no events"):
        compute_features(FeatureStoreConfig(workspace=tmp_path))


def _values(cfg: FeatureStoreConfig, view: str, keep_created: bool = False) -> pd.DataFrame:
    files = sorted(p for p in source_dir(cfg, view).glob("*.parquet"))
    frame = pa.concat_tables([pq.read_table(f) for f in files]).to_pandas()
    if not keep_created:
        frame = frame.drop(columns="created_timestamp")
    for col in frame.columns:
        if col.endswith("_vec"):
            frame[col] = frame[col].map(list)
    key = [c for c in ("item_id", "user_id") if c in frame.columns]
    return frame.sort_values([*key, "event_timestamp"]).reset_index(drop=True)

