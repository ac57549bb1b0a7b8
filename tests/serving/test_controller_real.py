"""One real cycle on a real workspace: the only controller test that trains a base.

A simulated log, Feast applied and materialized, a first base trained and promoted
(``serving.pipeline.prepare_base``, in-process); then a day of served events reaches the
event log and ``freshrank run``'s controller judges the real triggers, computes and
materializes the features, trains the candidate in-process (``train_backend = "local"``,
``--no-promote``), reads its real gate status, and drives the in-memory app through shadow,
canary (rows as serving logs them) and promote.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pyarrow.compute as pc

from feature_store.event_log import write_event_log
from protos.registry import ModelRegistry
from serving.controller.command import make_trainer
from serving.controller.machine import Controller
from serving.controller.store import Store, controller_dir
from tests.serving.controller_kit import FAST, FakeClock, FakeServing, served_rows


def test_one_cycle_from_the_served_log_to_a_promoted_base(tmp_path: Path) -> None:
    from feature_store.simulate import SimulatorConfig, simulate
    from serving.pipeline import prepare_base, slice_events
    from serving.settings import load_settings

    settings = load_settings(
        workspace=tmp_path / "ws",
        overrides={
            "base_model": {"train_days": 2, "epochs": 1, "min_gain_vs_constant": -1.0,
                           "min_gain_vs_champion": -1.0},
            "controller": {**FAST, "every": "12h", "train_backend": "local"},
        },
    )
    events = simulate(SimulatorConfig(seed=3, days=4, impressions_per_day=3_000, n_users=300,
                                      items_per_day=100))
    start = events.column("ts")[0].as_py()
    as_of = (start + timedelta(days=3)).replace(hour=0, minute=0, second=0, microsecond=0)
    first = prepare_base(settings, events, as_of, backend="local")
    write_event_log(slice_events(events, as_of, None), settings.feature_store.events_dir)

    registry = ModelRegistry(settings.registry_dir)
    app = FakeServing(registry)
    newest = pc.max(events.column("ts")).as_py()

    def serve_canary(version: str, phase: str) -> None:
        if phase == "canary":
            for table in (served_rows(first.version, 200, 20, start=newest, seed=4, user_prefix="x"),
                          served_rows(version, 200, 20, start=newest, seed=4, user_prefix="y")):
                write_event_log(table, settings.feature_store.events_dir)

    app.on_stage = serve_canary
    clock = FakeClock()
    controller = Controller(settings, app, make_trainer(settings), clock=clock.now, sleep=clock.sleep)
    summary = controller.run_cycle()

    assert summary["outcome"] == "promoted", summary
    assert "schedule" in summary["triggers"]
    candidate = registry.get("base", summary["version"])
    assert candidate.parent == first.version  # warm-started from the champion
    assert candidate.lineage["trigger"]["reasons"] == summary["triggers"]  # why it trained
    champion = registry.champion("base")
    assert champion is not None and champion.version == candidate.version
    history = Store(controller_dir(settings.registry_dir)).history()
    triggers = next(e for e in history if e["event"] == "triggers")
    assert {c["kind"] for c in triggers["decision"]["checks"]} >= {"schedule", "new_data"}
    assert any(e["event"] == "features" for e in history)
    gate = next(e for e in history if e["event"] == "gate")
    assert gate["gates"]["offline_evaluation"]["passed"] is True
