"""Point-in-time correct training sets: DuckDB ASOF joins over the Feast sources.

Why not Feast's ``get_historical_features`` for big sets: the file (Dask) offline store
joins every entity row with every feature row of its entity before filtering, which is slow
on a million rows and was measured dropping and duplicating rows (measured,
bench/RESULTS.md). This module performs the same join Feast defines, on the same Parquet
files declared in the same FeatureService:

* per feature view, the latest row with ``event_timestamp <= ts`` (ties: the newest
  ``created_timestamp``), discarded when older than the view's TTL (``ts - ttl``);
* ``item_age_hours`` = ``(ts - item_first_seen_s) / 3600`` (the ``item_age`` on-demand view);
* values not found become the documented defaults (``views.default_value``).

``tests/feature_store/test_point_in_time.py`` proves the result equal to Feast's
``get_historical_features`` (:func:`feast_training_set`) and to a brute-force reference
computed from raw events.

With ``FeatureStoreConfig.engine == "ray"`` :func:`build_training_set` runs the same join
through Feast's Ray offline store on a Ray cluster instead (:func:`ray_training_set`;
``tests/feature_store/test_ray_engine.py`` proves it equal to the DuckDB one).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import numpy as np
import pyarrow as pa

from feature_store.catalog import FEATURE_SERVICE_NAME, ITEM_FEATURES, USER_FEATURES
from feature_store.sources import CREATED_TIMESTAMP, EVENT_TIMESTAMP, source_dir
from feature_store.config import FeatureStoreConfig
from feature_store.errors import WorkspaceError
from feature_store.views import (
    AGE_FEATURE,
    FIRST_SEEN_FEATURE,
    ITEM_PROFILE,
    REQUEST_TIME_FIELD,
    WINDOW_VIEWS,
    default_value,
    view_of,
)

__all__ = ["build_training_set", "feast_training_set", "ray_training_set", "FEATURE_COLUMNS"]

logger = logging.getLogger(__name__)

#: The columns a training set adds, in model order.
FEATURE_COLUMNS: tuple[str, ...] = (*USER_FEATURES, *ITEM_FEATURES)
_ROW = "__freshrank_row"


def _glob(cfg: FeatureStoreConfig, view: str) -> str:
    """The view's Parquet files as a SQL string literal."""
    pattern = str(source_dir(cfg, view) / "*.parquet").replace("'", "''")
    return f"'{pattern}'"


def _dedupe(key: str) -> str:
    return (
        f"QUALIFY row_number() OVER (PARTITION BY {key}, {EVENT_TIMESTAMP} "
        f"ORDER BY {CREATED_TIMESTAMP} DESC) = 1"
    )


def _check_rows(rows: pa.Table) -> pa.Table:
    missing = [c for c in ("user_id", "item_id", "ts") if c not in rows.column_names]
    if missing:
        raise ValueError(f"training rows need columns user_id, item_id, ts; missing {', '.join(missing)}")
    clash = [c for c in FEATURE_COLUMNS if c in rows.column_names]
    if clash:
        raise ValueError(f"training rows already have feature column(s) {', '.join(clash)}")
    ts_type = rows.schema.field("ts").type
    if not pa.types.is_timestamp(ts_type):
        raise TypeError(f"training rows' ts must be a timestamp, got {ts_type}")
    for name in ("user_id", "item_id", "ts"):
        if rows.column(name).null_count:
            raise ValueError(f"training rows' {name} has nulls")
    if ts_type.tz is None:
        rows = rows.set_column(rows.schema.get_field_index("ts"), "ts",
                               rows.column("ts").cast(pa.timestamp("us", tz="UTC")))
    return rows


def build_training_set(
    cfg: FeatureStoreConfig,
    rows: pa.Table,
    *,
    features: Sequence[str] = FEATURE_COLUMNS,
    threads: int | None = None,
    dedupe: bool = False,
) -> pa.Table:
    """``rows`` (same rows, same order) plus point-in-time correct features as float32.

    Parameters
    ----------
    rows
        At least ``user_id``, ``item_id`` (strings) and ``ts`` (timestamp; naive = UTC); any
        other columns (label, position, ...) are kept as they are.
    features
        Feature names to add (default: every catalog feature, in model order).
    threads
        DuckDB threads (default: DuckDB's own choice).
    dedupe
        Resolve feature rows sharing (entity, event_timestamp) by the newest
        ``created_timestamp``, as Feast does. ``compute`` never writes such duplicates (it
        replaces files), so the default skips this pass (about a third of the time); set it
        for sources written by other tools.

    With ``cfg.engine == "ray"`` the join runs on Feast's Ray offline store instead
    (:func:`ray_training_set`; ``threads`` and ``dedupe`` do not apply there).
    """
    if cfg.engine == "ray":
        return ray_training_set(cfg, rows, features=features)
    started = time.perf_counter()
    import duckdb

    rows = _check_rows(rows)
    unknown = [f for f in features if f not in FEATURE_COLUMNS]
    if unknown:
        raise ValueError(f"unknown feature(s) {', '.join(unknown)}; known: {', '.join(FEATURE_COLUMNS)}")
    for view in {*(v.name for v in WINDOW_VIEWS), ITEM_PROFILE}:
        if not source_dir(cfg, view).is_dir():
            raise WorkspaceError(f"no feature source at {source_dir(cfg, view)}: run compute first")
    keyed = rows.append_column(_ROW, pa.array(np.arange(rows.num_rows, dtype=np.int64)))
    con = duckdb.connect()
    try:
        con.execute("SET TimeZone = 'UTC'")
        if threads:
            con.execute(f"SET threads = {int(threads)}")
        con.register("rows_in", keyed.select([_ROW, "user_id", "item_id", "ts"]))
        selects, joins = [], []
        wanted = set(features)
        for spec in WINDOW_VIEWS:
            names = [f for f in spec.features if f in wanted]
            if not names:
                continue
            alias = spec.name
            cols = ", ".join(names)
            joins.append(
                f"""ASOF LEFT JOIN (
                    SELECT {spec.join_key} AS k, {EVENT_TIMESTAMP} AS fts, {cols}
                    FROM read_parquet({_glob(cfg, spec.name)}) {_dedupe(spec.join_key) if dedupe else ""}
                ) {alias} ON r.{spec.join_key} = {alias}.k AND r.ts >= {alias}.fts"""
            )
            ttl = f"{alias}.fts >= r.ts - INTERVAL {spec.ttl_days} DAY"
            for name in names:
                default = default_value(name, cfg.ctr_prior)
                selects.append(
                    f"CAST(CASE WHEN {ttl} THEN {alias}.{name} ELSE {default!r} END AS FLOAT) AS {name}"
                )
        if AGE_FEATURE in wanted:
            joins.append(
                f"""ASOF LEFT JOIN (
                    SELECT item_id AS k, {EVENT_TIMESTAMP} AS fts, {FIRST_SEEN_FEATURE}
                    FROM read_parquet({_glob(cfg, ITEM_PROFILE)}) {_dedupe("item_id") if dedupe else ""}
                ) profile ON r.item_id = profile.k AND r.ts >= profile.fts"""
            )
            age = f"(epoch_us(r.ts) / 1e6 - profile.{FIRST_SEEN_FEATURE}) / 3600.0"
            selects.append(
                f"CAST(coalesce({age}, {default_value(AGE_FEATURE, cfg.ctr_prior)!r}) AS FLOAT) AS {AGE_FEATURE}"
            )
        sql = (
            f"SELECT r.{_ROW}, {', '.join(selects)} FROM rows_in r "
            + "\n".join(joins)
            + f" ORDER BY r.{_ROW}"
        )
        joined = con.sql(sql).to_arrow_table()
    finally:
        con.close()
    if joined.num_rows != rows.num_rows or not np.array_equal(
        joined.column(_ROW).to_numpy(), np.arange(rows.num_rows)
    ):
        raise RuntimeError("point-in-time join changed the number or order of rows")  # never expected
    out = rows
    for name in (f for f in FEATURE_COLUMNS if f in wanted):
        out = out.append_column(pa.field(name, pa.float32(), nullable=False), joined.column(name))
    logger.info("training set: %s rows x %s features in %.2fs", out.num_rows, len(wanted),
                time.perf_counter() - started)
    return out


def feast_training_set(cfg: FeatureStoreConfig, rows: pa.Table, *, service: str = FEATURE_SERVICE_NAME) -> pa.Table:
    """The same training set through Feast's own ``get_historical_features`` (by service).

    Slow and memory-hungry on large inputs (see module docstring); here for small sets,
    for the equality test, and for the benchmark. Same output contract as
    :func:`build_training_set`.
    """
    from feature_store.repo import open_store

    rows = _check_rows(rows)
    store = open_store(cfg)
    ts_us = rows.column("ts").cast(pa.int64()).to_numpy(zero_copy_only=False)
    entity_df = rows.select(["user_id", "item_id"]).to_pandas()
    entity_df[_ROW] = np.arange(rows.num_rows)
    entity_df["event_timestamp"] = rows.column("ts").to_pandas()
    entity_df[REQUEST_TIME_FIELD] = ts_us / 1e6
    result = store.get_historical_features(
        entity_df=entity_df, features=store.get_feature_service(service)
    ).to_df()
    result = result.sort_values(_ROW).reset_index(drop=True)
    if len(result) != rows.num_rows or not np.array_equal(result[_ROW].to_numpy(), np.arange(rows.num_rows)):
        raise RuntimeError(
            f"Feast returned {len(result)} rows for {rows.num_rows} entity rows (dropped or duplicated)"
        )
    out = rows
    for name in FEATURE_COLUMNS:
        default = default_value(name, cfg.ctr_prior)
        values = result[name].astype("float64").fillna(default).to_numpy().astype(np.float32)
        out = out.append_column(pa.field(name, pa.float32(), nullable=False), pa.array(values, pa.float32()))
    return out


def ray_training_set(cfg: FeatureStoreConfig, rows: pa.Table, *, features: Sequence[str] = FEATURE_COLUMNS) -> pa.Table:
    """:func:`build_training_set` through Feast's Ray offline store, on the Ray cluster
    ``cfg.ray_address`` names (``feature_store.ray_engine``): same rows, same order, same
    values.

    Feast is asked once per entity (user views, then item views with the on-demand age),
    each time with the distinct (key, time) pairs of ``rows`` (its Ray join can merge entity
    rows that share them, and its per-row loop is the shorter for it); the answers are
    joined back onto every row. That loop makes this slow at scale (entity rows x feature
    rows, ``feature_store.ray_engine``): measured in ``bench/RESULTS.md``.
    """
    import pandas as pd

    from feature_store.errors import EngineError
    from feature_store.ray_engine import connect, feast_scope
    from feature_store.repo import open_store

    started = time.perf_counter()
    rows = _check_rows(rows)
    wanted = [f for f in FEATURE_COLUMNS if f in set(features)]
    unknown = sorted(set(features) - set(FEATURE_COLUMNS))
    if unknown:
        raise ValueError(f"unknown feature(s) {', '.join(unknown)}; known: {', '.join(FEATURE_COLUMNS)}")
    connect(cfg)
    store = open_store(cfg)
    ts_us = rows.column("ts").cast(pa.timestamp("us", tz="UTC"), safe=False).cast(pa.int64()).to_numpy(
        zero_copy_only=False)
    out = rows
    columns: dict[str, np.ndarray] = {}
    with feast_scope():
        for key, names in (("user_id", [f for f in wanted if f in USER_FEATURES]),
                           ("item_id", [f for f in wanted if f in ITEM_FEATURES])):
            if not names:
                continue
            keys = pd.DataFrame({key: rows.column(key).to_numpy(zero_copy_only=False), "_us": ts_us})
            entity_df = keys.drop_duplicates().reset_index(drop=True)
            entity_df["event_timestamp"] = pd.to_datetime(entity_df["_us"], unit="us", utc=True)
            if AGE_FEATURE in names:
                entity_df[REQUEST_TIME_FIELD] = entity_df["_us"] / 1e6
            refs = [f"{view_of(name)}:{name}" for name in names]
            result = store.get_historical_features(entity_df=entity_df, features=refs).to_df()
            if len(result) != len(entity_df) or result.duplicated([key, "_us"]).any():
                raise EngineError(
                    f"Feast's Ray offline store returned {len(result)} rows for {len(entity_df)} "
                    f"distinct ({key}, ts) entity rows"
                )
            joined = keys.merge(result[[key, "_us", *names]], on=[key, "_us"], how="left", validate="many_to_one")
            for name in names:
                columns[name] = (
                    joined[name].astype("float64").fillna(default_value(name, cfg.ctr_prior)).to_numpy().astype(np.float32)
                )
    for name in wanted:
        out = out.append_column(pa.field(name, pa.float32(), nullable=False), pa.array(columns[name], pa.float32()))
    logger.info("training set through Feast's Ray store: %s rows x %s features in %.2fs", out.num_rows,
                len(wanted), time.perf_counter() - started)
    return out
