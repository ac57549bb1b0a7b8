"""The ``freshrank`` entry point: what it sets up around every subcommand."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from serving import cli


def test_a_command_gets_one_metrics_directory_for_its_processes_and_removes_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Feast would leave a /tmp/feast_metrics_* per Ray worker; the command provides one
    directory that its processes inherit, and removes it when it ends."""
    monkeypatch.delenv("PROMETHEUS_MULTIPROCESS_DIR", raising=False)
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    seen: list[str] = []
    with cli.feast_metrics_directory():
        seen.append(os.environ["PROMETHEUS_MULTIPROCESS_DIR"])
        assert os.environ["PROMETHEUS_MULTIPROC_DIR"] == seen[0]
        assert Path(seen[0]).is_dir()
    assert not Path(seen[0]).exists()
    assert "PROMETHEUS_MULTIPROCESS_DIR" not in os.environ


def test_a_metrics_directory_the_user_set_is_left_alone(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PROMETHEUS_MULTIPROCESS_DIR", str(tmp_path))
    with cli.feast_metrics_directory():
        assert os.environ["PROMETHEUS_MULTIPROCESS_DIR"] == str(tmp_path)
    assert tmp_path.is_dir() and os.environ["PROMETHEUS_MULTIPROCESS_DIR"] == str(tmp_path)


def test_main_runs_a_subcommand_inside_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("PROMETHEUS_MULTIPROCESS_DIR", raising=False)
    out = tmp_path / "sim.parquet"
    assert cli.main(["simulate", "--days", "1", "--out", str(out)]) == 0
    assert out.is_file()
    assert "PROMETHEUS_MULTIPROCESS_DIR" not in os.environ
