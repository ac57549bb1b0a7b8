"""The offline feature sources: one Parquet folder per feature view, and its schema.

This is the contract between the batch job that writes the sources (``compute``), the Feast
``FileSource`` declarations that point at them (``declarations``), the training-set builder
and ``repo``'s materialization summary that read them. Layout::

    <ws>/features/<view>/<YYYY-MM-DD>.parquet   window views, one file per day
    <ws>/features/item_profile/profile.parquet  the item profile, rewritten whole
    <ws>/features/<view>/empty.parquet          the schema only, so Feast can read a
                                                source before the first compute
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from feature_store.config import FeatureStoreConfig
from feature_store.views import CATEGORY_FEATURE, FIRST_SEEN_FEATURE, ITEM_PROFILE, WINDOW_VIEWS
from protos.atomic import atomic_path
from protos.events import EVENTS_SCHEMA

__all__ = [
    "ALL_VIEWS",
    "CREATED_TIMESTAMP",
    "EMPTY_FILE",
    "EVENT_TIMESTAMP",
    "PROFILE_FILE",
    "TIMESTAMP_TYPE",
    "ensure_sources",
    "source_dir",
    "source_schema",
    "write_parquet_atomic",
]

#: The time a feature row holds for (a whole hour: the boundary ``B`` of its windows).
EVENT_TIMESTAMP = "event_timestamp"
#: Wall-clock time of the write; Feast keeps the newest row when event times tie.
CREATED_TIMESTAMP = "created_timestamp"
#: File kept in every source folder so Feast can read a source before the first compute.
EMPTY_FILE = "empty.parquet"
#: The item profile source is one file (rewritten whole by every run).
PROFILE_FILE = "profile.parquet"
#: Type of both time columns: the events' ``ts`` type, so a boundary compares with a time.
TIMESTAMP_TYPE = EVENTS_SCHEMA.field("ts").type  # timestamp[us, UTC]
#: Every view with a Parquet source: the window views, then the item profile.
ALL_VIEWS: tuple[str, ...] = (*(v.name for v in WINDOW_VIEWS), ITEM_PROFILE)

_TS = TIMESTAMP_TYPE

def source_dir(cfg: FeatureStoreConfig, view: str) -> Path:
    """Folder of one view's Parquet source (what its Feast FileSource points at)."""
    return cfg.features_dir / view


def source_schema(view: str) -> pa.Schema:
    """The Arrow schema of a view's Parquet source.

    Raises
    ------
    KeyError
        ``view`` has no Parquet source.
    """
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


def ensure_sources(cfg: FeatureStoreConfig) -> None:
    """Create every source folder with its empty schema file (Feast can read it at once)."""
    for view in ALL_VIEWS:
        folder = source_dir(cfg, view)
        folder.mkdir(parents=True, exist_ok=True)
        empty = folder / EMPTY_FILE
        if not empty.exists():
            write_parquet_atomic(source_schema(view).empty_table(), empty)


def write_parquet_atomic(table: pa.Table, path: Path) -> None:
    """Replace ``path`` with ``table`` (zstd Parquet); readers see the old file or the new."""
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")
