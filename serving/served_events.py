"""The served log in the events schema: a compactor from the write-ahead logs
(``serving.served_log``) to the workspace's hourly Parquet event log
(``feature_store.event_log``), one row per impression with its final label."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

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

__all__ = ["compact_served_log", "served_events"]

logger = logging.getLogger(__name__)

def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def served_events(entries: Iterable[ServedEntry], labels: dict[tuple[str, str], list[tuple[int, float]]],
                  window_us: int) -> pa.Table:
    """Impressions in the events schema, each with its final label (largest within the
    window after the request; 0 without feedback)."""
    cols: dict[str, list[Any]] = {name: [] for name in EVENTS_SCHEMA.names}
    for entry in entries:
        record = entry.record
        t_us = served_time_us(entry)
        base = _sigmoid(record.inputs.base_logit)
        final = _sigmoid(np.asarray(entry.final_logits, dtype=np.float64))
        for position, item in enumerate(record.item_ids):
            got = [label for ts, label in labels.get((record.request_id, item), ())
                   if ts <= t_us + window_us]
            cols["user_id"].append(record.user_id)
            cols["item_id"].append(item)
            cols["ts"].append(t_us)
            cols["label"].append(max(got) if got else 0.0)
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
    arrays = []
    for f in EVENTS_SCHEMA:
        values = cols[f.name]
        if f.name == "ts":
            arrays.append(pa.array(values, pa.int64()).cast(f.type))
        else:
            arrays.append(pa.array(values, f.type))
    return pa.Table.from_arrays(arrays, schema=EVENTS_SCHEMA)


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
    at once (a lock); each replica log's progress is its ``compactor`` checkpoint, and part
    files are named by content, so a crash between writing and checkpointing writes nothing
    twice."""
    from feature_store.event_log import write_event_log

    root = wal_root(workspace)
    root.mkdir(parents=True, exist_ok=True)
    lock = DirectoryLock(root, wait_s=LOCK_WAIT_SECONDS)
    try:
        window_us = int(join_window_s * 1e6)
        fb_dir = feedback_dir(workspace)
        fb_after = read_checkpoint(fb_dir, "compactor") if fb_dir.is_dir() else 0
        feedback: list[tuple[int, float]] = []
        labels: dict[tuple[str, str], list[tuple[int, float]]] = {}
        watermark = -(2**62)
        if fb_dir.is_dir():
            for seq, payload in WalTailer(fb_dir, after=fb_after).poll(10**9):
                header, table = decode_feedback(payload)
                feedback.append((seq, float(header["w"])))
                if table is None:
                    continue
                ts = table.column("ts").cast(pa.int64()).to_numpy(zero_copy_only=False)
                if len(ts):
                    watermark = max(watermark, int(ts.max()))
                for rid, item, t, label in zip(
                    table.column("request_id").to_pylist(), table.column("item_id").to_pylist(),
                    ts.tolist(), table.column("label").to_pylist(), strict=True,
                ):
                    labels.setdefault((rid, item), []).append((int(t), float(label)))
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
            for seq, entry in entries:
                if not close_all and served_time_us(entry) + window_us > watermark:
                    first_open.append(entry.written_at)
                    break
                closed.append(entry)
                last = seq
            if closed:
                table = served_events(closed, labels, window_us)
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
