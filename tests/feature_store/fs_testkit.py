"""Helpers of the feature-store tests: small workspaces and the brute-force reference.

``brute_force_features`` is the reference every point-in-time result is checked against:
it recomputes each feature for each row directly from the raw events, with no shortcuts.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from feature_store.catalog import ITEM_FEATURES, USER_FEATURES
from feature_store.config import FeatureStoreConfig
from feature_store.views import WINDOW_VIEWS, default_value

SMALL_SIM = dict(
    seed=11,
    start=datetime(2026, 1, 5, tzinfo=timezone.utc),
    days=2.5,
    impressions_per_day=2_400,
    n_users=150,
    initial_items=30,
    items_per_day=40,
    slate_size=6,
)


@dataclass(frozen=True)
class Workspace:
    cfg: FeatureStoreConfig
    events: pa.Table
    end: datetime  # the computed/materialized end (hour after the last event)


def build_workspace(root: Path, *, apply: bool, **sim_overrides) -> Workspace:
    """Simulate a small log into ``root`` and compute features (and apply + materialize)."""
    from feature_store import repo
    from feature_store.compute import compute_features
    from feature_store.event_log import write_event_log
    from feature_store.simulate import SimulatorConfig, simulate

    cfg = FeatureStoreConfig(workspace=root)
    events = simulate(SimulatorConfig(**{**SMALL_SIM, **sim_overrides}))
    write_event_log(events, cfg.events_dir)
    summary = compute_features(cfg)
    if apply:
        repo.apply(cfg)
        repo.materialize(cfg, summary.end)
    return Workspace(cfg=cfg, events=events, end=summary.end)


def sample_rows(events: pa.Table, n: int, seed: int = 0) -> pa.Table:
    """``n`` events as training rows (user_id, item_id, ts, label), in log order."""
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(events.num_rows, size=min(n, events.num_rows), replace=False))
    return events.select(["user_id", "item_id", "ts", "label"]).take(pa.array(idx))


def _micros(table: pa.Table) -> np.ndarray:
    return table.column("ts").cast(pa.timestamp("us", tz="UTC")).cast(pa.int64()).to_numpy()


def brute_force_features(events: pa.Table, rows: pa.Table, cfg: FeatureStoreConfig) -> dict[str, np.ndarray]:
    """Every catalog feature of every row, straight from raw events (the reference).

    Definition (views.py): with ``B = floor_hour(ts)``, a window ``w`` counts the entity's
    events with ``B - w <= event.ts < B``; CTR is smoothed with the config's prior; the
    item's age is ``(ts - first_seen) / 3600`` with ``first_seen`` its earliest event
    before ``B``; anything with no such event takes the documented default.
    """
    ev = events.select(["user_id", "item_id", "label"]).to_pandas()
    ev["t"] = _micros(events)
    ev_by = {"user": ev.groupby("user_id"), "item": ev.groupby("item_id")}
    groups = {
        kind: {k: (g["t"].to_numpy(), g["label"].to_numpy(np.float64)) for k, g in ev_by[kind]}
        for kind in ("user", "item")
    }
    rows_df = rows.select(["user_id", "item_id"]).to_pandas()
    t_us = _micros(rows)
    b_us = (t_us // 3_600_000_000) * 3_600_000_000
    out = {name: np.zeros(len(rows_df), dtype=np.float32) for name in (*USER_FEATURES, *ITEM_FEATURES)}
    for spec in WINDOW_VIEWS:
        keys = rows_df["user_id" if spec.entity == "user" else "item_id"].to_numpy()
        for suffix, hours in spec.windows:
            names = [f"{spec.entity}_{kind}_{suffix}" for kind in ("imp", "clk", "ctr")]
            wanted = [n for n in names if n in out]
            if not wanted:
                continue
            for r, key in enumerate(keys):
                ts, label = groups[spec.entity].get(key, (np.zeros(0, np.int64), np.zeros(0)))
                mask = (ts >= b_us[r] - hours * 3_600_000_000) & (ts < b_us[r])
                imp, clk = float(mask.sum()), float(label[mask].sum())
                values = dict(zip(names, (imp, clk, cfg.smoothed_ctr(clk, imp))))
                for n in wanted:
                    out[n][r] = np.float32(values[n])
    if "item_age_hours" in out:
        for r, key in enumerate(rows_df["item_id"].to_numpy()):
            ts, _ = groups["item"].get(key, (np.zeros(0, np.int64), None))
            before = ts[ts < b_us[r]]
            out["item_age_hours"][r] = (
                np.float32((t_us[r] / 1e6 - before.min() / 1e6) / 3600.0) if before.size
                else default_value("item_age_hours", cfg.ctr_prior)
            )
    return out


def events_table(rows: list[tuple]) -> pa.Table:
    """A tiny events table from (user, item, 'YYYY-mm-dd HH:MM', label[, category])."""
    cols: dict[str, list] = {"user_id": [], "item_id": [], "ts": [], "label": [], "item_category": []}
    for row in rows:
        user, item, when, label = row[:4]
        cols["user_id"].append(user)
        cols["item_id"].append(item)
        cols["ts"].append(pd.Timestamp(when, tz="UTC"))
        cols["label"].append(float(label))
        cols["item_category"].append(row[4] if len(row) > 4 else None)
    from protos.events import conform

    return conform(
        pa.table(
            {
                "user_id": pa.array(cols["user_id"], pa.string()),
                "item_id": pa.array(cols["item_id"], pa.string()),
                "ts": pa.array(cols["ts"], pa.timestamp("us", tz="UTC")),
                "label": pa.array(cols["label"], pa.float32()),
                "item_category": pa.array(cols["item_category"], pa.string()),
            }
        )
    )

