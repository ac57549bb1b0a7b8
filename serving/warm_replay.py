"""Warm-start batches for a newly promoted base's online layer, from the logged events.

An online layer's weights mean nothing on another base, so a promoted base starts a new
layer (``OnlineLearner.rebase``). Its warm start replays what serving logged for that base:
the impressions the base served while it was the canary (``ServedEntry``: the inputs as the
base saw them, the positions shown) with their labels from the accepted-feedback log, read as the compactor reads them
(``serving.served_events.read_feedback_labels``: the largest label within the join window;
0 once the window has closed without one).
Impressions whose window is still open are left to live feedback. The replayed examples
count toward the new layer's readiness check; until it passes, serving runs the new base
alone (``FALLBACK_REASON_ONLINE_ABSENT``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np

from protos.wal import WalTailer
from serving.served_events import read_feedback_labels
from serving.served_log import ServedEntry, decode_served, served_root, served_time_us

if TYPE_CHECKING:
    from online_layer.warm_start import ReplayBatch

__all__ = ["MAX_REPLAY_EXAMPLES", "warm_start_batches"]

logger = logging.getLogger(__name__)

MAX_REPLAY_EXAMPLES = 200_000  # the newest impressions replayed, at most
BATCH_ROWS = 4_096


def _served_for(workspace: str | os.PathLike[str], base_version: str) -> list[ServedEntry]:
    root = served_root(workspace)
    entries: list[ServedEntry] = []
    if not root.is_dir():
        return entries
    for directory in sorted(p for p in root.iterdir() if p.is_dir()):
        for _, payload in WalTailer(directory).poll(10**9):
            try:
                entry = decode_served(payload)
            except Exception:  # a damaged record teaches nothing; the rest still can
                logger.warning("warm start: skipping an unreadable served record in %s", directory.name)
                continue
            if entry.record.base_version == base_version:
                entries.append(entry)
    entries.sort(key=served_time_us)
    return entries


def warm_start_batches(
    workspace: str | os.PathLike[str], base_version: str, join_window_s: float
) -> Iterator[ReplayBatch]:
    """``online_layer.warm_start.ReplayBatch`` batches of what ``base_version`` served (oldest
    first, at most ``MAX_REPLAY_EXAMPLES`` of the newest impressions)."""
    from online_layer.features import OnlineInputs
    from online_layer.warm_start import ReplayBatch

    entries = _served_for(workspace, base_version)
    if not entries:
        return
    labels = read_feedback_labels(workspace)
    newest = max(labels.newest_us, served_time_us(entries[-1]))
    window_us = int(join_window_s * 1e6)
    parts: list[OnlineInputs] = []
    ys: list[np.ndarray] = []
    positions: list[np.ndarray] = []
    times: list[np.ndarray] = []
    users: list[str] = []
    items: list[str] = []
    for entry in entries:
        record = entry.record
        t_us = served_time_us(entry)
        known = [labels.final_label(record.request_id, item, t_us, window_us) for item in record.item_ids]
        if t_us + window_us > newest and all(k is None for k in known):
            continue  # still open and nothing heard yet: live feedback will teach it
        n = len(record.item_ids)
        parts.append(record.inputs)
        ys.append(np.array([k if k is not None else 0.0 for k in known], dtype=np.float64))
        positions.append(np.arange(n, dtype=np.int64))
        times.append(np.full(n, t_us, dtype="datetime64[us]"))
        users.extend([record.user_id] * n)
        items.extend(record.item_ids)
    if not parts:
        return
    inputs = OnlineInputs.concat(parts)
    y = np.concatenate(ys)
    pos = np.concatenate(positions)
    when = np.concatenate(times)
    user_ids = np.asarray(users, dtype=object)
    item_ids = np.asarray(items, dtype=object)
    start = max(0, len(y) - MAX_REPLAY_EXAMPLES)
    logger.info("warm start of base %s: replaying %d logged impressions", base_version, len(y) - start)
    for lo in range(start, len(y), BATCH_ROWS):
        rows = slice(lo, min(lo + BATCH_ROWS, len(y)))
        # who and what: the replay passes the manipulation guard like live feedback
        yield ReplayBatch(base_version, inputs.take(rows), y[rows], pos[rows], when[rows],
                          user_ids=user_ids[rows], item_ids=item_ids[rows])
