"""The training set: check it, cut it into a training window and the following day, encode it.

A training set is the events columns (``user_id``, ``item_id``, ``ts``, ``label``) plus one
float column per name in ``feature_store.catalog.USER_FEATURES + ITEM_FEATURES``, point-in-time
correct (``feature_store.training_set.build_training_set``), and optionally
``item_category`` (text; null or ``""`` = unknown). Features stay raw here; the model
transforms them (see ``base_model.model``).

Row order is part of the result: a fit shuffles rows with its seed, so the same rows in
another order would train other weights. ``validate_training_set`` therefore sorts by time
and then by every other column, so that the same rows give the same table whatever order
they arrived in (a Parquet dataset read with threads, a DuckDB join, a concatenation).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from base_model.errors import TrainingDataError
from base_model.vocab import Vocabulary, category_rows
from feature_store.catalog import ITEM_FEATURES, USER_FEATURES

logger = logging.getLogger(__name__)

__all__ = [
    "Encoded",
    "TimeWindows",
    "encode",
    "feature_names",
    "load_training_set",
    "split_by_time",
    "validate_training_set",
    "windows_for",
]

ID_COLUMNS = ("user_id", "item_id")
CATEGORY_COLUMN = "item_category"


def feature_names() -> tuple[str, ...]:
    """Dense inputs in model order: user features, then item features (the catalog's order)."""
    return (*USER_FEATURES, *ITEM_FEATURES)


@dataclass(frozen=True)
class TimeWindows:
    """``[train_start, valid_start)`` trains, ``[valid_start, valid_end)`` validates and gates."""

    train_start: datetime
    valid_start: datetime
    valid_end: datetime

    def to_dict(self) -> dict[str, str]:
        return {
            "train_start": self.train_start.isoformat(),
            "train_end": self.valid_start.isoformat(),
            "valid_start": self.valid_start.isoformat(),
            "valid_end": self.valid_end.isoformat(),
        }


def windows_for(as_of: datetime, train_days: int) -> TimeWindows:
    """The day before ``as_of`` validates; the ``train_days`` before that train."""
    if as_of.tzinfo is None:
        raise TrainingDataError(f"as_of must be timezone-aware, got {as_of!r}")
    end = as_of.astimezone(UTC)
    valid_start = end - timedelta(days=1)
    return TimeWindows(valid_start - timedelta(days=train_days), valid_start, end)


def load_training_set(source: pa.Table | str | Path) -> pa.Table:
    """A table as given, or read from a Parquet file or directory."""
    if isinstance(source, pa.Table):
        return source
    path = Path(source)
    if not path.exists():
        raise TrainingDataError(f"training set {path} does not exist")
    return pq.read_table(path)


def validate_training_set(table: pa.Table) -> pa.Table:
    """The columns the base model uses, typed and checked, in a canonical order.

    Rows are sorted by ``ts``, then by ids, label, category and features, so the result
    depends only on the rows, not on their input order (see the module docstring).
    ``item_category`` is optional: absent, every row's category is unknown (``""``); nulls
    become ``""``.

    Raises ``TrainingDataError`` naming the column (and the first bad row) for a missing
    column, an id column that is not text or integer, a time that is not a timestamp, a
    label outside [0, 1] or NaN, a category that is not text, or a non-numeric feature. NaN
    features are allowed (the model reads them as "missing": the training mean); nulls in
    features become NaN.
    """
    features = feature_names()
    missing = [c for c in (*ID_COLUMNS, "ts", "label", *features) if c not in table.column_names]
    if missing:
        raise TrainingDataError(f"training set lacks column(s): {', '.join(missing)}")
    columns: dict[str, pa.Array] = {}
    for name in ID_COLUMNS:
        col = table.column(name)
        if not (
            pa.types.is_string(col.type)
            or pa.types.is_large_string(col.type)
            or pa.types.is_integer(col.type)
            or pa.types.is_dictionary(col.type)
        ):
            raise TrainingDataError(f"column {name} must hold text ids, got {col.type}")
        col = col.cast(pa.string())
        if col.null_count:
            raise TrainingDataError(f"column {name} has a null at row {_first(pc.is_null(col))}")
        columns[name] = col
    ts = table.column("ts")
    if not pa.types.is_timestamp(ts.type):
        raise TrainingDataError(f"column ts must be a timestamp, got {ts.type}")
    if ts.null_count:
        raise TrainingDataError(f"column ts has a null at row {_first(pc.is_null(ts))}")
    columns["ts"] = (
        ts.cast(pa.timestamp("us", tz="UTC"))
        if ts.type.tz
        else pc.assume_timezone(ts.cast(pa.timestamp("us")), timezone="UTC")
    )
    label = _as_float32("label", table.column("label"))
    bad = pc.or_(pc.or_(pc.is_nan(label), pc.less(label, 0.0)), pc.greater(label, 1.0))
    bad = pc.fill_null(pc.or_(bad, pc.is_null(label)), True)
    if pc.any(bad).as_py():
        row = _first(bad)
        raise TrainingDataError(
            f"column label must be in [0, 1]; row {row} has {table.column('label')[row].as_py()!r}"
        )
    columns["label"] = label
    columns[CATEGORY_COLUMN] = _category(table)
    for name in features:
        columns[name] = pc.fill_null(_as_float32(name, table.column(name)), float("nan"))
    out = pa.table(columns)
    keys = ["ts", *ID_COLUMNS, "label", CATEGORY_COLUMN, *features]
    order = pc.sort_indices(out, sort_keys=[(k, "ascending") for k in keys])
    return out.take(order)


def _category(table: pa.Table) -> pa.ChunkedArray:
    if CATEGORY_COLUMN not in table.column_names:
        return pa.chunked_array([pa.array([""] * table.num_rows, pa.string())], pa.string())
    col = table.column(CATEGORY_COLUMN)
    if pa.types.is_dictionary(col.type):
        col = col.cast(col.type.value_type)
    if not (
        pa.types.is_string(col.type)
        or pa.types.is_large_string(col.type)
        or pa.types.is_null(col.type)
    ):
        raise TrainingDataError(f"column {CATEGORY_COLUMN} must hold text, got {col.type}")
    return pc.fill_null(col.cast(pa.string()), "")


def split_by_time(table: pa.Table, windows: TimeWindows) -> tuple[pa.Table, pa.Table]:
    """Rows in the training window and rows of the validation day."""
    ts = table.column("ts")
    train = pc.and_(
        pc.greater_equal(ts, _scalar(windows.train_start)),
        pc.less(ts, _scalar(windows.valid_start)),
    )
    valid = pc.and_(
        pc.greater_equal(ts, _scalar(windows.valid_start)), pc.less(ts, _scalar(windows.valid_end))
    )
    return table.filter(train), table.filter(valid)


@dataclass(frozen=True)
class Encoded:
    """What the model trains on: (N,) user, item and category rows, (N, F) raw features,
    (N,) labels."""

    user: np.ndarray
    item: np.ndarray
    dense: np.ndarray
    label: np.ndarray
    category: np.ndarray | None = None  # None: every category unknown (row 0)

    def __post_init__(self) -> None:
        if self.category is None:
            object.__setattr__(self, "category", np.zeros(len(self.label), dtype=np.int64))

    def __len__(self) -> int:
        return len(self.label)

    @property
    def categories(self) -> np.ndarray:
        """(N,) category rows (``__post_init__`` fills a missing ``category`` with row 0)."""
        if self.category is None:  # only before __post_init__ ran
            return np.zeros(len(self.label), dtype=np.int64)
        return self.category

    def permuted(self, seed: int) -> Encoded:
        """Rows in a seeded random order (a training set arrives sorted by time)."""
        order = np.random.default_rng(seed).permutation(len(self))
        return Encoded(
            self.user[order],
            self.item[order],
            self.dense[order],
            self.label[order],
            self.categories[order],
        )

    def arrays(self) -> dict[str, np.ndarray]:
        """The columns by the names the training loop reads."""
        return {
            "user": self.user,
            "item": self.item,
            "category": self.categories,
            "dense": self.dense,
            "label": self.label,
        }

    def to_arrow(self, rows_per_block: int = 131072) -> list[pa.Table]:
        """Blocks for ``ray.data.from_arrow``: int64 ids, a (F,) float32 tensor column, label."""
        from ray.data.extensions import ArrowTensorArray

        blocks = []
        for start in range(0, max(len(self), 1), rows_per_block):
            stop = min(start + rows_per_block, len(self))
            blocks.append(
                pa.table(
                    {
                        "user": pa.array(self.user[start:stop]),
                        "item": pa.array(self.item[start:stop]),
                        "category": pa.array(self.categories[start:stop]),
                        "dense": ArrowTensorArray.from_numpy(
                            np.ascontiguousarray(self.dense[start:stop])
                        ),
                        "label": pa.array(self.label[start:stop]),
                    }
                )
            )
        return blocks


def encode(
    table: pa.Table,
    users: Vocabulary,
    items: Vocabulary,
    oov_dropout: float = 0.0,
    seed: int = 0,
    category_buckets: int = 0,
) -> Encoded:
    """Rows and features of a validated table; ``oov_dropout`` routes a seeded fraction of
    rows' ids to their hashed rows so those rows learn what an unseen id should score;
    ``category_buckets`` hashes ``item_category`` (0: every category unknown)."""
    user = users.lookup_arrow(table.column("user_id"))
    item = items.lookup_arrow(table.column("item_id"))
    if oov_dropout > 0 and table.num_rows:
        rng = np.random.default_rng(seed + 7919)
        for rows, vocab, column in ((user, users, "user_id"), (item, items, "item_id")):
            drop = np.flatnonzero(rng.random(len(rows)) < oov_dropout)
            if drop.size:
                ids = table.column(column).take(pa.array(drop)).to_pylist()
                rows[drop] = vocab.hashed_rows(ids)
    dense = (
        np.column_stack(
            [table.column(n).to_numpy(zero_copy_only=False) for n in feature_names()]
        ).astype(np.float32)
        if table.num_rows
        else np.zeros((0, len(feature_names())), np.float32)
    )
    label = table.column("label").to_numpy(zero_copy_only=False).astype(np.float32)
    category = category_rows(
        table.column(CATEGORY_COLUMN) if CATEGORY_COLUMN in table.column_names else None,
        table.num_rows,
        category_buckets,
    )
    return Encoded(user, item, np.ascontiguousarray(dense), label, category)


def _as_float32(name: str, col: pa.ChunkedArray) -> pa.ChunkedArray:
    if not (pa.types.is_floating(col.type) or pa.types.is_integer(col.type)):
        raise TrainingDataError(f"column {name} must be numeric, got {col.type}")
    return col.cast(pa.float32())


def _first(mask: pa.ChunkedArray | pa.Array) -> int:
    return int(np.flatnonzero(np.asarray(mask.to_numpy(zero_copy_only=False), dtype=bool))[0])


def _scalar(moment: datetime) -> pa.Scalar:
    return pa.scalar(moment.astimezone(UTC), type=pa.timestamp("us", tz="UTC"))
