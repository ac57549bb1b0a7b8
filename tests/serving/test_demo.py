"""`make demo` end to end at a small scale: simulate, features, a base fit (in-process here: Ray
Train's path is tests/base_model's), Serve gRPC, replay."""

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
    # Small enough to learn, publish and install weights within 300 requests: emit each
    # label as it arrives, publish every batch, readiness after 64 examples.
    settings = load_settings(
        None,
        workspace=str(workspace),
        overrides={
            "serving": {"grpc_port": 0, "http_port": 0, "metrics_port": 0, "weight_poll_seconds": 0.2},
            "online_layer": {
                "emit": "on_arrival",
                "batch_size": 64,
                "max_batch_delay_s": 0.2,
                "publish_every_batches": 1,
                "publish_every_s": 0.2,
                "readiness_min_examples": 64,
                "readiness_window": 2_000,
                "readiness_tolerance": 10.0,
                "readiness_auc_tolerance": 1.0,
            },
        },
    )
    options = DemoOptions(workspace=workspace, simulate_days=5, replay_days=1, seed=7, max_requests=300,
                          base_age_days=0, train_backend="local")  # Ray Train: tests/base_model
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
    # ... and then the learner's published weights reach the ranker: later responses carry
    # an online version, so fewer than all of them fell back.
    assert report.learner.published > 0
    assert report.served_online > 0 and report.online_versions
    assert sum(report.fallbacks.values()) < report.requests
    assert sum(report.fallbacks.values()) + report.served_online == report.requests
    assert report.first_online_request is not None and report.first_online_request > 0
    text = report.format()
    assert f"online weights served: {report.served_online:,} of 300 responses" in text
    for heading in ("logloss base", "logloss hybrid", "AUC base", "AUC hybrid", "Rank latency", "fallbacks"):
        assert heading in text
    assert any("promoted" in m for m in messages)
