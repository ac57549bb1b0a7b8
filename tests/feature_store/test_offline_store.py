"""freshrank's offline store reads a materialization window exactly as Feast's Dask store does,
and a materialization through it leaves the online store byte for byte as Feast's would.

Both run on the session's small workspace (``feature_ws``); the Dask store is Feast's own
``type: file``, in a copy of the workspace's registry, writing its own SQLite file.
"""

from __future__ import annotations

import shutil
import sqlite3
from datetime import timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from feature_store import repo
from feature_store.offline_store import OFFLINE_STORE_TYPE, FreshrankFileOfflineStore
from tests.feature_store.fs_testkit import Workspace


def _pull(store_cls: type, config, fv, start, end) -> pa.Table:
    source = fv.batch_source
    table = store_cls.pull_all_from_table_or_query(
        config=config,
        data_source=source,
        join_key_columns=[c.name for c in fv.entity_columns],
        feature_name_columns=[f.name for f in fv.features],
        timestamp_field=source.timestamp_field,
        created_timestamp_column=source.created_timestamp_column or None,
        start_date=start,
        end_date=end,
    ).to_arrow()
    key = [c.name for c in fv.entity_columns][0]
    columns = sorted(c for c in table.column_names if c != "__index_level_0__")  # Dask's pandas index
    table = table.select(columns)
    order = pc.sort_indices(table, sort_keys=[(key, "ascending"), (source.timestamp_field, "ascending")])
    return table.take(order)


def _same_rows(ours: pa.Table, theirs: pa.Table) -> None:
    assert ours.column_names == theirs.column_names
    assert ours.num_rows == theirs.num_rows
    for name in ours.column_names:
        a, b = ours.column(name), theirs.column(name)
        if pa.types.is_timestamp(a.type):
            a, b = pc.cast(a, pa.timestamp("us", "UTC")), pc.cast(b, pa.timestamp("us", "UTC"))
        assert a.to_pylist() == b.to_pylist(), name


def test_the_window_read_equals_the_dask_stores_with_both_ends_included(feature_ws: Workspace) -> None:
    from feast.infra.offline_stores.dask import DaskOfflineStore

    store = repo.open_store(feature_ws.cfg, local=True)
    assert store.config.offline_store.type == OFFLINE_STORE_TYPE
    checked = 0
    for fv in store.list_feature_views():
        whole = _pull(DaskOfflineStore, store.config, fv, None, feature_ws.end)
        if whole.num_rows < 10:
            continue
        times = sorted(set(pc.cast(whole.column(fv.batch_source.timestamp_field),
                                   pa.timestamp("us", "UTC")).to_pylist()))
        # window ends that fall exactly on rows: both must be in the answer
        start, end = times[len(times) // 4], times[(3 * len(times)) // 4]
        ours = _pull(FreshrankFileOfflineStore, store.config, fv, start, end)
        theirs = _pull(DaskOfflineStore, store.config, fv, start, end)
        assert 0 < ours.num_rows < whole.num_rows
        _same_rows(ours, theirs)
        got = pc.cast(ours.column(fv.batch_source.timestamp_field), pa.timestamp("us", "UTC")).to_pylist()
        assert min(got) == start and max(got) == end
        checked += 1
    assert checked >= 3


def _online_rows(path: Path) -> dict[str, list[tuple]]:
    con = sqlite3.connect(path)
    try:
        tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        return {
            t: sorted(con.execute(
                f'SELECT entity_key, feature_name, value, value_text, vector_value, event_ts FROM "{t}"'
            ).fetchall())
            for t in tables
        }
    finally:
        con.close()


def test_a_materialization_through_it_writes_what_feasts_own_store_writes(
    feature_ws: Workspace, tmp_path: Path
) -> None:
    from feast import FeatureStore
    from feast.repo_config import RepoConfig

    cfg = feature_ws.cfg
    start = feature_ws.end - timedelta(days=2)
    stores: dict[str, Path] = {}
    for name, offline in (("ours", OFFLINE_STORE_TYPE), ("feast", "file")):
        folder = tmp_path / name
        folder.mkdir()
        shutil.copy(cfg.registry_path, folder / "registry.db")
        shutil.copy(cfg.online_store_path, folder / "online.db")  # the tables apply made, emptied
        con = sqlite3.connect(folder / "online.db")
        for (table,) in con.execute("SELECT name FROM sqlite_master WHERE type='table'").fetchall():
            con.execute(f'DELETE FROM "{table}"')
        con.commit()
        con.close()
        settings = repo._settings(cfg)
        settings.update(registry=str(folder / "registry.db"),
                        online_store={"type": "sqlite", "path": str(folder / "online.db")},
                        offline_store={"type": offline})
        store = FeatureStore(config=RepoConfig(**settings, repo_path=cfg.feast_dir))
        store.materialize(start_date=start, end_date=feature_ws.end)
        stores[name] = folder / "online.db"
    ours, theirs = _online_rows(stores["ours"]), _online_rows(stores["feast"])
    assert ours.keys() == theirs.keys() and len(ours) >= 3
    for table in ours:
        assert len(ours[table]) > 0, table
        assert ours[table] == theirs[table], table


@pytest.mark.parametrize("quote", ["it's", 'a "view"'])
def test_paths_and_names_with_quotes_are_read_not_injected(tmp_path: Path, quote: str) -> None:
    import pyarrow.parquet as pq
    from datetime import datetime, timezone

    from feature_store.offline_store import read_window

    folder = tmp_path / quote
    folder.mkdir()
    at = datetime(2026, 1, 5, tzinfo=timezone.utc)
    pq.write_table(pa.table({"id": ["a", "b"], quote: [1.0, 2.0],
                             "ts": pa.array([at, at + timedelta(hours=1)], pa.timestamp("us", "UTC"))}),
                   folder / "part.parquet")
    table = read_window(str(folder / "*.parquet"), ["id", quote, "ts"], "ts", None, at, at)
    assert table.column("id").to_pylist() == ["a"] and table.column(quote).to_pylist() == [1.0]
