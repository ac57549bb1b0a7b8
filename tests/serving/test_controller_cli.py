"""``freshrank run`` and the on-call commands of the live loop from the command line: the
one-controller lock (two real processes) and the record it leaves. Its argument errors are
rows of ``tests/serving/test_cli.py``'s table (one line on stderr, status 2)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from serving import cli
from serving.controller.store import ControllerBusy, ControllerLock, Store, controller_dir

REPO = Path(__file__).resolve().parents[2]



def test_run_once_on_an_empty_workspace_records_a_blocked_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Nothing to judge yet: the cycle ends at the check, says why, and never calls the app
    (the target does not listen)."""
    monkeypatch.delenv("FRESHRANK_CONFIG", raising=False)
    status = cli.main(["run", "--once", "--workspace", str(tmp_path), "--target", "127.0.0.1:1"])
    out, err = capsys.readouterr()
    assert status == 0, err
    summary = json.loads(out)
    assert summary["outcome"] == "blocked" and "no events" in summary["reason"]
    store = Store(controller_dir(tmp_path / "registry"))
    assert store.load() == (None, summary)
    assert [e["event"] for e in store.history()] == ["start", "blocked"]


HOLDER = textwrap.dedent(
    """
    import sys, time
    from serving.controller.store import ControllerLock
    with ControllerLock(sys.argv[1]):
        print("held", flush=True)
        time.sleep(120)
    """
)


def test_two_controllers_cannot_run_on_one_workspace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    directory = controller_dir(tmp_path / "registry")
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(directory)], stdout=subprocess.PIPE, text=True,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(ControllerBusy, match=f"pid {holder.pid}"):
            ControllerLock(directory).acquire()
        monkeypatch.delenv("FRESHRANK_CONFIG", raising=False)
        status = cli.main(["run", "--once", "--workspace", str(tmp_path)])
        out, err = capsys.readouterr()
        assert status == 2 and out == ""
        assert err.count("\n") == 1 and "another controller" in err and "Traceback" not in err
        assert not Store(directory).state_path.exists()  # the second one did nothing
    finally:
        holder.kill()
        holder.wait(timeout=30)
    with ControllerLock(directory):  # the kernel dropped the dead holder's lock
        pass


def test_a_history_line_torn_by_a_crash_is_skipped(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.record("c1", "check", "start", "cycle started", figure=float("nan"))
    with open(store.history_path, "a", encoding="utf-8") as f:
        f.write('{"at": "2026-')  # killed mid-write
    (entry,) = store.history()
    assert entry["event"] == "start" and entry["figure"] is None  # NaN is not JSON


def test_the_ray_job_entry_point_is_freshrank_run() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "serving.controller", "--help"], capture_output=True, text=True,
        timeout=120, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "python -m serving.controller" in done.stdout
    for flag in ("--once", "--max-cycles", "--target", "--job-address", "--token-file"):
        assert flag in done.stdout


def test_the_controller_section_is_read_from_the_one_settings_file(tmp_path: Path) -> None:
    from serving.settings import load_settings

    config = tmp_path / "freshrank.toml"
    config.write_text('[controller]\nevery = "2d"\ncanary_share = 0.2\ntrain_backend = "process"\n')
    settings = load_settings(config, workspace=tmp_path)
    assert settings.controller.duration("every").days == 2
    assert settings.controller.canary_share == 0.2
    assert settings.with_overrides({"controller": {"canary_share": 0.05}}).controller.canary_share == 0.05
    with pytest.raises(ValueError, match=r"canary_share must be in \(0, 0.5\]"):
        settings.with_overrides({"controller": {"canary_share": 0.9}})
    with pytest.raises(ValueError, match="train_backend must be one of ray, process, local"):
        settings.with_overrides({"controller": {"train_backend": "slurm"}})
