"""A controller killed at any step, then restarted on the same workspace, resumes or abandons
that step cleanly: the champion keeps serving throughout, nothing is promoted twice, and a
half-done admin call is re-issued or judged again (``serving.controller.machine``'s rules).

The kill is a ``Crash`` (a BaseException nothing catches) raised inside a call, before or
after the in-memory app did it; the restarted controller is a new ``Controller`` (and a new
trainer) on the same registry, talking to the same app."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.serving.controller_kit import Crash, FastTrainer, World, champion_of, schedule_check, world  # noqa: F401


def crash_once(fn: Callable[..., Any]) -> Callable[..., Any]:
    state = {"crashed": False}

    def wrapped(*args: Any) -> Any:
        if not state["crashed"]:
            state["crashed"] = True
            raise Crash(f"killed in {fn.__name__}")
        return fn(*args)

    return wrapped


def restart(w: World, trainer: FastTrainer | None = None) -> dict[str, Any]:
    w.app.crash_before.clear()
    w.app.crash_after.clear()
    return w.controller(trainer or FastTrainer(w.registry)).run_cycle()


# (name, how to arm the crash, expected outcome after the restart, calls the app saw)
CASES: list[tuple[str, Callable[[World], Any], str, dict[str, int]]] = [
    ("shadow: killed before the app staged it", lambda w: w.app.crash_before.update(stage_shadow=1),
     "promoted", {"stage_shadow": 1, "promote_base": 1}),
    ("shadow: killed after the app staged it, before the record",
     lambda w: w.app.crash_after.update(stage_shadow=1), "promoted", {"stage_shadow": 2, "promote_base": 1}),
    ("shadow: killed while judging", lambda w: w.app.crash_before.update(candidate_report=2),
     "promoted", {"stage_shadow": 1, "promote_base": 1}),
    ("canary: killed after the app staged it", lambda w: w.app.crash_after.update(stage_canary=1),
     "promoted", {"stage_canary": 2, "promote_base": 1}),
    ("canary: killed while judging", lambda w: w.app.crash_before.update(candidate_report=3),
     "promoted", {"stage_canary": 1, "promote_base": 1}),
    ("promote: killed before the call", lambda w: w.app.crash_before.update(promote_base=1),
     "promoted", {"promote_base": 1}),
    ("promote: killed after the app promoted", lambda w: w.app.crash_after.update(promote_base=1),
     "promoted", {"promote_base": 1}),
]


@pytest.mark.parametrize(("arm", "outcome", "calls"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_a_killed_controller_resumes_the_step_it_was_in(
    world: World, arm: Callable[[World], Any], outcome: str, calls: dict[str, int]  # noqa: F811
) -> None:
    arm(world)
    with pytest.raises(Crash):
        world.controller().run_cycle()
    if "promote_base" not in world.app.calls:  # only the promote call changes the champion
        assert champion_of(world) == world.champion
    summary = restart(world)
    assert summary["outcome"] == outcome, summary
    assert champion_of(world) == summary["version"] != world.champion
    for name, count in calls.items():
        assert world.app.calls.count(name) == count, (name, world.app.calls)
    assert len(world.registry.versions("base")) == 2  # trained once
    assert "resumed" in world.events()
    assert world.store.load()[0] is None


def test_killed_in_the_check_or_the_feature_refresh_reruns_it(world: World) -> None:  # noqa: F811
    controller = world.controller()
    controller._check = crash_once(schedule_check(True, world.checks))
    with pytest.raises(Crash):
        controller.run_cycle()
    assert world.store.load()[0].step == "check"  # type: ignore[union-attr]
    first = world.controller()
    first._refresh = crash_once(first._refresh)
    with pytest.raises(Crash):
        first.run_cycle()
    assert world.store.load()[0].step == "features"  # type: ignore[union-attr]
    assert restart(world)["outcome"] == "promoted"
    assert len(world.checks) == 1 and len(world.refreshes) == 1  # each completed once


def test_an_in_process_training_killed_with_its_controller_is_abandoned(world: World) -> None:  # noqa: F811
    with pytest.raises(Crash):
        world.controller(FastTrainer(world.registry, crash_in_start=True)).run_cycle()
    summary = restart(world)
    assert summary["outcome"] == "abandoned" and "no job to wait for" in summary["reason"]
    assert world.app.calls == [] and champion_of(world) == world.champion


def test_a_training_still_running_is_waited_for_by_the_restarted_controller(world: World) -> None:  # noqa: F811
    with pytest.raises(Crash):
        world.controller(FastTrainer(world.registry, running_polls=3, crash_in_poll=2)).run_cycle()
    trainer = FastTrainer(world.registry, running_polls=1)
    summary = restart(world, trainer)
    assert summary["outcome"] == "promoted"
    assert trainer.started == [] and trainer.polls == 2  # polled the old handle, trained nothing
    assert len(world.registry.versions("base")) == 2


def test_an_abort_cut_short_is_reissued(world: World) -> None:  # noqa: F811
    world.app.shadow_figures["top_k_overlap"] = 0.1
    world.app.crash_before.update(abort_candidate=1)
    with pytest.raises(Crash):
        world.controller().run_cycle()
    assert world.app.candidate  # still staged: the abort never reached the app
    summary = restart(world)
    assert summary["outcome"] == "aborted" and "top-k overlap 0.100" in summary["reason"]
    assert world.app.calls.count("abort_candidate") == 1 and not world.app.candidate
    assert champion_of(world) == world.champion


def test_a_candidate_the_app_lost_while_the_controller_was_down_ends_aborted(world: World) -> None:  # noqa: F811
    world.app.crash_before.update(candidate_report=3)  # in the canary, after it was staged
    with pytest.raises(Crash):
        world.controller().run_cycle()
    world.app.on_call_abort()  # the app restarted without its plan, or on-call aborted
    summary = restart(world)
    assert summary["outcome"] == "aborted" and "no longer stages" in summary["reason"]
    assert "promote_base" not in world.app.calls and champion_of(world) == world.champion


def test_the_controller_of_a_finished_cycle_starts_a_new_one(world: World) -> None:  # noqa: F811
    first = world.controller().run_cycle()
    second = world.controller(FastTrainer(world.registry), fired=False).run_cycle()
    assert first["cycle"] != second["cycle"] and second["outcome"] == "not_triggered"
    assert world.store.load()[1]["cycle"] == second["cycle"]  # type: ignore[index]

