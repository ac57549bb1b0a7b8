"""All configuration comes from one file, with every section checked."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from serving.settings import load_settings


def test_defaults_need_no_file(tmp_path: Path) -> None:
    settings = load_settings(workspace=tmp_path)
    assert settings.workspace == tmp_path
    assert settings.registry_dir == tmp_path / "registry"
    assert settings.ray_address is None


def test_file_sections_reach_their_configs(tmp_path: Path) -> None:
    config = tmp_path / "freshrank.toml"
    config.write_text(
        f'[freshrank]\nworkspace = "{tmp_path / "ws"}"\nray_address = "127.0.0.1:6380"\n'
        "[serving]\ngrpc_port = 9100\nonline_ttl_seconds = 30.0\n"
    )
    settings = load_settings(config)
    assert settings.workspace == tmp_path / "ws"
    assert settings.ray_address == "127.0.0.1:6380"
    assert settings.serving.grpc_port == 9100
    assert settings.serving.online_ttl_seconds == 30.0


def test_overrides_win_over_the_file(tmp_path: Path) -> None:
    config = tmp_path / "freshrank.toml"
    config.write_text("[serving]\ngrpc_port = 9100\n")
    settings = load_settings(config, overrides={"serving": {"grpc_port": 9200}})
    assert settings.serving.grpc_port == 9200


@pytest.mark.parametrize(
    "text, message",
    [
        ("[servng]\nx = 1\n", "unknown section(s) servng"),
        ("[serving]\ngrpc_prot = 1\n", "grpc_prot"),
        ("[freshrank]\nworkdir = 'x'\n", "workdir"),
        ("[serving]\ngrpc_port = 70000\n", "grpc_port"),
    ],
)
def test_typos_and_bad_values_are_errors(tmp_path: Path, text: str, message: str) -> None:
    config = tmp_path / "freshrank.toml"
    config.write_text(text)
    with pytest.raises(ValueError, match=re.escape(message)):
        load_settings(config)


def test_the_workspace_is_the_flag_then_the_environment_then_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "freshrank.toml"
    config.write_text(f'[freshrank]\nworkspace = "{tmp_path / "file"}"\n')
    monkeypatch.setenv("FRESHRANK_WORKSPACE", str(tmp_path / "env"))
    assert load_settings(config, workspace=tmp_path / "flag").workspace == tmp_path / "flag"
    assert load_settings(config).workspace == tmp_path / "env"
    monkeypatch.delenv("FRESHRANK_WORKSPACE")
    assert load_settings(config).workspace == tmp_path / "file"
    monkeypatch.chdir(tmp_path)
    assert load_settings().workspace == tmp_path / ".freshrank"


def test_the_file_is_the_flag_else_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "freshrank.toml"
    config.write_text("[feature_store]\nctr_prior = 0.2\n")
    monkeypatch.setenv("FRESHRANK_CONFIG", str(config))
    settings = load_settings(workspace=tmp_path)
    assert settings.feature_store.ctr_prior == 0.2 and settings.source == config
    monkeypatch.setenv("FRESHRANK_CONFIG", str(tmp_path / "missing.toml"))
    with pytest.raises(FileNotFoundError, match="missing.toml does not exist"):
        load_settings(workspace=tmp_path)


def test_overrides_on_loaded_settings_are_checked_like_the_file(tmp_path: Path) -> None:
    settings = load_settings(workspace=tmp_path)
    changed = settings.with_overrides(
        {"base_model": {"epochs": 2}, "freshrank": {"ray_address": "127.0.0.1:6380"}}
    )
    assert changed.base_model.epochs == 2 and changed.ray_address == "127.0.0.1:6380"
    assert changed.feature_store == settings.feature_store  # other sections untouched
    with pytest.raises(ValueError, match="epoch"):
        settings.with_overrides({"base_model": {"epoch": 2}})
    with pytest.raises(ValueError, match="section"):
        settings.with_overrides({"basemodel": {"epochs": 2}})
