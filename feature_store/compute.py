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

This module is the job (what to recompute, the state file, the writes; every file replaced
atomically). The window maths is ``windows``; the sources' layout and schemas ``sources``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from typing import TypedDict

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from feature_store.config import FeatureStoreConfig
from feature_store.errors import WorkspaceError
from feature_store.event_log import (
    dedupe_impressions,
    hour_floor,
    hour_parts,
    list_event_hours,
    read_event_log,
)
from feature_store.sources import (
    ALL_VIEWS,
    EMPTY_FILE,
    PROFILE_FILE,
    ensure_sources,
    source_dir,
    write_parquet_atomic,
)
from feature_store.views import ITEM_PROFILE, WINDOW_VIEWS
from feature_store.windows import hourly_aggregates, keyed, profile_rows, row_candidates, window_rows
from protos.atomic import write_json_atomic

__all__ = [
    "ComputeSummary",
    "compute_features",
]

logger = logging.getLogger(__name__)

_STATE_FILE = "_state.json"
_STATE_VERSION = 1
_AGG_DIR = "_hourly"


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


# --------------------------------------------------------------------------------------
# State
# --------------------------------------------------------------------------------------
class _State(TypedDict, total=False):
    """``features/_state.json``: what the last run computed from."""

    settings: str  # _settings_key of the run
    hours: dict[str, str]  # event-log hour ("%Y-%m-%dT%H") -> its fingerprint
    end: str  # ISO time of the last boundary with rows


def _settings_key(cfg: FeatureStoreConfig) -> str:
    """Anything that changes feature values: a change means a full recompute."""
    spec = {
        "ctr_prior": cfg.ctr_prior,
        "ctr_prior_strength": cfg.ctr_prior_strength,
        "views": [(v.name, v.entity, v.windows) for v in WINDOW_VIEWS],
        "version": _STATE_VERSION,
    }
    return hashlib.sha1(json.dumps(spec, sort_keys=True).encode()).hexdigest()


def _load_state(cfg: FeatureStoreConfig) -> _State:
    path = cfg.features_dir / _STATE_FILE
    if not path.exists():
        return {}
    state: _State = json.loads(path.read_text())
    return state


def _save_state(cfg: FeatureStoreConfig, state: _State) -> None:
    write_json_atomic(cfg.features_dir / _STATE_FILE, state, indent=1)


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

    state: _State = {} if full else _load_state(cfg)
    if state.get("settings") != _settings_key(cfg):
        if state:
            logger.info("feature settings changed since the last run: recomputing everything")
        state = {}
    if not state:
        _clear_outputs(cfg)
    old_prints = state.get("hours", {})
    new_prints = {_hour_key(h): _fingerprint(cfg, h) for h in hours}
    changed = sorted(k for k in set(old_prints) | set(new_prints) if old_prints.get(k) != new_prints.get(k))
    prev_end = datetime.fromisoformat(state["end"]) if state.get("end") else None

    # 1. Re-aggregate the days holding changed hours.
    changed_hours = [datetime.strptime(k, "%Y-%m-%dT%H").replace(tzinfo=timezone.utc) for k in changed]
    for day in sorted({h.date() for h in changed_hours}):
        _aggregate_day(cfg, day)

    # 2. Which boundaries (hence day files) changed.
    max_window = max(v.max_window_hours for v in WINDOW_VIEWS)
    affected: set[date] = set()
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
    for path in (cfg.features_dir / _AGG_DIR).glob("*/*.parquet"):
        path.unlink()


def _day_start(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=timezone.utc)


def _days_between(lo: datetime, hi: datetime) -> set[date]:
    """Days holding a boundary in ``[lo, hi]``."""
    days: set[date] = set()
    d = lo.date()
    while _day_start(d) <= hi:
        days.add(d)
        d = d + timedelta(days=1)
    return days


AGGREGATE_COLUMNS = ("user_id", "item_id", "ts", "label", "request_id", "item_category")


# --------------------------------------------------------------------------------------
# Hourly aggregates, kept per day
# --------------------------------------------------------------------------------------
def _aggregate_day(cfg: FeatureStoreConfig, day: date) -> None:
    """Per (entity, hour) aggregates of one day's events, replacing the day's files."""
    start = _day_start(day)
    # The columns the aggregates use (a served log's feature lists are not read), one row
    # per impression (a retried request or a redone compaction counts once).
    events = dedupe_impressions(read_event_log(
        cfg.events_dir, start, start + timedelta(days=1), columns=AGGREGATE_COLUMNS
    ))
    item_path = cfg.features_dir / _AGG_DIR / "items" / f"{day.isoformat()}.parquet"
    user_path = cfg.features_dir / _AGG_DIR / "users" / f"{day.isoformat()}.parquet"
    if events.num_rows == 0:
        for path in (item_path, user_path):
            path.unlink(missing_ok=True)
        return
    items, users = hourly_aggregates(events)
    write_parquet_atomic(items, item_path)
    write_parquet_atomic(users, user_path)


def _load_aggregates(cfg: FeatureStoreConfig) -> tuple[pa.Table, pa.Table]:
    def load(kind: str) -> pa.Table:
        files = sorted((cfg.features_dir / _AGG_DIR / kind).glob("*.parquet"))
        return pa.concat_tables([pq.read_table(f) for f in files])

    return load("items"), load("users")


# --------------------------------------------------------------------------------------
# Feature rows
# --------------------------------------------------------------------------------------
def _feature_rows(
    cfg: FeatureStoreConfig,
    items: pa.Table,
    users: pa.Table,
    days: list[date],
    end_b: datetime,
    created: datetime,
) -> Iterator[tuple[str, int]]:
    """Write the day files of every view for ``days``; yields (view, rows written)."""
    end_h = int(end_b.timestamp()) // 3600
    day_lo = np.array([int(_day_start(d).timestamp()) // 3600 for d in days], dtype=np.int64)
    by_entity = {"item": keyed(items, "item_id"), "user": keyed(users, "user_id")}
    created_us = int(created.timestamp() * 1_000_000)
    for spec in WINDOW_VIEWS:
        data = by_entity[spec.entity]
        code, boundary = row_candidates(data, spec, day_lo, end_h)
        table = window_rows(cfg, spec, data, code, boundary, created_us)
        yield spec.name, _write_days(cfg, spec.name, table, boundary, days)
    # The profile is small (about one row per item): rewritten whole, so a backfill that
    # moves an item's first sighting can never leave a stale row behind.
    table = profile_rows(by_entity["item"], items, end_h, created_us)
    write_parquet_atomic(table, source_dir(cfg, ITEM_PROFILE) / PROFILE_FILE)
    yield ITEM_PROFILE, table.num_rows


def _write_days(
    cfg: FeatureStoreConfig, view: str, table: pa.Table, boundary: np.ndarray, days: list[date]
) -> int:
    """Replace the day files of ``days`` with ``table``'s rows (rows at ``boundary``)."""
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
        write_parquet_atomic(table.slice(int(lo), int(hi - lo)), path)
        written += int(hi - lo)
    return written
