"""The log as the replay reads it: events validated, point-in-time features computed once.

Calls the feature store through its public API: ``feature_store.events_file`` loads and
normalizes events, ``feature_store.training_set.build_training_set`` runs once over the
whole log (each row gets the features of events strictly before it). ``tier_settings``
builds every tier's config the way serving does (``serving.settings``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from feature_store.catalog import FRESH_ITEM_FEATURES, ITEM_FEATURES, USER_FEATURES
from serving.backtest.config import BacktestConfig

if TYPE_CHECKING:
    from serving.settings import Settings

__all__ = [
    "ReplayData",
    "check_trainable",
    "conform_events",
    "load_events",
    "prepare",
    "tier_settings",
]

logger = logging.getLogger(__name__)


def load_events(path: Path) -> pa.Table:
    """A user's events file, validated and sorted by the feature store's loader."""
    from feature_store.events_file import load_events as _load

    return _load(path)


def conform_events(table: pa.Table) -> pa.Table:
    """An in-memory events table, validated and sorted like a file would be."""
    from feature_store.events_file import normalize_events

    return normalize_events(table, source="events table")


def check_trainable(table: pa.Table, source: str) -> pa.Table:
    """``table`` if it can train a click model (both labels present), else the feature
    store's one-line ``UntrainableEventsError`` saying what it would need."""
    from feature_store.events_file import check_trainable as _check

    return _check(table, source=source)


@dataclass(frozen=True, eq=False)
class ReplayData:
    """The log as arrays, aligned row for row, sorted by time.

    ``training_set`` is what base fits are cut from (the events plus the point-in-time
    feature columns); the arrays are what scoring and the online layer read.
    """

    training_set: pa.Table
    ts_us: np.ndarray  # (N,) int64 microseconds since the epoch, non-decreasing
    labels: np.ndarray  # (N,) float64 in [0, 1]
    user_ids: np.ndarray  # (N,) object (str)
    item_ids: np.ndarray  # (N,) object (str)
    user_features: np.ndarray  # (N, Fu) float32, USER_FEATURES order
    item_features: np.ndarray  # (N, Fi) float32, ITEM_FEATURES order
    fresh: np.ndarray  # (N, F) float32, FRESH_ITEM_FEATURES order
    item_categories: np.ndarray  # (N,) object (str, "" when unknown): base and online layer
    positions: np.ndarray  # (N,) int64, -1 when unknown
    hours: np.ndarray  # (N,) int64 hour of day (UTC)
    true_ctr: np.ndarray | None = None  # (N,) float64, the simulator's truth; None elsewhere


def _column(table: pa.Table, name: str) -> np.ndarray:
    return table.column(name).to_numpy(zero_copy_only=False)


def prepare(events: pa.Table, workspace: Path, cfg: BacktestConfig) -> ReplayData:
    """Point-in-time features for every event, computed once, and the arrays replay reads."""
    from feature_store.compute import compute_features
    from feature_store.event_log import write_event_log
    from feature_store.training_set import build_training_set

    settings = tier_settings(workspace, cfg)
    fs = settings.feature_store
    write_event_log(events, fs.events_dir, mode="replace")
    summary = compute_features(fs, full=True)
    logger.info("features computed: %s", summary)
    ts_set = build_training_set(fs, events)
    if ts_set.num_rows != events.num_rows:
        raise RuntimeError(
            f"training set has {ts_set.num_rows} rows for {events.num_rows} events"
        )
    ts_us = events.column("ts").cast(pa.int64()).to_numpy(zero_copy_only=False).astype(np.int64)
    user_f = np.column_stack([_column(ts_set, n) for n in USER_FEATURES]).astype(np.float32)
    item_f = np.column_stack([_column(ts_set, n) for n in ITEM_FEATURES]).astype(np.float32)
    fresh = np.column_stack([_column(ts_set, n) for n in FRESH_ITEM_FEATURES]).astype(np.float32)
    cats = events.column("item_category").fill_null("").to_numpy(zero_copy_only=False).astype(object)
    pos = events.column("position").fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
    hours = (ts_us // 3_600_000_000) % 24
    true_ctr = None
    if "true_ctr" in events.column_names and events.column("true_ctr").null_count == 0:
        true_ctr = _column(events, "true_ctr").astype(np.float64)
    return ReplayData(
        training_set=ts_set,
        ts_us=ts_us,
        labels=_column(events, "label").astype(np.float64),
        user_ids=_column(events, "user_id").astype(object),
        item_ids=_column(events, "item_id").astype(object),
        user_features=np.ascontiguousarray(user_f),
        item_features=np.ascontiguousarray(item_f),
        fresh=np.ascontiguousarray(fresh),
        item_categories=cats,
        positions=pos,
        hours=hours.astype(np.int64),
        true_ctr=true_ctr,
    )


def tier_settings(workspace: Path, cfg: BacktestConfig) -> Settings:
    """Every tier's config from ``cfg.settings_file`` + ``cfg.tier_settings`` (serving.settings)."""
    from serving.settings import load_settings

    overrides = {k: dict(v) for k, v in cfg.tier_settings.items()}
    return load_settings(cfg.settings_file, workspace=workspace, overrides=overrides)
