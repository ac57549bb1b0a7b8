"""The feature store's config: validated, absolute, and buildable from a TOML section."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import pytest

from feature_store.config import WORKSPACE_ENV, FeatureStoreConfig
from feature_store.views import WINDOW_VIEWS, WindowView, check_catalog


def test_paths_are_absolute_and_laid_out_under_the_workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = FeatureStoreConfig(workspace=Path("ws"))
    assert cfg.workspace == tmp_path / "ws"
    assert cfg.events_dir == tmp_path / "ws" / "events"
    assert cfg.online_store_path == tmp_path / "ws" / "feast" / "online_store.db"
    assert FeatureStoreConfig.from_dict(asdict(cfg)) == cfg  # what Ray workers rebuild
    monkeypatch.setenv(WORKSPACE_ENV, str(tmp_path / "elsewhere"))
    assert FeatureStoreConfig.from_env().workspace == tmp_path / "elsewhere"


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"colour": "red"}, "unknown \\[feature_store\\] key\\(s\\): colour"),
        ({"project": "has space"}, "project"),
        ({"ctr_prior": 0.0}, "ctr_prior"),
        ({"ctr_prior_strength": -1}, "ctr_prior_strength"),
        ({"engine": "spark"}, "engine must be one of duckdb, ray"),
        ({"ray_address": 6379}, "ray_address"),
        ({"online_store": "memcached"}, "online_store must be one of sqlite, redis"),
        ({"online_store": "redis"}, "redis_address must be host:port"),
        ({"online_store": "redis", "redis_address": "redis.local"}, "redis_address must be host:port"),
    ],
)
def test_bad_settings_name_the_setting(values: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        FeatureStoreConfig.from_dict(values)


def test_the_catalog_and_the_views_agree_and_ttls_cover_the_windows() -> None:
    check_catalog()
    assert all(v.ttl_days * 24 > v.max_window_hours for v in WINDOW_VIEWS)
    with pytest.raises(ValueError, match="ttl_days"):
        WindowView("too_short", "item", (("7d", 168),), ttl_days=1)
