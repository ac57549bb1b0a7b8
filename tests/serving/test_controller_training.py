"""How the controller trains a candidate and what a handle means after a restart: the
``python -m base_model.train --no-promote`` command line, the result it prints, and the
subprocess backend's resume rule, with real processes (no model is trained here)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from serving.cli import build_parser
from serving.controller.training import (
    LocalTrainer,
    ProcessTrainer,
    TrainingJob,
    outcome_from_output,
    train_arguments,
)
from serving.settings import load_settings

AS_OF = datetime(2026, 3, 2, 12, tzinfo=UTC)
RESULT = {"version": "base-0002", "status": "approved", "promoted": False, "metrics": {}}


def test_the_command_line_is_freshrank_trains_with_no_promote(tmp_path: Path) -> None:
    settings = load_settings(workspace=tmp_path, overrides={"base_model": {"epochs": 2, "hidden_layers": [8]}})
    args = train_arguments(settings, TrainingJob("c1", AS_OF), "local")
    parsed = build_parser().parse_args(["train", *args])
    assert parsed.no_promote and parsed.backend == "local"
    assert parsed.as_of == AS_OF.isoformat()
    assert parsed.registry == tmp_path / "registry" and parsed.workspace == tmp_path
    assert sorted(parsed.overrides) == ["epochs=2", "hidden_layers=[8]"]  # what differs from defaults
    assert parsed.trigger is None  # no decision: the lineage says manual


def test_the_decision_that_asked_for_a_training_reaches_the_subprocess(tmp_path: Path) -> None:
    decision = {"train": True, "reasons": ["schedule"], "summary": "schedule: 8 days old"}
    args = train_arguments(load_settings(workspace=tmp_path), TrainingJob("c1", AS_OF, decision), "ray")
    assert build_parser().parse_args(["train", *args]).trigger == decision


@pytest.mark.parametrize(
    ("text", "code", "status", "detail"),
    [
        ("progress\n" + json.dumps(RESULT) + "\n", 0, "trained", "approved"),
        (json.dumps({"status": "blocked", "reason": "freshness: stale"}), 3, "blocked", "freshness"),
        ("Traceback: boom", 1, "failed", "exit status 1"),
        ("", None, "gone", "left no result"),
    ],
)
def test_the_result_line_says_what_the_training_did(text: str, code: int | None, status: str, detail: str) -> None:
    outcome = outcome_from_output(text, code)
    assert outcome.status == status and detail in outcome.detail
    assert outcome.version == ("base-0002" if status == "trained" else None)


def handle_of(tmp_path: Path, pid: int, out: str) -> dict[str, object]:
    (tmp_path / "train.out").write_text(out)
    return {"pid": pid, "out": str(tmp_path / "train.out"), "err": str(tmp_path / "none.err")}


def finished_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def test_a_dead_controllers_finished_child_is_read_from_its_file(tmp_path: Path) -> None:
    trainer = ProcessTrainer(load_settings(workspace=tmp_path), tmp_path)
    outcome = trainer.poll(handle_of(tmp_path, finished_pid(), json.dumps(RESULT) + "\n"))
    assert outcome is not None and outcome.status == "trained" and outcome.version == "base-0002"


def test_a_child_that_left_nothing_is_gone(tmp_path: Path) -> None:
    trainer = ProcessTrainer(load_settings(workspace=tmp_path), tmp_path)
    outcome = trainer.poll(handle_of(tmp_path, finished_pid(), "epoch 1 of 4\n"))
    assert outcome is not None and outcome.status == "gone"


def test_a_live_training_child_is_waited_for_and_a_reused_pid_is_not(tmp_path: Path) -> None:
    trainer = ProcessTrainer(load_settings(workspace=tmp_path), tmp_path)
    training = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "base_model.train"])
    other = subprocess.Popen(["sleep", "60"])
    try:
        assert trainer.poll(handle_of(tmp_path, training.pid, "")) is None
        reused = trainer.poll(handle_of(tmp_path, other.pid, ""))
        assert reused is not None and reused.status == "gone"
    finally:
        for child in (training, other):
            child.kill()
            child.wait()


def test_the_subprocess_backend_runs_the_real_entry_point(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real ``python -m base_model.train`` on a workspace without events: it exits 2
    with its one-line reason, which becomes the outcome's detail."""
    settings = load_settings(workspace=tmp_path / "ws")
    trainer = ProcessTrainer(settings, tmp_path / "ctl", base_backend="local")
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).resolve().parents[2]))
    handle = trainer.start(TrainingJob("c1", AS_OF))
    deadline = time.monotonic() + 120
    while (outcome := trainer.poll(handle)) is None and time.monotonic() < deadline:
        time.sleep(0.5)
    assert outcome is not None and outcome.status == "failed", outcome
    assert "exit status 2" in outcome.detail and "has no event log" in outcome.detail
    assert "--no-promote" in handle["argv"]  # type: ignore[operator]


def test_an_in_process_training_of_another_controller_is_gone(tmp_path: Path) -> None:
    outcome = LocalTrainer(load_settings(workspace=tmp_path)).poll({"key": "old:c1", "pid": 1})
    assert outcome is not None and outcome.status == "gone"
