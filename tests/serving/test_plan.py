"""The serving plan and the shadow comparison, in-process: who a canary serves, what a
saved plan becomes after a crash, and what the comparison figures mean."""

from __future__ import annotations

import json

import numpy as np
import pytest

from protos.errors import InvalidInput
from serving.plan import ServingPlan, in_canary, load_plan, plan_path, save_plan
from serving.shadow import ShadowStats, compare_orders, merge_stats


def test_a_canary_takes_about_its_share_of_users_and_the_same_users_every_time():
    users = [f"user-{i}" for i in range(20_000)]
    inside = [u for u in users if in_canary(u, 0.1)]
    assert 0.09 < len(inside) / len(users) < 0.11
    assert inside == [u for u in users if in_canary(u, 0.1)]  # stable
    # growing the share keeps everyone already inside
    assert set(inside) <= {u for u in users if in_canary(u, 0.3)}


def test_the_plan_routes_canary_users_to_the_candidate_and_everyone_else_to_the_champion():
    plan = ServingPlan("base-1").next(candidate="base-2", phase="canary", share=0.5)
    for user in (f"u{i}" for i in range(200)):
        assert plan.base_for(user) == ("base-2" if in_canary(user, 0.5) else "base-1")
    shadow = ServingPlan("base-1").next(candidate="base-2", phase="shadow")
    assert {shadow.base_for(f"u{i}") for i in range(200)} == {"base-1"}


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"candidate": "base-2"}, "needs a phase"),
        ({"candidate": "base-1", "phase": "shadow"}, "already the champion"),
        ({"candidate": "base-2", "phase": "canary", "share": 0.0}, "canary_share"),
        ({"candidate": "base-2", "phase": "canary", "share": 0.8}, "canary_share"),
        ({"candidate": "base-2", "phase": "shadow", "share": 0.2}, "only for the canary"),
        ({"candidate": "base-2", "phase": "blue-green"}, "phase must be"),
    ],
)
def test_an_impossible_plan_is_refused(changes, message):
    with pytest.raises(InvalidInput, match=message):
        ServingPlan("base-1").next(**changes)


def test_every_action_gets_a_new_serial():
    plan = ServingPlan("base-1").next()
    assert plan.next().serial != plan.serial


def test_a_saved_plan_is_reloaded_when_the_registry_agrees(tmp_path):
    plan = ServingPlan("base-1").next(candidate="base-2", phase="canary", share=0.2, staged_at=5.0)
    save_plan(tmp_path, plan)
    assert load_plan(tmp_path, "base-1") == plan


def test_after_a_crash_between_registry_and_plan_the_registry_champion_wins(tmp_path):
    # promoted base-2 in the registry, crashed before the plan was written
    save_plan(tmp_path, ServingPlan("base-1").next(candidate="base-2", phase="canary", share=0.2))
    plan = load_plan(tmp_path, "base-2")
    assert plan.champion == "base-2" and plan.candidate == "" and plan.phase == ""
    # a champion promoted elsewhere (freshrank train) keeps an unrelated candidate staged
    save_plan(tmp_path, ServingPlan("base-1").next(candidate="base-3", phase="shadow"))
    plan = load_plan(tmp_path, "base-2")
    assert (plan.champion, plan.candidate, plan.phase) == ("base-2", "base-3", "shadow")


def test_an_unreadable_plan_means_the_registry_champion_alone(tmp_path):
    path = plan_path(tmp_path)
    path.parent.mkdir(parents=True)
    path.write_text("{torn")
    plan = load_plan(tmp_path, "base-7")
    assert (plan.champion, plan.candidate, plan.phase) == ("base-7", "", "")
    path.write_text(json.dumps({"champion": "base-7", "candidate": "base-7", "phase": "shadow"}))
    assert load_plan(tmp_path, "base-7").candidate == ""


def test_identical_scores_agree_fully_and_reversed_scores_disagree_fully():
    logits = np.array([2.0, 1.0, 0.0, -1.0, -2.0])
    assert compare_orders(logits, logits, top_k=2) == pytest.approx((1.0, 1.0, 0.0))
    overlap, spearman, diff = compare_orders(logits, -logits, top_k=2)
    assert overlap == 0.0 and spearman == pytest.approx(-1.0) and diff > 0.3


def test_merged_stats_are_means_over_the_current_serial_only():
    a, b, stale = ShadowStats(serial="s2"), ShadowStats(serial="s2"), ShadowStats(serial="s1")
    logits = np.array([1.0, 0.0, -1.0])
    a.add(logits, logits, 3, 1.0, 2.0)
    b.add(logits, -logits, 3, 3.0, 4.0)
    stale.add(logits, -logits, 3, 100.0, 100.0)
    merged = merge_stats([a.to_dict(), b.to_dict(), stale.to_dict()], "s2")
    assert merged["shadow_requests"] == 2
    assert merged["rank_correlation"] == pytest.approx(0.0)  # (1 + -1) / 2
    assert merged["champion_latency_ms_p50"] == pytest.approx(2.0)
    assert merged["candidate_latency_ms_p99"] < 100
