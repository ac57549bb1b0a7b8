"""The batch feature job: event log -> the Parquet sources behind Feast's feature views.

Incremental per hour, idempotent, strictly-before:

1. Each event-log hour has a fingerprint (its part files' names and sizes). Hours whose
   fingerprint changed since the last run (new, appended to, replaced, deleted) are
   re-aggregated: per entity and hour, impressions, clicks, first time seen and category.
   Aggregates are kept per day in ``features/_hourly/``.
2. A changed hour ``h`` changes feature rows at boundaries ``h+1 .. h+1+max_window``; and
   moving ``end`` forward adds the boundaries in between (counters decay even in hours
   without events). Every day file holding such a boundary is recomputed from the
   aggregates and replaced atomically: ``features/<view>/<YYYY-MM-DD>.parquet``.
3. A row at boundary ``B`` depends only on events with ``ts < B`` (see ``views``), so
   events at or after a training row's time can never change that row, whatever order
   they arrive in.

Re-running with nothing changed does nothing; re-running a changed hour rewrites the same
values (only ``created_timestamp``, the wall-clock time of the write, differs).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from feature_store.config import FeatureStoreConfig
from feature_store.errors import WorkspaceError
from feature_store.events_io import HOUR_US, hour_floor, hour_parts, list_event_hours, read_event_log
from feature_store.views import (
    CATEGORY_FEATURE,
    FIRST_SEEN_FEATURE,
    ITEM_PROFILE,
    WINDOW_VIEWS,
    WindowView,
)

__all__ = [
    "ComputeSummary",
    "EVENT_TIMESTAMP",
    "CREATED_TIMESTAMP",
    "compute_features",
    "source_dir",
    "source_schema",
]

logger = logging.getLogger(__name__)

EVENT_TIMESTAMP = "event_timestamp"
CREATED_TIMESTAMP = "created_timestamp"
_TS = pa.timestamp("us", tz="UTC")
_STATE_FILE = "_state.json"
_STATE_VERSION = 1
#: File kept in every source folder so Feast can read a source before the first compute.
EMPTY_FILE = "empty.parquet"
#: The item profile source is one file (rewritten whole by every run).
PROFILE_FILE = "profile.parquet"
_KEY_SHIFT = np.int64(1) << np.int64(32)  # entity code * 2**32 + hour: one sortable int64


@dataclass(frozen=True)
class ComputeSummary:
    """What a run did.

    Attributes
    ----------
    changed_hours : int
        Event-log hours re-aggregated.
    days_written : int
        Day files rewritten (per view).
    rows_written : dict[str, int]
        Feature rows written, per view.
    end : datetime
        The last hour boundary that now has rows (later hours have none yet).
    seconds : float
        Wall time of the run.
    """

    changed_hours: int
    days_written: int
    end: datetime
    rows_written: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


def source_dir(cfg: FeatureStoreConfig, view: str) -> Path:
    """Folder of one view's Parquet source (what its Feast FileSource points at)."""
    return cfg.features_dir / view


def source_schema(view: str) -> pa.Schema:
    """The Arrow schema of a view's Parquet source."""
    if view == ITEM_PROFILE:
        return pa.schema(
            [
                pa.field("item_id", pa.string()),
                pa.field(EVENT_TIMESTAMP, _TS),
                pa.field(CREATED_TIMESTAMP, _TS),
                pa.field(FIRST_SEEN_FEATURE, pa.float64()),
                pa.field(CATEGORY_FEATURE, pa.string()),
            ]
        )
    for spec in WINDOW_VIEWS:
        if spec.name == view:
            return pa.schema(
                [
                    pa.field(spec.join_key, pa.string()),
                    pa.field(EVENT_TIMESTAMP, _TS),
                    pa.field(CREATED_TIMESTAMP, _TS),
                    *[pa.field(name, pa.float32()) for name in spec.features],
                    pa.field(spec.vector, pa.list_(pa.float32())),
                ]
            )
    raise KeyError(f"unknown feature view {view!r}")


ALL_VIEWS: tuple[str, ...] = (*(v.name for v in WINDOW_VIEWS), ITEM_PROFILE)


def ensure_sources(cfg: FeatureStoreConfig) -> None:
    """Create every source folder with its empty schema file (Feast can read it at once)."""
    for view in ALL_VIEWS:
        folder = source_dir(cfg, view)
        folder.mkdir(parents=True, exist_ok=True)
        empty = folder / EMPTY_FILE
        if not empty.exists():
            _atomic_write(source_schema(view).empty_table(), empty)


# --------------------------------------------------------------------------------------
# State
# --------------------------------------------------------------------------------------
def _settings_key(cfg: FeatureStoreConfig) -> str:
    """Anything that changes feature values: a change means a full recompute."""
    spec = {
        "ctr_prior": cfg.ctr_prior,
        "ctr_prior_strength": cfg.ctr_prior_strength,
        "views": [(v.name, v.entity, v.windows) for v in WINDOW_VIEWS],
        "version": _STATE_VERSION,
    }
    return hashlib.sha1(json.dumps(spec, sort_keys=True).encode()).hexdigest()


def _load_state(cfg: FeatureStoreConfig) -> dict:
    path = cfg.features_dir / _STATE_FILE
    if not path.exists():
        return {}
    return json.loads(path.read_text())


def _save_state(cfg: FeatureStoreConfig, state: dict) -> None:
    path = cfg.features_dir / _STATE_FILE
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(state, indent=1, sort_keys=True))
    os.replace(tmp, path)


def _hour_key(hour: datetime) -> str:
    return hour.strftime("%Y-%m-%dT%H")


def _fingerprint(cfg: FeatureStoreConfig, hour: datetime) -> str:
    parts = hour_parts(cfg.events_dir, hour)
    return ";".join(f"{p.name}:{p.stat().st_size}" for p in parts)


# --------------------------------------------------------------------------------------
# The job
# --------------------------------------------------------------------------------------
def compute_features(
    cfg: FeatureStoreConfig,
    *,
    end: datetime | None = None,
    full: bool = False,
) -> ComputeSummary:
    """Bring the offline feature sources up to date with the event log.

    Parameters
    ----------
    cfg
        The workspace (its ``events/`` log is read, ``features/`` written).
    end
        Compute rows at hour boundaries ``<= floor_hour(end)``. Default: the hour after the
        last hour of the log (so the last hour's events count). Passing a later ``end``
        writes the decay rows of the hours in between (windows emptying out).
    full
        Forget previous runs and recompute everything.

    Raises
    ------
    WorkspaceError
        The event log is empty.
    """
    started = time.perf_counter()
    hours = list_event_hours(cfg.events_dir)
    if not hours:
        raise WorkspaceError(f"no events in {cfg.events_dir}: write or import events first")
    ensure_sources(cfg)
    end_b = hour_floor(end) if end is not None else hours[-1] + timedelta(hours=1)
    created = datetime.now(timezone.utc)

    state = {} if full else _load_state(cfg)
    if state.get("settings") != _settings_key(cfg):
        if state:
            logger.info("feature settings changed since the last run: recomputing everything")
        state = {}
    if not state:
        _clear_outputs(cfg)
    old_prints: dict[str, str] = state.get("hours", {})
    new_prints = {_hour_key(h): _fingerprint(cfg, h) for h in hours}
    changed = sorted(k for k in set(old_prints) | set(new_prints) if old_prints.get(k) != new_prints.get(k))
    prev_end = datetime.fromisoformat(state["end"]) if state.get("end") else None

    # 1. Re-aggregate the days holding changed hours.
    changed_hours = [datetime.strptime(k, "%Y-%m-%dT%H").replace(tzinfo=timezone.utc) for k in changed]
    for day in sorted({h.date() for h in changed_hours}):
        _aggregate_day(cfg, day)

    # 2. Which boundaries (hence day files) changed.
    max_window = max(v.max_window_hours for v in WINDOW_VIEWS)
    affected: set = set()
    for h in changed_hours:
        lo = h  # an entity's birth row sits at its first event hour
        hi = min(h + timedelta(hours=max_window + 1), end_b)
        affected |= _days_between(lo, hi)
    if prev_end is None or prev_end != end_b:
        lo = min(prev_end, end_b) if prev_end else hours[0]
        affected |= _days_between(lo, max(prev_end or end_b, end_b))

    rows_written = {view: 0 for view in ALL_VIEWS}
    if affected or changed:
        items, users = _load_aggregates(cfg)
        for view, rows in _feature_rows(cfg, items, users, sorted(affected), end_b, created):
            rows_written[view] += rows
    state = {
        "settings": _settings_key(cfg),
        "hours": new_prints,
        "end": end_b.isoformat(),
    }
    _save_state(cfg, state)
    summary = ComputeSummary(
        changed_hours=len(changed),
        days_written=len(affected),
        rows_written=rows_written,
        end=end_b,
        seconds=time.perf_counter() - started,
    )
    logger.info(
        "features computed: %s changed hour(s), %s day file(s) per view, rows %s, up to %s",
        summary.changed_hours, summary.days_written, rows_written, end_b,
    )
    return summary


def _clear_outputs(cfg: FeatureStoreConfig) -> None:
    for view in ALL_VIEWS:
        for path in source_dir(cfg, view).glob("*.parquet"):
            if path.name != EMPTY_FILE:
                path.unlink()
    for path in (cfg.features_dir / "_hourly").glob("*/*.parquet"):
        path.unlink()


def _day_start(day) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=timezone.utc)


def _days_between(lo: datetime, hi: datetime) -> set:
    """Days holding a boundary in ``[lo, hi]``."""
    days = set()
    d = lo.date()
    while _day_start(d) <= hi:
        days.add(d)
        d = d + timedelta(days=1)
    return days


def _atomic_write(table: pa.Table, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(table, tmp, compression="zstd")
    os.replace(tmp, path)


# --------------------------------------------------------------------------------------
# Hourly aggregates
# --------------------------------------------------------------------------------------
_AGG_DIR = "_hourly"


def _aggregate_day(cfg: FeatureStoreConfig, day) -> None:
    """Per (entity, hour) aggregates of one day's events, replacing the day's files."""
    start = _day_start(day)
    events = read_event_log(cfg.events_dir, start, start + timedelta(days=1))
    item_path = cfg.features_dir / _AGG_DIR / "items" / f"{day.isoformat()}.parquet"
    user_path = cfg.features_dir / _AGG_DIR / "users" / f"{day.isoformat()}.parquet"
    if events.num_rows == 0:
        for path in (item_path, user_path):
            path.unlink(missing_ok=True)
        return
    ts = events.column("ts").cast(pa.int64()).to_numpy(zero_copy_only=False)
    hour = ts // HOUR_US
    label = events.column("label").to_numpy(zero_copy_only=False).astype(np.float64)
    base = pa.table(
        {
            "hour": pa.array(hour, pa.int64()),
            "ts": pa.array(ts, pa.int64()),
            "label": pa.array(label, pa.float64()),
        }
    )
    users = (
        base.append_column("user_id", events.column("user_id"))
        .group_by(["user_id", "hour"])
        .aggregate([("label", "count"), ("label", "sum")])
        .rename_columns(["user_id", "hour", "imp", "clk"])
    )
    items = (
        base.append_column("item_id", events.column("item_id"))
        .group_by(["item_id", "hour"])
        .aggregate([("label", "count"), ("label", "sum"), ("ts", "min")])
        .rename_columns(["item_id", "hour", "imp", "clk", "first_ts"])
    )
    items = _join_hour_category(items, events, hour, ts)
    _atomic_write(items, item_path)
    _atomic_write(users, user_path)


def _join_hour_category(items: pa.Table, events: pa.Table, hour: np.ndarray, ts: np.ndarray) -> pa.Table:
    """Add each (item, hour)'s category: of its latest categorised event, ties -> max string."""
    cats = events.column("item_category").combine_chunks()
    has = ~cats.is_null().to_numpy(zero_copy_only=False)
    category = pa.nulls(items.num_rows, pa.string())
    if has.any():
        idx = np.flatnonzero(has)
        sub = pa.table(
            {
                "item_id": events.column("item_id").take(pa.array(idx)),
                "hour": pa.array(hour[idx]),
                "ts": pa.array(ts[idx]),
                "cat": cats.take(pa.array(idx)),
            }
        ).sort_by([("item_id", "ascending"), ("hour", "ascending"), ("ts", "ascending"), ("cat", "ascending")])
        item_col = sub.column("item_id").combine_chunks()
        hour_col = sub.column("hour").to_numpy()
        last = np.ones(sub.num_rows, dtype=bool)
        if sub.num_rows > 1:
            same_item = pc.equal(item_col[1:], item_col[:-1]).to_numpy(zero_copy_only=False)
            last[:-1] = ~(same_item & (hour_col[1:] == hour_col[:-1]))
        lasts = sub.filter(pa.array(last)).select(["item_id", "hour", "cat"])
        joined = items.join(lasts, ["item_id", "hour"], join_type="left outer")
        # join does not keep order: restore it by sorting both the same way
        return joined.sort_by([("item_id", "ascending"), ("hour", "ascending")]).rename_columns(
            ["item_id", "hour", "imp", "clk", "first_ts", "category"]
        )
    return items.append_column("category", category).sort_by([("item_id", "ascending"), ("hour", "ascending")])


def _load_aggregates(cfg: FeatureStoreConfig) -> tuple[pa.Table, pa.Table]:
    def load(kind: str) -> pa.Table:
        files = sorted((cfg.features_dir / _AGG_DIR / kind).glob("*.parquet"))
        return pa.concat_tables([pq.read_table(f) for f in files])

    return load("items"), load("users")


# --------------------------------------------------------------------------------------
# Feature rows
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Keyed:
    """Aggregates of one entity kind sorted by (entity, hour), with prefix sums."""

    ids: pa.Array  # (E,) entity id per code
    order: np.ndarray  # (A,) aggregate-table row of each sorted position
    code: np.ndarray  # (A,) entity code per aggregate row
    hour: np.ndarray  # (A,)
    key: np.ndarray  # (A,) code << 32 | hour, ascending
    cum_imp: np.ndarray  # (A+1,)
    cum_clk: np.ndarray  # (A+1,)


def _keyed(table: pa.Table, id_col: str) -> _Keyed:
    encoded = table.column(id_col).combine_chunks().dictionary_encode()
    code = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    hour = table.column("hour").to_numpy().astype(np.int64)
    key = code * _KEY_SHIFT + hour
    order = np.argsort(key, kind="stable")
    imp = table.column("imp").to_numpy().astype(np.float64)[order]
    clk = table.column("clk").to_numpy().astype(np.float64)[order]
    return _Keyed(
        ids=encoded.dictionary,
        order=order,
        code=code[order],
        hour=hour[order],
        key=key[order],
        cum_imp=np.concatenate([[0.0], np.cumsum(imp)]),
        cum_clk=np.concatenate([[0.0], np.cumsum(clk)]),
    )


def _feature_rows(
    cfg: FeatureStoreConfig,
    items: pa.Table,
    users: pa.Table,
    days: list,
    end_b: datetime,
    created: datetime,
):
    """Write the day files of every view for ``days``; yields (view, rows written)."""
    end_h = int(end_b.timestamp()) // 3600
    day_lo = np.array([int(_day_start(d).timestamp()) // 3600 for d in days], dtype=np.int64)
    keyed = {"item": _keyed(items, "item_id"), "user": _keyed(users, "user_id")}
    created_us = int(created.timestamp() * 1_000_000)
    for spec in WINDOW_VIEWS:
        data = keyed[spec.entity]
        code, boundary = _candidates(data, spec, day_lo, end_h)
        table = _window_table(cfg, spec, data, code, boundary, created_us)
        yield spec.name, _write_days(cfg, spec.name, table, boundary, days)
    # The profile is small (about one row per item): rewritten whole, so a backfill that
    # moves an item's first sighting can never leave a stale row behind.
    code, boundary, first_seen, category = _profile_rows(keyed["item"], items, end_h)
    table = pa.table(
        {
            "item_id": keyed["item"].ids.take(pa.array(code)),
            EVENT_TIMESTAMP: pa.array(boundary * HOUR_US, pa.int64()).cast(_TS),
            CREATED_TIMESTAMP: pa.array(np.full(len(code), created_us), pa.int64()).cast(_TS),
            FIRST_SEEN_FEATURE: first_seen,
            CATEGORY_FEATURE: category,
        },
        schema=source_schema(ITEM_PROFILE),
    )
    table = table.take(pa.array(np.lexsort((code, boundary))))
    _atomic_write(table, source_dir(cfg, ITEM_PROFILE) / PROFILE_FILE)
    yield ITEM_PROFILE, table.num_rows


def _in_days(boundary: np.ndarray, day_lo: np.ndarray) -> np.ndarray:
    """Whether each boundary hour falls in one of the days starting at ``day_lo``."""
    pos = np.searchsorted(day_lo, boundary, side="right") - 1
    ok = pos >= 0
    ok[ok] = boundary[ok] < day_lo[pos[ok]] + 24
    return ok


def _candidates(data: _Keyed, spec: WindowView, day_lo: np.ndarray, end_h: int):
    """Unique (entity code, boundary hour) pairs at which some window of ``spec`` changes."""
    codes, bounds = [], []
    for offset in spec.row_offsets:
        b = data.hour + 1 + offset
        keep = (b <= end_h) & _in_days(b, day_lo)
        codes.append(data.code[keep])
        bounds.append(b[keep])
    # Birth rows (empty windows) at each entity's first event hour.
    first = _group_starts(data.code)
    birth = data.hour[first]
    keep = (birth <= end_h) & _in_days(birth, day_lo)
    codes.append(data.code[first][keep])
    bounds.append(birth[keep])
    code = np.concatenate(codes)
    boundary = np.concatenate(bounds)
    key = np.unique(code * _KEY_SHIFT + boundary)
    return key // _KEY_SHIFT, key % _KEY_SHIFT


def _window_sums(data: _Keyed, code: np.ndarray, boundary: np.ndarray, hours: int):
    """Impressions and clicks of each entity over hours ``[boundary - hours, boundary)``."""
    lo = np.searchsorted(data.key, code * _KEY_SHIFT + boundary - hours, side="left")
    hi = np.searchsorted(data.key, code * _KEY_SHIFT + boundary, side="left")
    imp = data.cum_imp[hi] - data.cum_imp[lo]
    clk = data.cum_clk[hi] - data.cum_clk[lo]
    # Prefix-sum differences of whole numbers are exact; round off float noise otherwise.
    return np.round(imp), np.round(clk, 9)


def _window_table(cfg, spec: WindowView, data: _Keyed, code, boundary, created_us: int) -> pa.Table:
    columns: dict[str, np.ndarray] = {}
    for suffix, hours in spec.windows:
        imp, clk = _window_sums(data, code, boundary, hours)
        columns[f"{spec.entity}_imp_{suffix}"] = imp.astype(np.float32)
        columns[f"{spec.entity}_clk_{suffix}"] = clk.astype(np.float32)
        columns[f"{spec.entity}_ctr_{suffix}"] = cfg.smoothed_ctr(clk, imp).astype(np.float32)
    matrix = np.stack([columns[name] for name in spec.features], axis=1)  # (R, F)
    vector = pa.FixedSizeListArray.from_arrays(pa.array(matrix.reshape(-1), pa.float32()), len(spec.features))
    arrays = {
        spec.join_key: data.ids.take(pa.array(code)),
        EVENT_TIMESTAMP: pa.array(boundary * HOUR_US, pa.int64()).cast(_TS),
        CREATED_TIMESTAMP: pa.array(np.full(len(code), created_us), pa.int64()).cast(_TS),
        **{name: pa.array(columns[name], pa.float32()) for name in spec.features},
        spec.vector: vector.cast(pa.list_(pa.float32())),
    }
    return pa.table(arrays, schema=source_schema(spec.name))


def _group_starts(code: np.ndarray) -> np.ndarray:
    """Indices where a new entity starts in a code-sorted array."""
    if len(code) == 0:
        return np.zeros(0, dtype=np.int64)
    return np.flatnonzero(np.r_[True, code[1:] != code[:-1]])


def _profile_rows(data: _Keyed, items: pa.Table, end_h: int):
    """Profile rows of every item up to ``end_h``.

    A birth row (first seen: null, category: null) at the item's first event hour, a row at
    the next hour with its first-seen time, and a row after every hour in which its latest
    known category changed.
    """
    code, hour = data.code, data.hour
    first_ts = items.column("first_ts").to_numpy().astype(np.int64)[data.order]
    cats = items.column("category").combine_chunks().take(pa.array(data.order)).dictionary_encode()
    n = len(code)
    new_item = np.zeros(n, dtype=bool)
    new_item[_group_starts(code)] = True
    cat_idx = np.where(cats.is_null().to_numpy(zero_copy_only=False), -1,
                       cats.indices.fill_null(0).to_numpy(zero_copy_only=False))
    filled = _ffill_within(cat_idx, new_item)  # latest known category per (item, hour)
    prev = np.r_[-2, filled[:-1]]
    changed = new_item | (filled != prev)
    # first_seen: the first_ts of the item's first hour (rows are in hour order).
    group_start = np.maximum.accumulate(np.where(new_item, np.arange(n), 0))
    first_seen = first_ts[group_start] / 1_000_000.0
    names = np.asarray([*cats.dictionary.to_pylist(), None], dtype=object)  # -1 -> None

    keep = changed & (hour + 1 <= end_h)
    birth = new_item & (hour <= end_h)
    code_out = np.concatenate([code[birth], code[keep]])
    boundary = np.concatenate([hour[birth], hour[keep] + 1])
    first_out = np.concatenate([np.full(int(birth.sum()), np.nan), first_seen[keep]])
    cat_out = np.concatenate([np.full(int(birth.sum()), -1), filled[keep]])
    category = pa.array(names[cat_out], pa.string())
    first_arr = pa.array(first_out, pa.float64(), from_pandas=True)  # NaN -> null
    return code_out, boundary, first_arr, category


def _ffill_within(values: np.ndarray, new_group: np.ndarray) -> np.ndarray:
    """Forward-fill ``-1`` entries with the last non-negative value of the same group."""
    n = len(values)
    idx = np.where(values >= 0, np.arange(n), -1)
    # A group must not inherit from the previous group: reset at group starts.
    last = np.maximum.accumulate(idx)
    group_start = np.maximum.accumulate(np.where(new_group, np.arange(n), 0))
    valid = last >= group_start
    return np.where(valid, values[np.maximum(last, 0)], -1)


def _write_days(cfg: FeatureStoreConfig, view: str, table: pa.Table, boundary: np.ndarray, days: list) -> int:
    folder = source_dir(cfg, view)
    folder.mkdir(parents=True, exist_ok=True)
    day_of = (boundary // 24) if len(boundary) else boundary
    written = 0
    order = np.argsort(boundary, kind="stable")
    table = table.take(pa.array(order))
    day_of = day_of[order]
    for day in days:
        d = int(_day_start(day).timestamp()) // 86400
        lo, hi = np.searchsorted(day_of, [d, d + 1])
        path = folder / f"{day.isoformat()}.parquet"
        if hi == lo:
            path.unlink(missing_ok=True)
            continue
        _atomic_write(table.slice(int(lo), int(hi - lo)), path)
        written += int(hi - lo)
    return written
