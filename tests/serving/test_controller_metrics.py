"""The controller's Prometheus metrics are the ``controller`` rows of
infra/monitoring/metrics.txt, counted from real cycles' summaries, and served over HTTP."""

from __future__ import annotations

import urllib.request
from pathlib import Path

from serving.controller.metrics import METRICS, ControllerMetrics
from tests.serving.controller_kit import FastTrainer, World, world  # noqa: F401

LISTED = Path(__file__).resolve().parents[2] / "infra" / "monitoring" / "metrics.txt"


def test_the_metrics_are_the_controller_rows_of_the_one_list() -> None:
    rows = [line.split() for line in LISTED.read_text().splitlines() if line and not line.startswith("#")]
    assert {r[0] for r in rows if r[2] == "controller"} == set(METRICS)


def test_cycles_are_counted_by_what_came_of_them(world: World) -> None:  # noqa: F811
    metrics = ControllerMetrics()
    metrics.observe(world.controller().run_cycle())  # promoted
    metrics.observe(world.controller(FastTrainer(world.registry, status="rejected")).run_cycle())
    metrics.observe(world.controller(FastTrainer(world.registry, status="blocked")).run_cycle())
    metrics.observe(world.controller(fired=False).run_cycle())  # not a training run
    world.canary_distortion = 4.0
    metrics.observe(world.controller().run_cycle())  # aborted in the canary
    text = metrics.text()
    assert 'freshrank_base_train_runs_total{outcome="promoted"} 1.0' in text
    assert 'freshrank_base_train_runs_total{outcome="rejected"} 1.0' in text
    assert 'freshrank_base_train_runs_total{outcome="blocked"} 1.0' in text
    assert "freshrank_canary_aborted_total 1.0" in text
    assert "freshrank_base_train_last_success_timestamp_seconds 1.77" in text  # 2026-03


def test_the_metrics_are_served_over_http() -> None:
    metrics = ControllerMetrics()
    port = metrics.serve("127.0.0.1", 0)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        body = reply.read().decode()
    assert all(name in body for name in METRICS)
