"""The window maths of the feature job: pure functions from events to feature rows.

Nothing here reads or writes a file; ``compute`` decides which hours and days to recompute
and where the results go. Two steps:

1. :func:`hourly_aggregates`: events -> per (entity, hour) impressions, clicks (sum of
   labels), first time seen and latest category.
2. From those aggregates, sorted by (entity, hour) with prefix sums (:class:`Keyed`):
   :func:`row_candidates` finds the hour boundaries at which some window of a view changes,
   :func:`window_rows` computes the counters and smoothed CTRs at them, and
   :func:`profile_rows` the item profile. A row at boundary ``B`` counts events with
   ``B - window <= ts < B`` (strictly before; see ``views``).

Entities and hours are packed into one sortable int64 key, ``entity code * 2**32 + hour``,
so a window over hours ``[B - w, B)`` of one entity is two ``searchsorted`` calls.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from feature_store.config import FeatureStoreConfig
from feature_store.event_log import HOUR_US
from feature_store.sources import CREATED_TIMESTAMP, EVENT_TIMESTAMP, TIMESTAMP_TYPE, source_schema
from feature_store.views import CATEGORY_FEATURE, FIRST_SEEN_FEATURE, ITEM_PROFILE, WindowView

__all__ = [
    "Keyed",
    "hourly_aggregates",
    "in_days",
    "keyed",
    "profile_rows",
    "row_candidates",
    "window_rows",
    "window_sums",
]

_TS = TIMESTAMP_TYPE
_KEY_SHIFT = np.int64(1) << np.int64(32)  # entity code * 2**32 + hour: one sortable int64


# --------------------------------------------------------------------------------------
# Events -> hourly aggregates
# --------------------------------------------------------------------------------------
def hourly_aggregates(events: pa.Table) -> tuple[pa.Table, pa.Table]:
    """Per (entity, hour) aggregates of ``events`` (``protos.events`` columns).

    Returns
    -------
    items, users : pa.Table
        ``item_id, hour, imp, clk, first_ts, category`` sorted by (item, hour), and
        ``user_id, hour, imp, clk``. ``hour`` is hours since the epoch, ``first_ts`` the
        earliest event time in microseconds, ``category`` that of the hour's latest
        categorised event (ties: the greatest string), null when it has none.
    """
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
    return _join_hour_category(items, events, hour, ts), users


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


# --------------------------------------------------------------------------------------
# Hourly aggregates -> feature rows
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Keyed:
    """Aggregates of one entity kind sorted by (entity, hour), with prefix sums."""

    ids: pa.Array  # (E,) entity id per code
    order: np.ndarray  # (A,) aggregate-table row of each sorted position
    code: np.ndarray  # (A,) entity code per aggregate row
    hour: np.ndarray  # (A,)
    key: np.ndarray  # (A,) code << 32 | hour, ascending
    cum_imp: np.ndarray  # (A+1,)
    cum_clk: np.ndarray  # (A+1,)


def keyed(table: pa.Table, id_col: str) -> Keyed:
    """Sort one kind's aggregates (``id_col, hour, imp, clk``) and take prefix sums."""
    encoded = table.column(id_col).combine_chunks().dictionary_encode()
    code = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    hour = table.column("hour").to_numpy().astype(np.int64)
    key = code * _KEY_SHIFT + hour
    order = np.argsort(key, kind="stable")
    imp = table.column("imp").to_numpy().astype(np.float64)[order]
    clk = table.column("clk").to_numpy().astype(np.float64)[order]
    return Keyed(
        ids=encoded.dictionary,
        order=order,
        code=code[order],
        hour=hour[order],
        key=key[order],
        cum_imp=np.concatenate([[0.0], np.cumsum(imp)]),
        cum_clk=np.concatenate([[0.0], np.cumsum(clk)]),
    )


def in_days(boundary: np.ndarray, day_lo: np.ndarray) -> np.ndarray:
    """Whether each boundary hour falls in one of the days starting at hours ``day_lo``.

    >>> in_days(np.array([0, 23, 24, 50]), np.array([0, 48]))
    array([ True,  True, False,  True])
    """
    pos = np.searchsorted(day_lo, boundary, side="right") - 1
    ok = pos >= 0
    ok[ok] = boundary[ok] < day_lo[pos[ok]] + 24
    return ok


def row_candidates(
    data: Keyed, spec: WindowView, day_lo: np.ndarray, end_h: int
) -> tuple[np.ndarray, np.ndarray]:
    """Unique (entity code, boundary hour) pairs at which some window of ``spec`` changes.

    Only boundaries ``<= end_h`` inside the days starting at hours ``day_lo`` are kept.
    """
    codes, bounds = [], []
    for offset in spec.row_offsets:
        b = data.hour + 1 + offset
        keep = (b <= end_h) & in_days(b, day_lo)
        codes.append(data.code[keep])
        bounds.append(b[keep])
    # Birth rows (empty windows) at each entity's first event hour.
    first = _group_starts(data.code)
    birth = data.hour[first]
    keep = (birth <= end_h) & in_days(birth, day_lo)
    codes.append(data.code[first][keep])
    bounds.append(birth[keep])
    code = np.concatenate(codes)
    boundary = np.concatenate(bounds)
    key = np.unique(code * _KEY_SHIFT + boundary)
    return key // _KEY_SHIFT, key % _KEY_SHIFT


def window_sums(
    data: Keyed, code: np.ndarray, boundary: np.ndarray, hours: int
) -> tuple[np.ndarray, np.ndarray]:
    """Impressions and clicks of each entity over hours ``[boundary - hours, boundary)``."""
    lo = np.searchsorted(data.key, code * _KEY_SHIFT + boundary - hours, side="left")
    hi = np.searchsorted(data.key, code * _KEY_SHIFT + boundary, side="left")
    imp = data.cum_imp[hi] - data.cum_imp[lo]
    clk = data.cum_clk[hi] - data.cum_clk[lo]
    # Prefix-sum differences of whole numbers are exact; round off float noise otherwise.
    return np.round(imp), np.round(clk, 9)


def window_rows(
    cfg: FeatureStoreConfig,
    spec: WindowView,
    data: Keyed,
    code: np.ndarray,
    boundary: np.ndarray,
    created_us: int,
) -> pa.Table:
    """The rows of ``spec``'s source at (``code``, ``boundary``), in that order.

    Counters per window, the smoothed CTR (``cfg.smoothed_ctr``), and all of them packed
    into the view's vector column; ``created_us`` is the write time in microseconds.
    """
    columns: dict[str, np.ndarray] = {}
    for suffix, hours in spec.windows:
        imp, clk = window_sums(data, code, boundary, hours)
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


def profile_rows(data: Keyed, items: pa.Table, end_h: int, created_us: int) -> pa.Table:
    """The item profile source up to boundary ``end_h``, sorted by (boundary, item code).

    ``data`` is ``keyed(items, "item_id")``. Per item: a birth row (first seen: null,
    category: null) at its first event hour, a row at the next hour with its first-seen
    time, and a row after every hour in which its latest known category changed.
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
    table = pa.table(
        {
            "item_id": data.ids.take(pa.array(code_out)),
            EVENT_TIMESTAMP: pa.array(boundary * HOUR_US, pa.int64()).cast(_TS),
            CREATED_TIMESTAMP: pa.array(np.full(len(code_out), created_us), pa.int64()).cast(_TS),
            FIRST_SEEN_FEATURE: pa.array(first_out, pa.float64(), from_pandas=True),  # NaN -> null
            CATEGORY_FEATURE: pa.array(names[cat_out], pa.string()),
        },
        schema=source_schema(ITEM_PROFILE),
    )
    return table.take(pa.array(np.lexsort((code_out, boundary))))


def _ffill_within(values: np.ndarray, new_group: np.ndarray) -> np.ndarray:
    """Forward-fill ``-1`` entries with the last non-negative value of the same group.

    >>> _ffill_within(np.array([3, -1, -1, -1, 5]), np.array([1, 0, 0, 1, 0], dtype=bool))
    array([ 3,  3,  3, -1,  5])
    """
    n = len(values)
    idx = np.where(values >= 0, np.arange(n), -1)
    # A group must not inherit from the previous group: reset at group starts.
    last = np.maximum.accumulate(idx)
    group_start = np.maximum.accumulate(np.where(new_group, np.arange(n), 0))
    valid = last >= group_start
    return np.where(valid, values[np.maximum(last, 0)], -1)
