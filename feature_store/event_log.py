"""The workspace's event log: events as Parquet partitioned by hour, appended and read.

Layout: ``<log>/hour=YYYY-MM-DDTHH/part-<hash>.parquet``; an hour is the unit the feature
job (``feature_store.compute``) recomputes. Part files are named by a hash of their content,
so writing the same batch twice (a retried feedback call, a re-run import) stores it once.
Every part is written atomically (``protos.atomic``): a reader never sees half a part.
Validating a user's file before it gets here is ``feature_store.events_file``.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from feature_store.events_file import sort_events
from protos.atomic import write_bytes_atomic
from protos.events import EVENTS_SCHEMA, conform

__all__ = [
    "HOUR_US",
    "dedupe_impressions",
    "hour_floor",
    "hour_parts",
    "hours_between",
    "list_event_hours",
    "read_event_log",
    "write_event_log",
]

logger = logging.getLogger(__name__)

HOUR_US = 3_600_000_000
_TS_TYPE = EVENTS_SCHEMA.field("ts").type  # timestamp[us, UTC]
_HOUR_DIR_RE = re.compile(r"^hour=(\d{4}-\d{2}-\d{2}T\d{2})$")


def hour_floor(ts: datetime) -> datetime:
    """``ts`` (naive = UTC) truncated to its hour, as an aware UTC datetime."""
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=timezone.utc)
    return ts.astimezone(timezone.utc).replace(minute=0, second=0, microsecond=0)


def _hour_dir(log_dir: Path, hour: datetime) -> Path:
    return log_dir / f"hour={hour.strftime('%Y-%m-%dT%H')}"


def list_event_hours(log_dir: str | os.PathLike[str]) -> list[datetime]:
    """The hours that have a partition in the log, ascending (aware UTC)."""
    log_dir = Path(log_dir)
    if not log_dir.is_dir():
        return []
    hours = []
    for child in log_dir.iterdir():
        match = _HOUR_DIR_RE.match(child.name)
        if match and child.is_dir() and any(child.glob("*.parquet")):
            hours.append(datetime.strptime(match.group(1), "%Y-%m-%dT%H").replace(tzinfo=timezone.utc))
    return sorted(hours)


def hour_parts(log_dir: str | os.PathLike[str], hour: datetime) -> list[Path]:
    """The part files of one hour, in the order they are read (by name)."""
    return sorted(_hour_dir(Path(log_dir), hour_floor(hour)).glob("*.parquet"))


def write_event_log(
    table: pa.Table,
    log_dir: str | os.PathLike[str],
    *,
    mode: Literal["append", "replace"] = "append",
) -> list[Path]:
    """Add events to the hour-partitioned log.

    Parameters
    ----------
    table
        Events (``protos.events`` columns; conformed here).
    log_dir
        The log's root, normally ``FeatureStoreConfig.events_dir``.
    mode
        ``"append"``: each hour the table touches gets one more part file, named by a hash
        of its content, so writing the same batch again changes nothing (idempotent
        retries). ``"replace"``: each hour the table touches is replaced by exactly these
        events (a re-import or a corrected backfill of whole hours); hours it does not
        touch are kept.

    Returns
    -------
    list[Path]
        The part files now holding the table's rows, one per hour.
    """
    if mode not in ("append", "replace"):
        raise ValueError(f"mode must be 'append' or 'replace', got {mode!r}")
    log_dir = Path(log_dir)
    table = sort_events(conform(table))
    if table.num_rows == 0:
        return []
    ts = table.column("ts").combine_chunks().cast(pa.int64()).to_numpy(zero_copy_only=False)
    hours = ts // HOUR_US
    # Table is sorted by ts, so each hour is one contiguous slice.
    starts = np.flatnonzero(np.r_[True, hours[1:] != hours[:-1]])
    ends = np.r_[starts[1:], len(hours)]
    written = []
    for lo, hi in zip(starts, ends):
        hour = datetime.fromtimestamp(int(hours[lo]) * 3600, tz=timezone.utc)
        part = table.slice(int(lo), int(hi - lo))
        written.append(_write_part(_hour_dir(log_dir, hour), part, replace=mode == "replace"))
    logger.info("wrote %s events into %s hour partition(s) of %s", table.num_rows, len(written), log_dir)
    return written


def _write_part(hour_dir: Path, part: pa.Table, *, replace: bool) -> Path:
    buffer = io.BytesIO()
    pq.write_table(part, buffer, compression="zstd")
    data = buffer.getvalue()
    name = f"part-{hashlib.blake2b(data, digest_size=10).hexdigest()}.parquet"
    hour_dir.mkdir(parents=True, exist_ok=True)
    target = hour_dir / name
    if replace:
        for old in hour_dir.glob("*.parquet"):
            if old.name != name:
                old.unlink()
    if not target.exists():
        write_bytes_atomic(target, data)
    return target


def read_event_log(
    log_dir: str | os.PathLike[str],
    start: datetime | None = None,
    end: datetime | None = None,
    *,
    columns: Sequence[str] | None = None,
) -> pa.Table:
    """Events with ``start <= ts < end`` (either bound optional), sorted stably by ts.

    Within an hour, part files are read in name order, so the result is the same on every
    call. Returns an empty ``EVENTS_SCHEMA`` table when nothing matches. ``columns``: only
    these (``EVENTS_SCHEMA`` names, in this order; absent ones null), e.g. to leave the
    served-feature lists unread; default all.
    """
    if columns is not None:
        unknown = [c for c in columns if c not in EVENTS_SCHEMA.names]
        if unknown:
            raise ValueError(f"not an events column: {', '.join(unknown)}")
        wanted = list(dict.fromkeys(["ts", *columns]))
        return _read_log(log_dir, start, end, wanted).select(list(columns))
    return _read_log(log_dir, start, end, None)


def _read_log(
    log_dir: str | os.PathLike[str], start: datetime | None, end: datetime | None,
    columns: list[str] | None,
) -> pa.Table:
    hours = list_event_hours(log_dir)
    if start is not None:
        hours = [h for h in hours if h >= hour_floor(start)]
    if end is not None:
        end_utc = end if end.tzinfo else end.replace(tzinfo=timezone.utc)
        hours = [h for h in hours if h < end_utc]
    tables = [_read_parts(hour_parts(log_dir, h), columns) for h in hours]
    if not tables:
        return _conform_to(EVENTS_SCHEMA.empty_table(), columns)
    table = pa.concat_tables(tables)
    if start is not None or end is not None:
        ts = table.column("ts")
        mask = pa.array(np.ones(table.num_rows, dtype=bool))
        if start is not None:
            mask = pc.and_(mask, pc.greater_equal(ts, pa.scalar(_aware(start), _TS_TYPE)))
        if end is not None:
            mask = pc.and_(mask, pc.less(ts, pa.scalar(_aware(end), _TS_TYPE)))
        table = table.filter(mask)
    return sort_events(table)


def _aware(ts: datetime) -> datetime:
    return ts if ts.tzinfo else ts.replace(tzinfo=timezone.utc)


def _conform_to(table: pa.Table, columns: list[str] | None) -> pa.Table:
    """``conform``, or for a column subset: those columns, typed, absent ones null."""
    if columns is None:
        return conform(table)
    fields = [EVENTS_SCHEMA.field(c) for c in columns]
    arrays = [table.column(f.name).cast(f.type) if f.name in table.column_names
              else pa.nulls(table.num_rows, f.type) for f in fields]
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


def _read_parts(parts: Iterable[Path], columns: list[str] | None = None) -> pa.Table:
    tables = []
    for p in parts:
        if columns is None:
            tables.append(conform(pq.read_table(p)))
        else:
            present = set(pq.read_schema(p).names)
            tables.append(_conform_to(pq.read_table(p, columns=[c for c in columns if c in present]),
                                      columns))
    return pa.concat_tables(tables) if tables else _conform_to(EVENTS_SCHEMA.empty_table(), columns)


def dedupe_impressions(table: pa.Table) -> pa.Table:
    """One row per impression: rows sharing a ``(request_id, item_id)`` are one item shown
    in one request, logged twice (a retried ``Rank`` with the same request id, or a
    compaction redone after a crash); the first row (in ``table``'s order) is kept, with
    the largest label of its copies. Rows without a ``request_id`` are kept as they are.
    Returns ``table`` itself when nothing repeats."""
    if table.num_rows == 0 or "request_id" not in table.column_names:
        return table
    row = pa.array(np.arange(table.num_rows, dtype=np.int64))
    keys = pa.table({"r": table.column("request_id"), "i": table.column("item_id"),
                     "row": row, "label": table.column("label")})
    keyed = keys.filter(pc.is_valid(keys.column("r")))
    groups = keyed.group_by(["r", "i"], use_threads=False).aggregate(
        [("row", "min"), ("row", "count"), ("label", "max")]
    )
    if groups.num_rows == keyed.num_rows:
        return table
    first = groups.column("row_min").to_numpy()
    label = groups.column("label_max").to_numpy(zero_copy_only=False)
    unkeyed = np.flatnonzero(~pc.is_valid(table.column("request_id")).to_numpy(zero_copy_only=False))
    keep = np.sort(np.concatenate([first, unkeyed]))
    labels = table.column("label").to_numpy(zero_copy_only=False).copy()
    labels[first] = label
    out = table.set_column(table.schema.get_field_index("label"), table.schema.field("label"),
                           pa.array(labels, table.schema.field("label").type))
    logger.info("dropped %d repeated impressions (same request_id and item_id)",
                table.num_rows - len(keep))
    return out.take(pa.array(keep))


def hours_between(start: datetime, end: datetime) -> list[datetime]:
    """Whole hours ``h`` with ``start <= h < end`` (both floored to the hour)."""
    h, stop = hour_floor(start), hour_floor(end)
    out = []
    while h < stop:
        out.append(h)
        h += timedelta(hours=1)
    return out
