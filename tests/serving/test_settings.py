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
