"""The served log in the events schema: a compactor from the write-ahead logs
(``serving.served_log``) to the workspace's hourly Parquet event log
(``feature_store.event_log``), one row per impression with its final label."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from protos.events import EVENTS_SCHEMA
from protos.wal import WalTailer, read_checkpoint, write_checkpoint
from serving.served_log import (
    LOCK_WAIT_SECONDS,
    DirectoryLock,
    ServedEntry,
    decode_feedback,
    decode_served,
    feedback_dir,
    served_root,
    served_time_us,
    wal_root,
)

__all__ = [
    "FeedbackLabels",
    "compact_served_log",
    "event_log_lag_seconds",
    "online_inputs_of",
    "read_feedback_labels",
    "served_events",
]

if TYPE_CHECKING:
    from online_layer.features import OnlineInputs

logger = logging.getLogger(__name__)

@dataclass
class FeedbackLabels:
    """The accepted-feedback log read once: every label by impression, with its time and the
    log record it came in. One reader for the compactor and for the warm start of a new
    base, so both give an impression the same final label."""

    by_impression: dict[tuple[str, str], list[tuple[int, float, int]]] = field(default_factory=dict)
    records: list[tuple[int, float]] = field(default_factory=list)  # (seq, written_at)
    newest_us: int = -(2**62)  # the newest feedback event time read

    def final_label(self, request_id: str, item_id: str, served_us: int, window_us: int) -> float | None:
        """The largest label within the join window after the impression; None if none."""
        got = [label for ts, label, _ in self.by_impression.get((request_id, item_id), ())
               if ts <= served_us + window_us]
        return max(got) if got else None

    def through(self, seq: int) -> FeedbackLabels:
        """The labels as a reader that stopped at record ``seq`` saw them."""
        return FeedbackLabels(
            {key: [g for g in got if g[2] <= seq] for key, got in self.by_impression.items()},
            [r for r in self.records if r[0] <= seq], self.newest_us)


def read_feedback_labels(workspace: str | os.PathLike[str], after: int = 0) -> FeedbackLabels:
    """The feedback log's records after ``after`` (an empty result without a log)."""
    read = FeedbackLabels()
    directory = feedback_dir(workspace)
    if not directory.is_dir():
        return read
    for seq, payload in WalTailer(directory, after=after).poll(10**9):
        header, table = decode_feedback(payload)
        read.records.append((seq, float(header["w"])))
        if table is None:
            continue
        ts = table.column("ts").cast(pa.int64()).to_numpy(zero_copy_only=False)
        if len(ts):
            read.newest_us = max(read.newest_us, int(ts.max()))
        for rid, item, t, label in zip(
            table.column("request_id").to_pylist(), table.column("item_id").to_pylist(),
            ts.tolist(), table.column("label").to_pylist(), strict=True,
        ):
            read.by_impression.setdefault((rid, item), []).append((int(t), float(label), seq))
    return read


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _list_array(rows: list[np.ndarray | None], type_: pa.DataType) -> pa.Array:
    """One list per row (``rows[i]`` 1-D, or None for a null) as a ``list<type_>`` array."""
    value_type = type_.value_type
    if not rows:
        return pa.array([], type_)
    sizes = np.array([0 if r is None else len(r) for r in rows], dtype=np.int32)
    offsets = np.zeros(len(rows) + 1, dtype=np.int32)
    np.cumsum(sizes, out=offsets[1:])
    present = [r for r in rows if r is not None]
    values = (np.concatenate(present) if present else np.zeros(0)).astype(value_type.to_pandas_dtype())
    mask = pa.array([r is None for r in rows], pa.bool_())
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), pa.array(values, value_type),
                                    type=type_, mask=mask)


def served_events(entries: Iterable[ServedEntry], labels: FeedbackLabels, window_us: int) -> pa.Table:
    """Impressions in the events schema, each with its final label (largest within the
    window after the request; 0 without feedback) and what the model saw (the features
    as served, the online inputs, the propensity: 1.0 when the entry has none, null for
    an interleaved request without one; the interleaving team: null when the request was
    not interleaved)."""
    cols: dict[str, list[Any]] = {name: [] for name in EVENTS_SCHEMA.names}
    for entry in entries:
        record = entry.record
        t_us = served_time_us(entry)
        inputs = record.inputs
        base = _sigmoid(inputs.base_logit)
        final = _sigmoid(np.asarray(entry.final_logits, dtype=np.float64))
        n = len(record.item_ids)
        propensity = (np.ones(n) if entry.propensity is None
                      else np.asarray(entry.propensity, dtype=np.float64))
        interleaved = entry.team is not None and entry.propensity is None  # not known: null
        user = entry.user_features
        items = entry.item_features
        for position, item in enumerate(record.item_ids):
            label = labels.final_label(record.request_id, item, t_us, window_us)
            cols["user_id"].append(record.user_id)
            cols["item_id"].append(item)
            cols["ts"].append(t_us)
            cols["label"].append(0.0 if label is None else label)
            cols["request_id"].append(record.request_id)
            cols["position"].append(position)
            cols["item_category"].append(
                entry.item_categories[position] if position < len(entry.item_categories) else None
            )
            cols["base_version"].append(record.base_version)
            cols["online_version"].append(record.online_version)
            cols["base_score"].append(float(base[position]))
            cols["final_score"].append(float(final[position]))
            cols["fallback_reason"].append(entry.fallback_reason)
            cols["true_ctr"].append(None)
            cols["user_features"].append(None if user is None or items is None else user)
            cols["item_features"].append(None if user is None or items is None else items[position])
            cols["online_base_logit"].append(float(inputs.base_logit[position]))
            cols["online_dense"].append(inputs.dense[position])
            cols["online_sparse"].append(inputs.sparse[position])
            cols["propensity"].append(None if interleaved else float(propensity[position]))
            cols["interleave_team"].append(None if entry.team is None else int(entry.team[position]))
    arrays = []
    for f in EVENTS_SCHEMA:
        values = cols[f.name]
        if f.name == "ts":
            arrays.append(pa.array(values, pa.int64()).cast(f.type))
        elif pa.types.is_list(f.type):
            arrays.append(_list_array(values, f.type))
        else:
            arrays.append(pa.array(values, f.type))
    return pa.Table.from_arrays(arrays, schema=EVENTS_SCHEMA)


def online_inputs_of(events: pa.Table) -> OnlineInputs:
    """The ``OnlineInputs`` serving fed the online layer for each row of ``events``
    (rows written by serving: ``online_base_logit``, ``online_dense``, ``online_sparse``
    set), exactly as served: what a replay through an online layer starts from.

    Raises:
        ValueError: a row lacks them (not written by serving), or their widths differ.
    """
    from online_layer.features import OnlineInputs

    for name in ("online_base_logit", "online_dense", "online_sparse"):
        if name not in events.column_names or events.column(name).null_count:
            raise ValueError(f"events lack {name} (rows not written by serving)")
    n = events.num_rows

    def matrix(name: str, dtype: type) -> np.ndarray:
        column = events.column(name).combine_chunks()
        flat = column.flatten().to_numpy(zero_copy_only=False).astype(dtype)
        if n and flat.size % n:
            raise ValueError(f"{name}: rows of different widths")
        return flat.reshape(n, flat.size // n if n else 0)

    base = events.column("online_base_logit").to_numpy(zero_copy_only=False).astype(np.float64)
    return OnlineInputs(base, matrix("online_dense", np.float64), matrix("online_sparse", np.int64))


def event_log_lag_seconds(events_dir: str | os.PathLike[str], now: float | None = None) -> float:
    """Seconds from the newest event in the event log (its ``ts``) to ``now`` (default:
    the wall clock); -1.0 when the log holds none. For ``Status``: it reads the newest
    hour's part files' footers only (the ``ts`` statistics), each once (cached by name:
    parts are immutable), so it is cheap to call every few seconds. Event time: while
    serving live, the compactor writes an impression once its join window has closed, so
    a healthy lag is about the join window plus the compaction period (a replay of past
    events shows their age instead)."""
    import time

    newest = _newest_ts_us(Path(events_dir))
    if newest is None:
        return -1.0
    clock = time.time() if now is None else now
    return max(0.0, clock - newest / 1e6)


_PART_MAX_US: dict[Path, int | None] = {}


def _newest_ts_us(log_dir: Path) -> int | None:
    import re

    try:
        names = sorted((e.name for e in os.scandir(log_dir) if e.is_dir()
                        and re.fullmatch(r"hour=\d{4}-\d{2}-\d{2}T\d{2}", e.name)), reverse=True)
    except FileNotFoundError:
        return None
    for name in names:
        parts = sorted((log_dir / name).glob("*.parquet"))
        found = [m for m in (_part_max_us(p) for p in parts) if m is not None]
        if found:
            return max(found)
    return None


def _as_us(value: Any) -> int:
    from datetime import UTC, datetime, timedelta

    if isinstance(value, datetime):
        aware = value if value.tzinfo else value.replace(tzinfo=UTC)
        return (aware - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)
    return int(value)


def _part_max_us(path: Path) -> int | None:
    if path in _PART_MAX_US:
        return _PART_MAX_US[path]
    import pyarrow.parquet as pq

    try:
        meta = pq.ParquetFile(path).metadata
    except (FileNotFoundError, OSError):
        return None
    column = meta.schema.names.index("ts")
    best: int | None = None
    for g in range(meta.num_row_groups):
        stats = meta.row_group(g).column(column).statistics
        if stats is None or not stats.has_min_max:
            best = None
            break
        value_us = _as_us(stats.max)
        best = value_us if best is None else max(best, value_us)
    if best is None:  # no statistics: read the column
        ts = pq.read_table(path, columns=["ts"]).column("ts").cast(pa.int64())
        best = int(pc.max(ts).as_py()) if len(ts) else None
    if len(_PART_MAX_US) > 10_000:
        _PART_MAX_US.clear()
    _PART_MAX_US[path] = best
    return best


def compact_served_log(
    workspace: str | os.PathLike[str],
    events_dir: str | os.PathLike[str],
    join_window_s: float,
    *,
    close_all: bool = False,
) -> int:
    """Append the impressions whose join window has closed (event time: the latest request
    or feedback time in the logs) to the hourly event log, with their final labels;
    returns the rows written. ``close_all`` writes every impression now (shutdown, tests):
    feedback arriving later is then not in the log. Safe to run beside serving, and twice
    at once (a lock); each replica log's progress is its ``compactor`` checkpoint.
    Exactly once: before writing, a run records what it is about to write (its
    ``compactor_intent``: the last served record, and ``compactor_intent_fb``: the last
    feedback record its labels read); a run that finds an intent past the checkpoint (the
    last one died between writing and checkpointing) first writes exactly that again:
    the same rows with the same labels, so the same content-named part files, stored
    once."""
    from feature_store.event_log import write_event_log

    root = wal_root(workspace)
    root.mkdir(parents=True, exist_ok=True)
    lock = DirectoryLock(root, wait_s=LOCK_WAIT_SECONDS)
    try:
        window_us = int(join_window_s * 1e6)
        fb_dir = feedback_dir(workspace)
        fb_after = read_checkpoint(fb_dir, "compactor") if fb_dir.is_dir() else 0
        labels = read_feedback_labels(workspace, after=fb_after)
        feedback = labels.records
        watermark = labels.newest_us
        fb_last = feedback[-1][0] if feedback else fb_after
        per_dir: list[tuple[Path, list[tuple[int, ServedEntry]]]] = []
        root_served = served_root(workspace)
        for directory in sorted(p for p in root_served.iterdir() if p.is_dir()) if root_served.is_dir() else []:
            after = read_checkpoint(directory, "compactor")
            entries = [(seq, decode_served(p)) for seq, p in WalTailer(directory, after=after).poll(10**9)]
            for _, entry in entries:
                watermark = max(watermark, served_time_us(entry))
            per_dir.append((directory, entries))
        written = 0
        first_open: list[float] = []
        for directory, entries in per_dir:
            closed: list[ServedEntry] = []
            last = 0
            intent = read_checkpoint(directory, "compactor_intent")
            redo = bool(entries) and intent >= entries[0][0]
            for seq, entry in entries:
                if (seq > intent) if redo else (
                        not close_all and served_time_us(entry) + window_us > watermark):
                    first_open.append(entry.written_at)
                    break
                closed.append(entry)
                last = seq
            if closed:
                if redo:  # the last run died before its checkpoint: write the same again
                    seen = labels.through(read_checkpoint(directory, "compactor_intent_fb"))
                else:
                    seen = labels
                    write_checkpoint(directory, "compactor_intent_fb", fb_last)
                    write_checkpoint(directory, "compactor_intent", last)
                table = served_events(closed, seen, window_us)
                write_event_log(table, events_dir)
                written += table.num_rows
                write_checkpoint(directory, "compactor", last)
        if fb_dir.is_dir() and feedback:
            bound = min(first_open) if first_open else math.inf
            done = 0
            for seq, w in feedback:  # the prefix written before any impression still open
                if w >= bound:
                    break
                done = seq
            if done:
                write_checkpoint(fb_dir, "compactor", done)
        if written:
            logger.info("compacted %d served impressions into %s", written, events_dir)
        return written
    finally:
        lock.release()
