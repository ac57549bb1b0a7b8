"""Feast as users know it: the plain `feast` CLI works from feature_store/, and so do ours."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from tests.feature_store.fs_testkit import build_workspace

import feature_store
from feature_store.config import WORKSPACE_ENV, FeatureStoreConfig
from feature_store.online import OnlineFeatureReader

PACKAGE_DIR = Path(feature_store.__file__).parent
FEAST = Path(sys.executable).parent / "feast"


def test_feast_apply_imports_only_the_declarations() -> None:
    from feast.repo_operations import get_repo_files

    assert [p.name for p in get_repo_files(PACKAGE_DIR)] == ["definitions.py"]


def test_the_plain_feast_cli_applies_and_materializes_a_workspace(tmp_path: Path) -> None:
    ws = build_workspace(tmp_path / "ws", apply=False)
    env = {**os.environ, WORKSPACE_ENV: str(ws.cfg.workspace)}
    start = "2026-01-01T00:00:00"
    end = ws.end.strftime("%Y-%m-%dT%H:%M:%S")
    done = subprocess.run(
        f"{FEAST} apply && {FEAST} materialize {start} {end}",
        shell=True, cwd=PACKAGE_DIR, env=env, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Created feature service ranker_v1" in done.stdout
    user = ws.events.column("user_id")[0].as_py()
    with OnlineFeatureReader(ws.cfg) as reader:
        got = reader.get(user, [ws.events.column("item_id")[0].as_py()], now=ws.end)
    assert got.user_found and got.items_found.all()


def test_without_the_workspace_variable_feast_says_what_to_set() -> None:
    env = {k: v for k, v in os.environ.items() if k != WORKSPACE_ENV}
    done = subprocess.run(
        [sys.executable, "-c", "import runpy; runpy.run_path('definitions.py')"],
        cwd=PACKAGE_DIR, env=env, capture_output=True, text=True, timeout=60,
    )
    assert done.returncode != 0 and WORKSPACE_ENV in done.stderr


def run_cli(*argv: str) -> int:
    """``freshrank ...`` through its one entry point (settings, errors as one line)."""
    from serving.cli import main

    return main(list(argv))


def test_freshrank_simulate_compute_and_load_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ws = tmp_path / "ws"
    out = tmp_path / "sim.parquet"
    assert run_cli("simulate", "--out", str(out), "--into-workspace", "--workspace", str(ws),
                   "--days", "1", "--impressions-per-day", "500", "--users", "50") == 0
    assert pq.read_metadata(out).num_rows > 300
    assert run_cli("features", "compute", "--workspace", str(ws)) == 0
    out_text = capsys.readouterr().out
    assert "computed features up to 2026-01-05T2" in out_text, out_text  # the hour after the last event
    assert (FeatureStoreConfig(workspace=ws).features_dir / "item_stats" / "2026-01-05.parquet").exists()

    bad = tmp_path / "bad.csv"
    bad.write_text("user_id,item_id,ts,label\nu,i,2026-01-05T00:00:00Z,2\n")
    assert run_cli("data", "load", str(bad), "--workspace", str(ws)) == 2
    assert "column 'label', row 0 (line 2)" in capsys.readouterr().err


def test_freshrank_data_import(shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "ml.parquet"
    assert run_cli("data", "import", "ml-100k", str(shared_data / "ml-100k"), "--out", str(out)) == 0
    assert pq.read_metadata(out).num_rows == 100_000
    assert "ml-100k: 100,000 events, 1997-09-20" in capsys.readouterr().out
