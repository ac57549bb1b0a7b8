"""Training sets are point-in-time correct: DuckDB == Feast == brute force, and immune to
anything that happens at or after a row's time, late backfills included (Feast issue 6615).
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tests.feature_store.fs_testkit import SMALL_SIM, Workspace, brute_force_features, build_workspace, sample_rows

from feature_store import repo
from feature_store.catalog import ITEM_FEATURES, USER_FEATURES
from feature_store.compute import compute_features
from feature_store.sources import source_dir
from feature_store.event_log import write_event_log
from feature_store.training_set import FEATURE_COLUMNS, build_training_set, feast_training_set


def assert_same_features(a: pa.Table, b: pa.Table, rows: np.ndarray | None = None) -> None:
    for name in FEATURE_COLUMNS:
        x, y = a.column(name).to_numpy(), b.column(name).to_numpy()
        if rows is not None:
            x, y = x[rows], y[rows]
        np.testing.assert_array_equal(x, y, err_msg=name)


def feast_safe(rows: pa.Table) -> None:
    """Feast's file offline store merges entity rows sharing (item_id, ts): there must be none."""
    frame = rows.select(["item_id", "ts"]).to_pandas()
    assert not frame.duplicated().any()


def test_duckdb_feast_and_brute_force_build_the_same_training_set(feature_ws: Workspace) -> None:
    rows = sample_rows(feature_ws.events, 1_200, seed=1)
    feast_safe(rows)
    assert rows.to_pandas().duplicated(["user_id", "ts"]).any()  # whole slates are in there

    ours = build_training_set(feature_ws.cfg, rows)
    feast = feast_training_set(feature_ws.cfg, rows)
    reference = brute_force_features(feature_ws.events, rows, feature_ws.cfg)

    assert ours.column_names == [*rows.column_names, *USER_FEATURES, *ITEM_FEATURES]
    assert ours.select(rows.column_names).equals(rows)  # same rows, same order, untouched
    assert all(ours.schema.field(f).type == pa.float32() for f in FEATURE_COLUMNS)
    assert_same_features(ours, feast)
    for name in FEATURE_COLUMNS:
        np.testing.assert_array_equal(ours.column(name).to_numpy(), reference[name], err_msg=name)
    # The sample exercises every case: unknown-yet entities (defaults) and busy ones.
    imp_7d = ours.column("item_imp_7d").to_numpy()
    assert (imp_7d == 0).any() and (imp_7d > 20).any()
    assert (ours.column("item_age_hours").to_numpy() == 0).any()
    assert (ours.column("user_clk_30d").to_numpy() > 0).any()


def test_rows_for_entities_never_seen_get_the_documented_defaults(feature_ws: Workspace) -> None:
    late = feature_ws.end + timedelta(days=3)
    rows = pa.table(
        {
            "user_id": ["nobody", feature_ws.events.column("user_id")[0].as_py()],
            "item_id": ["nothing", "nothing"],
            "ts": pa.array([late, late], pa.timestamp("us", tz="UTC")),
        }
    )
    out = build_training_set(feature_ws.cfg, rows).to_pandas()
    prior = np.float32(feature_ws.cfg.ctr_prior)
    assert out.loc[0, "user_imp_30d"] == 0 and out.loc[0, "user_ctr_30d"] == prior
    assert out.loc[0, "item_imp_7d"] == 0 and out.loc[0, "item_ctr_24h"] == prior
    assert out.loc[0, "item_age_hours"] == 0
    assert out.loc[1, "user_imp_30d"] > 0  # a known user keeps its history


def test_bad_training_rows_are_rejected(feature_ws: Workspace) -> None:
    with pytest.raises(ValueError, match="missing ts"):
        build_training_set(feature_ws.cfg, pa.table({"user_id": ["u"], "item_id": ["i"]}))
    rows = sample_rows(feature_ws.events, 3).append_column("item_imp_1h", pa.array([0.0] * 3))
    with pytest.raises(ValueError, match="already have feature column"):
        build_training_set(feature_ws.cfg, rows)


@pytest.fixture(scope="module")
def backfill_ws(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    ws = build_workspace(tmp_path_factory.mktemp("backfill_ws"), apply=False, seed=23)
    repo.apply(ws.cfg)
    return ws


def test_events_at_or_after_a_rows_time_never_change_it_not_even_a_late_backfill(backfill_ws: Workspace) -> None:
    cfg, events = backfill_ws.cfg, backfill_ws.events
    rows = sample_rows(events, 900, seed=2)
    feast_safe(rows)
    cut = pd.Timestamp(SMALL_SIM["start"]) + pd.Timedelta(hours=30, minutes=30)  # mid-hour
    ts = rows.column("ts").to_pandas()
    before_cut = (ts <= cut).to_numpy()
    assert 100 < before_cut.sum() < len(before_cut) - 100

    ours_before = build_training_set(cfg, rows)
    feast_before = feast_training_set(cfg, rows)
    created_before = _created(cfg)

    # A late backfill: clicks on busy items/users arrive for times at or after the cut,
    # including the rest of the cut's own hour, and a later hour is replaced outright.
    frame = events.to_pandas()
    busy_items = frame["item_id"].value_counts().index[:5]
    busy_users = frame["user_id"].value_counts().index[:5]
    at = [cut, cut + pd.Timedelta(minutes=10), cut + pd.Timedelta(hours=3)]
    extra = pd.DataFrame(
        [(u, i, t, 1.0) for t in at for u, i in zip(busy_users, busy_items)],
        columns=["user_id", "item_id", "ts", "label"],
    )
    write_event_log(pa.Table.from_pandas(extra, preserve_index=False), cfg.events_dir)
    hour = (cut + pd.Timedelta(hours=5)).floor("h")
    replaced = frame[(frame["ts"] >= hour) & (frame["ts"] < hour + pd.Timedelta(hours=1))].copy()
    replaced["label"] = 1.0 - replaced["label"]  # every outcome in that hour flipped
    write_event_log(pa.Table.from_pandas(replaced, preserve_index=False), cfg.events_dir, mode="replace")
    summary = compute_features(cfg)
    assert summary.changed_hours == 3

    # Feature rows at or before the cut were rewritten with a newer created_timestamp
    # (the situation of Feast issue 6615), yet hold the same values.
    created_after = _created(cfg)
    rewritten = created_after.merge(created_before, on=["key", "event_timestamp"], suffixes=("", "_old"))
    rewritten = rewritten[rewritten["created_timestamp"] > rewritten["created_timestamp_old"]]
    assert (rewritten["event_timestamp"] <= cut).any()

    ours_after = build_training_set(cfg, rows)
    feast_after = feast_training_set(cfg, rows)
    assert_same_features(ours_after, ours_before, before_cut)
    assert_same_features(feast_after, feast_before, before_cut)
    assert_same_features(ours_after, feast_after)
    changed = [n for n in FEATURE_COLUMNS if not np.array_equal(
        ours_after.column(n).to_numpy()[~before_cut], ours_before.column(n).to_numpy()[~before_cut])]
    assert {"item_imp_24h", "item_clk_24h", "user_clk_30d"} <= set(changed)  # the backfill did count

    from feature_store.event_log import read_event_log

    reference = brute_force_features(read_event_log(cfg.events_dir), rows, cfg)
    for name in FEATURE_COLUMNS:
        np.testing.assert_array_equal(ours_after.column(name).to_numpy(), reference[name], err_msg=name)


def _created(cfg) -> pd.DataFrame:
    frames = []
    for view in ("item_stats", "user_stats"):
        for path in source_dir(cfg, view).glob("*.parquet"):
            t = pq.read_table(path).to_pandas()
            key = "item_id" if "item_id" in t else "user_id"
            frames.append(t[[key, "event_timestamp", "created_timestamp"]].rename(columns={key: "key"}))
    return pd.concat(frames, ignore_index=True)
