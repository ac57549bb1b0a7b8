"""`make demo` end to end at a small scale: simulate, features, Ray Train, Serve gRPC, replay."""

from __future__ import annotations

from pathlib import Path

import pytest

from serving.demo import DemoOptions, run_demo
from serving.settings import load_settings

pytestmark = pytest.mark.slow


def test_the_demo_replays_through_grpc_and_reports_base_and_hybrid_side_by_side(
    ray_cluster: None, tmp_path: Path
) -> None:
    workspace = tmp_path / "demo"
    settings = load_settings(None, workspace=str(workspace))
    options = DemoOptions(workspace=workspace, simulate_days=5, replay_days=1, seed=7, max_requests=300)
    messages: list[str] = []
    report = run_demo(settings, options, progress=messages.append)

    assert report.requests == 300
    assert report.latencies_ms.size == 300 and (report.latencies_ms > 0).all()
    assert report.base.version and report.base.train_rows > 0
    # Every replayed request's feedback reached the learner and was scored both ways.
    overall = report.learner.progressive
    assert overall.examples > 0
    assert overall.logloss_base > 0 and overall.logloss_hybrid > 0
    # Until the new layer passes its readiness check, serving says it is on the base alone.
    assert set(report.fallbacks) <= {"FALLBACK_REASON_ONLINE_ABSENT"}
    text = report.format()
    for heading in ("logloss base", "logloss hybrid", "AUC base", "AUC hybrid", "Rank latency", "fallbacks"):
        assert heading in text
    assert any("promoted" in m for m in messages)
