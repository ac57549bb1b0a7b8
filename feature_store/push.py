"""Fresh counters: item impressions/clicks over the last hour, pushed as feedback arrives.

The batch job updates features once an hour; a breaking item's click-through must reach
serving within seconds. :class:`FreshCounterPusher` keeps the feedback of the last hour (by
event time) and, on every :meth:`~FreshCounterPusher.observe`, pushes the new values of
every item whose counters changed (including items whose last events just left the
window) through the Feast ``PushSource`` feeding the ``item_fresh`` view
(``store.push(..., to=PushMode.ONLINE)``). ``OnlineFeatureReader`` and Feast's own
``get_online_features`` see them immediately.

Window: events with ``now - 1h < ts <= now``, where ``now`` is the newest feedback time seen
(event time, so replays and backtests behave like live traffic). Feedback older than the
window when it arrives is left to the batch job.
"""

from __future__ import annotations

import logging
import threading
from datetime import datetime, timezone
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pyarrow as pa

from feature_store.config import FeatureStoreConfig
from feature_store.errors import EventsFormatError
from feature_store.views import ITEM_FRESH

if TYPE_CHECKING:
    from feast import FeatureStore

__all__ = ["FreshCounterPusher"]

logger = logging.getLogger(__name__)

_WINDOW_US = ITEM_FRESH.max_window_hours * 3_600_000_000
_PUSH_SOURCE: str = ITEM_FRESH.push_source or "item_fresh_push"


class FreshCounterPusher:
    """Keeps rolling 1 h item counters from feedback and pushes them to the online store.

    Parameters
    ----------
    cfg
        The workspace (applied: the push source must be registered).
    store
        A ``feast.FeatureStore`` to push through (default: one opened on ``cfg``).
    """

    def __init__(self, cfg: FeatureStoreConfig, *, store: FeatureStore | None = None) -> None:
        from feature_store.repo import open_store

        self._cfg = cfg
        self._store = store if store is not None else open_store(cfg)
        self._lock = threading.Lock()
        self._item = np.zeros(0, dtype=object)
        self._ts = np.zeros(0, dtype=np.int64)
        self._label = np.zeros(0, dtype=np.float64)
        self._now_us: int | None = None
        self._pushed: dict[str, tuple[float, float]] = {}  # item -> (imp, clk) last pushed

    @property
    def now(self) -> datetime | None:
        """Newest feedback time seen (the end of the window)."""
        if self._now_us is None:
            return None
        return datetime.fromtimestamp(self._now_us / 1e6, tz=timezone.utc)

    def counters(self) -> dict[str, tuple[float, float]]:
        """Current ``{item_id: (impressions, clicks)}`` of the window (items with events)."""
        with self._lock:
            return {k: v for k, v in self._window_counts().items()}

    def observe(self, events: pa.Table) -> int:
        """Add feedback events (``item_id``, ``ts``, ``label``) and push what changed.

        Returns the number of items whose counters were pushed.

        Raises
        ------
        EventsFormatError
            A required column is missing, or holds a null, a NaN or a label outside [0, 1].
        """
        item, ts, label = _columns(events)
        with self._lock:
            if len(ts):
                newest = int(ts.max())
                self._now_us = newest if self._now_us is None else max(self._now_us, newest)
                self._item = np.concatenate([self._item, item])
                self._ts = np.concatenate([self._ts, ts])
                self._label = np.concatenate([self._label, label])
            if self._now_us is None:
                return 0
            keep = self._ts > self._now_us - _WINDOW_US
            self._item, self._ts, self._label = self._item[keep], self._ts[keep], self._label[keep]
            counts = self._window_counts()
            changed = {k: v for k, v in counts.items() if self._pushed.get(k) != v}
            for gone in set(self._pushed) - set(counts):
                changed[gone] = (0.0, 0.0)  # left the window: push the empty counters
            if changed:
                self._push(changed)
                for k, v in changed.items():
                    if v == (0.0, 0.0):
                        self._pushed.pop(k, None)
                    else:
                        self._pushed[k] = v
            return len(changed)

    def resync(self) -> int:
        """Push every item of the window again (e.g. after a materialization overwrote them)."""
        with self._lock:
            counts = self._window_counts()
            if counts:
                self._push(counts)
            self._pushed = dict(counts)
            return len(counts)

    def _window_counts(self) -> dict[str, tuple[float, float]]:
        if not len(self._ts):
            return {}
        frame = pd.DataFrame({"item": self._item, "label": self._label})
        grouped = frame.groupby("item", sort=True)["label"].agg(["size", "sum"])
        return {
            k: (float(n), float(c))
            for k, n, c in zip(grouped.index, grouped["size"].to_numpy(), grouped["sum"].to_numpy())
        }

    def _push(self, values: dict[str, tuple[float, float]]) -> None:
        from feast.data_source import PushMode

        items = sorted(values)
        imp = np.array([values[k][0] for k in items], dtype=np.float64)
        clk = np.array([values[k][1] for k in items], dtype=np.float64)
        columns = {
            ITEM_FRESH.features[0]: imp.astype(np.float32),
            ITEM_FRESH.features[1]: clk.astype(np.float32),
            ITEM_FRESH.features[2]: self._cfg.smoothed_ctr(clk, imp).astype(np.float32),
        }
        matrix = np.stack([columns[name] for name in ITEM_FRESH.features], axis=1)
        ts = pd.Timestamp(self._now_us, unit="us", tz="UTC")
        frame = pd.DataFrame(
            {
                "item_id": items,
                "event_timestamp": [ts] * len(items),
                "created_timestamp": [pd.Timestamp.now(tz="UTC")] * len(items),
                **columns,
                ITEM_FRESH.vector: [row.tolist() for row in matrix],
            }
        )
        self._store.push(_PUSH_SOURCE, frame, to=PushMode.ONLINE)
        logger.debug("pushed fresh counters of %s item(s) at %s", len(items), ts)


def _columns(events: pa.Table) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    for name in ("item_id", "ts", "label"):
        if name not in events.column_names:
            raise EventsFormatError(f"feedback lacks column {name!r}", column=name)
        nulls = events.column(name).is_null().to_numpy(zero_copy_only=False)
        if nulls.any():
            raise EventsFormatError(
                f"feedback column {name!r}, row {int(np.flatnonzero(nulls)[0])}: missing value",
                column=name, row=int(np.flatnonzero(nulls)[0]),
            )
    ts_col = events.column("ts")
    if not pa.types.is_timestamp(ts_col.type):
        raise EventsFormatError(f"feedback column 'ts' must be a timestamp, got {ts_col.type}", column="ts")
    if ts_col.type.tz is None:
        ts_col = ts_col.cast(pa.timestamp("us"))
    ts = ts_col.cast(pa.timestamp("us", tz="UTC")).cast(pa.int64()).to_numpy(zero_copy_only=False)
    label = events.column("label").cast(pa.float64()).to_numpy(zero_copy_only=False)
    bad = np.isnan(label) | (label < 0) | (label > 1)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise EventsFormatError(
            f"feedback column 'label', row {i}: label must be in [0, 1], got {label[i]}", column="label", row=i
        )
    item = np.asarray(events.column("item_id").cast(pa.string()).to_pylist(), dtype=object)
    return item, ts, label
