"""The controller's cycle: check -> features -> training -> gate -> shadow -> canary -> promote,
with every verdict recorded, against an in-memory app (``controller_kit.FakeServing``) over a
real registry and the workspace's real Parquet event log."""

from __future__ import annotations

from typing import Any

from tests.serving.controller_kit import FastTrainer, World, champion_of, world  # noqa: F401


def test_a_good_candidate_goes_through_every_step_and_is_promoted(world: World) -> None:  # noqa: F811
    summary = world.controller().run_cycle()
    assert summary["outcome"] == "promoted", summary
    candidate = summary["version"]
    assert champion_of(world) == candidate != world.champion
    assert summary["triggers"] == ["schedule"]
    stages = [c for c in world.app.calls if c.startswith("stage_") or c == "promote_base"]
    assert stages == ["stage_shadow", "stage_canary", "promote_base"]
    history = world.store.history()
    verdicts = [e for e in history if e["event"] == "verdict"]
    assert [v["step"] for v in verdicts] == ["shadow", "canary"]
    assert all(v["decision"] == "pass" for v in verdicts)
    canary = verdicts[1]["figures"]
    assert canary["candidate_rows"] == canary["champion_rows"] == 4000
    assert canary["bound_upper"] <= canary["margin"]
    steps = [e["reason"] for e in history if e["event"] == "next"]
    assert steps == ["check -> features", "features -> training", "training -> gate",
                     "gate -> shadow", "shadow -> canary", "canary -> promote"]
    current, last = world.store.load()
    assert current is None and last is not None and last["outcome"] == "promoted"


def test_no_trigger_no_training(world: World) -> None:
    summary = world.controller(fired=False).run_cycle()
    assert summary["outcome"] == "not_triggered"
    assert world.trainer.started == [] and world.refreshes == []
    assert champion_of(world) == world.champion


def test_a_rejected_candidate_stops_at_the_gate_and_never_serves(world: World) -> None:
    summary = world.controller(FastTrainer(world.registry, status="rejected")).run_cycle()
    assert summary["outcome"] == "rejected"
    assert "test: rejected" in summary["reason"]
    assert world.app.calls == [] and champion_of(world) == world.champion


def test_blocked_data_gates_end_the_cycle_blocked(world: World) -> None:
    summary = world.controller(FastTrainer(world.registry, status="blocked")).run_cycle()
    assert summary["outcome"] == "blocked" and "freshness" in summary["reason"]


def test_a_shadow_out_of_bounds_is_aborted_with_the_bound_it_broke(world: World) -> None:
    world.app.shadow_figures["rank_correlation"] = 0.05
    summary = world.controller().run_cycle()
    assert summary["outcome"] == "aborted"
    assert "rank correlation 0.050 < 0.3" in summary["reason"]
    assert world.app.calls[-1] == "abort_candidate" and "stage_canary" not in world.app.calls
    assert champion_of(world) == world.champion


def test_an_inferior_canary_is_aborted(world: World) -> None:
    world.canary_distortion = 4.0  # the candidate's odds are 4x too high
    summary = world.controller().run_cycle()
    assert summary["outcome"] == "aborted"
    assert "not shown non-inferior" in summary["reason"]
    assert summary["bound_upper"] > summary["margin"]
    assert world.app.calls[-1] == "abort_candidate" and "promote_base" not in world.app.calls
    assert champion_of(world) == world.champion


def test_a_canary_without_enough_rows_times_out_and_is_aborted(world: World) -> None:
    world.app.on_stage = None  # nothing reaches the event log
    summary = world.controller().run_cycle()
    assert summary["outcome"] == "aborted" and "canary timed out after 0:30:00" in summary["reason"]
    assert world.app.calls[-1] == "abort_candidate"


def test_a_shadow_that_never_gets_traffic_times_out(world: World) -> None:
    world.app.shadow_per_report = 0
    summary = world.controller().run_cycle()
    assert summary["outcome"] == "aborted" and "shadow timed out" in summary["reason"]


def test_on_call_abort_during_the_canary_ends_the_cycle(world: World) -> None:
    world.app.on_stage = lambda version, phase: world.app.on_call_abort() if phase == "canary" else None
    summary = world.controller().run_cycle()
    assert summary["outcome"] == "aborted"
    assert "no longer stages" in summary["reason"]
    assert champion_of(world) == world.champion


def test_an_unreachable_app_is_waited_for(world: World) -> None:
    world.app.unavailable = {"stage_shadow": 2, "candidate_report": 3, "promote_base": 1}
    summary = world.controller().run_cycle()
    assert summary["outcome"] == "promoted"
    waits = [e["reason"] for e in world.store.history() if e["event"] == "waiting"]
    assert any("UNAVAILABLE" in w for w in waits)


def test_a_refused_promote_aborts_the_canary(world: World) -> None:
    import grpc

    from tests.serving.controller_kit import FakeRpcError

    def refuse(reason: str, actor: str, base_version: str = "") -> Any:
        raise FakeRpcError(grpc.StatusCode.FAILED_PRECONDITION, "replicas disagree")

    world.app.promote_base = refuse  # type: ignore[method-assign]
    summary = world.controller().run_cycle()
    assert summary["outcome"] == "aborted" and "replicas disagree" in summary["reason"]
    assert world.app.calls[-1] == "abort_candidate"


def test_run_checks_every_interval_and_stops_after_max_cycles(world: World) -> None:
    started = world.clock.now()
    done = world.controller(fired=False).run(max_cycles=3)
    assert [d["outcome"] for d in done] == ["not_triggered"] * 3
    assert len(world.checks) == 3
    assert (world.clock.now() - started).total_seconds() == 2 * 3600  # check_every = 1h


def test_a_job_api_that_cannot_be_reached_fails_the_cycle_not_the_controller(world: World) -> None:  # noqa: F811
    from serving.controller.training import RayJobTrainer

    summary = world.controller(RayJobTrainer(world.settings, "http://127.0.0.1:1")).run_cycle()
    assert summary["outcome"] == "failed"
    assert "could not start the training" in summary["reason"]
    assert world.app.calls == [] and champion_of(world) == world.champion


def test_an_unexpected_error_while_staged_aborts_the_candidate(world: World) -> None:  # noqa: F811
    controller = world.controller()

    def unreadable(start: Any) -> Any:
        raise OSError(5, "Input/output error", str(world.settings.feature_store.events_dir))

    controller.events = unreadable
    summary = controller.run_cycle()
    assert summary["outcome"] == "aborted" and "canary: OSError" in summary["reason"]
    assert world.app.calls[-1] == "abort_candidate" and champion_of(world) == world.champion


def test_an_app_without_the_report_rpc_gets_its_candidate_aborted(world: World) -> None:  # noqa: F811
    import grpc

    from tests.serving.controller_kit import FakeRpcError

    def unimplemented() -> Any:
        raise FakeRpcError(grpc.StatusCode.UNIMPLEMENTED, "CandidateReport")

    world.app.candidate_report = unimplemented  # type: ignore[method-assign]
    summary = world.controller().run_cycle()
    assert summary["outcome"] == "aborted" and "app refused: UNIMPLEMENTED" in summary["reason"]
    assert world.app.calls == ["stage_shadow", "abort_candidate"] and not world.app.candidate
