"""Thompson-sampling exploration in Rank (``serving.exploration``): who explores, what the
sample shows, the propensity it logs, and the operator's switch (without Ray)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import numpy as np
import pytest

from online_layer.features import SLOTS, OnlineInputs
from online_layer.ftrl import FTRLProximal
from protos.errors import InvalidInput
from protos.freshrank.v1 import ranking_pb2 as pb
from serving.admin import Controls, audit_path, read_audit
from serving.config import ServingConfig
from serving.errors import InvalidRequest
from serving.exploration import (
    FOCUS,
    ExplorationPolicy,
    _hits,
    changed_policy,
    explore,
    explores,
    fill_exploration_status,
)
from serving.ingress import rpc
from serving.ranking import OnlineSlot
from serving.requests import AdminAction, parse_admin_request


def _world(n_items: int = 6, learned: int = 3) -> tuple[OnlineSlot, OnlineInputs]:
    """Items 0..learned-1 learned on (many impressions), the rest never seen; one hashed
    coordinate per item, no dense columns, equal base logits."""
    model = FTRLProximal(0, 8, "b", alpha=0.1, l1=0.0, prior_precision=1.0)
    seen = OnlineInputs(np.zeros(learned), np.zeros((learned, 0)), np.arange(learned)[:, None])
    rng = np.random.default_rng(0)
    for _ in range(300):
        model.learn_many(seen, (rng.random(learned) < 0.3).astype(np.float64))
    rows = OnlineInputs(np.zeros(n_items), np.zeros((n_items, 0)), np.arange(n_items)[:, None])
    return OnlineSlot(model, "ol-1", "b", 0.0), rows


def test_off_by_default_and_the_share_is_a_stable_hash_of_the_request_id() -> None:
    policy = ExplorationPolicy.of(ServingConfig())
    assert policy.enabled is False and not policy.applies("r-1")
    ids = [f"req-{i}" for i in range(20_000)]
    chosen = [explores(i, 0.1) for i in ids]
    assert 0.09 < np.mean(chosen) < 0.11
    assert chosen == [explores(i, 0.1) for i in ids]  # deterministic
    assert all(explores(i, 0.2) for i, c in zip(ids, chosen, strict=True) if c)  # nested shares
    assert ExplorationPolicy(enabled=True, share=1.0).applies("any")


def test_bad_settings_are_refused_naming_the_setting() -> None:
    for changes, name in (({"share": 1.5}, "share"), ({"slots": -1}, "slots"),
                          ({"scale": 0.0}, "scale"), ({"samples": 0}, "samples"),
                          ({"propensity_draws": -1}, "propensity_draws")):
        with pytest.raises(InvalidInput, match=f"exploration.{name}"):
            ExplorationPolicy(**changes)
    with pytest.raises(ValueError, match="explore_share"):
        ServingConfig(explore_share=2.0)
    with pytest.raises(ValueError, match="serving.explore_propensity_draws"):
        ServingConfig(explore_propensity_draws=5000)


def test_the_sample_ranks_and_the_propensity_matches_the_randomised_policy() -> None:
    slot, rows = _world()
    policy = ExplorationPolicy(enabled=True, share=1.0, samples=1024, propensity_draws=0)  # Monte Carlo
    mean = slot.score(rows)
    order, propensity = explore(slot, rows, mean, 3, policy, "request-7")
    again = explore(slot, rows, mean, 3, policy, "request-7")
    assert np.array_equal(order, again[0]) and np.array_equal(propensity, again[1])  # seeded by the id
    # The truth: the probability each shown item lands at its position, over fresh draws.
    draws = slot.model.sample_logits(rows, np.random.default_rng(123), n_samples=40_000)
    top = np.argsort(-draws, axis=1, kind="stable")[:, :3]
    truth = (top == order[None, :]).mean(axis=0)
    np.testing.assert_allclose(propensity[order], truth, atol=0.05)
    assert (propensity[order] > 0).all() and (propensity[order] < 1).all()


def test_new_items_reach_the_top_under_exploration_and_never_without_it() -> None:
    slot, rows = _world()
    # The learned items lead the mean by a margin; the new items trail at the base logit.
    lead = OnlineInputs(np.array([1.5, 1.5, 1.5, 0.0, 0.0, 0.0]), rows.dense, rows.sparse)
    mean = slot.score(lead)
    greedy_top = set(np.argsort(-mean, kind="stable")[:2].tolist())
    policy = ExplorationPolicy(enabled=True, share=1.0, samples=8, propensity_draws=0)
    shown_new = sum(
        bool(set(explore(slot, lead, mean, 2, policy, f"r{i}")[0].tolist()) - {0, 1, 2})
        for i in range(300)
    )
    assert not greedy_top - {0, 1, 2}
    assert shown_new > 100  # new items' posterior is the prior: wide, so they get shown


def test_only_the_last_slots_explore_and_the_head_keeps_propensity_one() -> None:
    slot, rows = _world()
    policy = ExplorationPolicy(enabled=True, share=1.0, slots=2, samples=64, propensity_draws=0)
    mean = slot.score(rows) + np.array([3.0, 2.0, 1.0, 0.0, 0.0, 0.0])
    order, propensity = explore(slot, rows, mean, 4, policy, "r")
    assert order[:2].tolist() == [0, 1] and (propensity[order[:2]] == 1.0).all()
    assert len(set(order.tolist())) == 4 and (propensity[order[2:]] < 1.0).all()


def test_set_exploration_requests_are_checked_at_the_door_naming_the_field() -> None:
    ok = parse_admin_request(pb.SetExplorationRequest(enabled=True, share=0.2, reason="r", actor="a"))
    assert ok.exploration == {"enabled": True, "share": 0.2}  # unset fields keep their value
    for bad, name in ((pb.SetExplorationRequest(enabled=True, share=1.5), "share"),
                      (pb.SetExplorationRequest(enabled=True, scale=0.0), "scale"),
                      (pb.SetExplorationRequest(enabled=True, samples=5000), "samples"),
                      (pb.SetExplorationRequest(enabled=True, propensity_draws=-1), "propensity_draws")):
        bad.reason, bad.actor = "r", "a"
        with pytest.raises(InvalidRequest, match=f"^{name} is"):
            parse_admin_request(bad)
    with pytest.raises(InvalidRequest, match="reason"):
        parse_admin_request(pb.SetExplorationRequest(enabled=True, actor="a"))


class _Context:
    """What Serve's ``RayServegRPCContext`` records."""

    code: grpc.StatusCode | None = None
    details: str = ""

    def set_code(self, code: grpc.StatusCode) -> None:
        self.code = code

    def set_details(self, details: str) -> None:
        self.details = details


class _Door:
    """The ingress's door for SetExploration (``serving.ingress.rpc``) over the real parser."""

    @rpc(parse=lambda self, request: parse_admin_request(request))
    async def SetExploration(self, action: AdminAction, grpc_context: _Context) -> pb.AdminReply:
        return pb.AdminReply(action="set_exploration", current=str(action.exploration))


@pytest.mark.parametrize("draws", [-1, 1025, 2**31 - 1, -(2**31)])
def test_propensity_draws_out_of_range_is_invalid_argument_naming_it_and_its_range(draws: int) -> None:
    request = pb.SetExplorationRequest(enabled=True, propensity_draws=draws, reason="r", actor="a")
    with pytest.raises(InvalidRequest, match=rf"^propensity_draws is {draws}: .*propensity_draws .*\[0, 1024\]"):
        parse_admin_request(request)
    context = _Context()
    asyncio.run(_Door().SetExploration(request.SerializeToString(), grpc_context=context))
    assert context.code == grpc.StatusCode.INVALID_ARGUMENT  # never INTERNAL
    assert context.details.startswith(f"propensity_draws is {draws}") and "[0, 1024]" in context.details


def test_propensity_draws_0_is_told_from_not_given_on_the_wire() -> None:
    def changes(**fields: int) -> dict[str, object] | None:
        wire = pb.SetExplorationRequest(enabled=True, reason="r", actor="a", **fields).SerializeToString()
        return parse_admin_request(pb.SetExplorationRequest.FromString(wire)).exploration

    assert changes(propensity_draws=0) == {"enabled": True, "propensity_draws": 0}  # 0: Monte Carlo
    assert changes(propensity_draws=1024) == {"enabled": True, "propensity_draws": 1024}
    assert changes() == {"enabled": True}  # not given: the running value stays
    context = _Context()
    reply = asyncio.run(_Door().SetExploration(
        pb.SetExplorationRequest(enabled=True, propensity_draws=0, reason="r", actor="a"), grpc_context=context))
    assert context.code is None and "'propensity_draws': 0" in reply.current


def test_left_out_propensity_draws_keeps_the_running_value_or_the_settings_at_first() -> None:
    config = ServingConfig(explore_propensity_draws=16)
    old, new = changed_policy(None, config, {"enabled": True, "share": 0.5})  # no operator policy yet
    assert (old.enabled, old.propensity_draws) == (False, 16) and (new.enabled, new.propensity_draws) == (True, 16)
    old, new = changed_policy(new.to_dict(), config, {"enabled": True, "propensity_draws": 0, "samples": 32})
    assert (new.propensity_draws, new.samples, new.share) == (0, 32, 0.5)  # the share kept
    assert new.describe().endswith("propensity_draws 0 (Monte Carlo, 32 samples)")
    _, off = changed_policy(new.to_dict(), config, {"enabled": False})
    assert off.describe() == "off" and off.propensity_draws == 0  # off keeps the estimator
    _, on = changed_policy(off.to_dict(), config, {"enabled": True})
    assert on == new  # back on as it was
    _, rb = changed_policy(on.to_dict(), config, {"enabled": True, "propensity_draws": 4})
    assert "propensity_draws 4 (Rao-Blackwellised)" in rb.describe()
    status = pb.StatusReply()
    fill_exploration_status(status, rb, 0)
    assert status.exploration_propensity_draws == 4 and status.exploration_samples == 32
    fill_exploration_status(status, on, 0)
    assert status.exploration_propensity_draws == 0


def test_the_policy_is_audited_and_a_restarted_learner_keeps_it(tmp_path: Path) -> None:
    audit = audit_path(tmp_path)
    controls = Controls(audit, enabled=True)
    assert controls.view(None)["exploration"] is None  # the config's until an operator acts
    policy = ExplorationPolicy(enabled=True, share=0.1, slots=2)
    record = controls.set_exploration(policy.to_dict(), "off", policy.describe(), "new items", "alice")
    assert record["action"] == "set_exploration" and record["policy"]["share"] == 0.1
    assert ExplorationPolicy.from_dict(controls.view(None)["exploration"]) == policy
    assert read_audit(audit)[-1]["current"].startswith("on: 0.1 of requests")
    assert ExplorationPolicy.from_dict(Controls(audit, enabled=True).exploration) == policy


def _hits_by_argsort(samples: np.ndarray, served: np.ndarray) -> np.ndarray:
    """The definition: per position, the draws whose stable descending order puts the
    served item there."""
    order = np.argsort(-samples, axis=1, kind="stable")[:, : served.size]
    return (order == served[None, :]).sum(axis=0)


@pytest.mark.parametrize("k", [1, 3, 7, 8])
def test_the_hit_count_by_sorted_values_equals_the_argsort_definition_ties_included(k: int) -> None:
    rng = np.random.default_rng(k)
    pool = 8
    for values in (rng.standard_normal((500, pool)),  # no ties
                   rng.integers(0, 4, (500, pool)).astype(np.float64)):  # ties in most draws
        served = np.argsort(-values[0], kind="stable")[:k]
        expected = _hits_by_argsort(values, served)
        assert np.array_equal(_hits(values, served), expected)
    assert expected.sum() > 0  # the comparison is not vacuous


def test_exploring_keeps_the_served_draw_and_counts_it_once_when_clipped() -> None:
    slot, rows = _world(n_items=40)
    clipped = OnlineSlot(slot.model, slot.version, slot.base_version, 0.0, max_correction=0.3)
    mean = clipped.score(rows)
    for top_k, slots in ((40, 0), (5, 0), (5, 2)):
        policy = ExplorationPolicy(enabled=True, share=1.0, slots=slots, samples=200, propensity_draws=0)
        order, propensity = explore(clipped, rows, mean, top_k, policy, "request-9")
        assert len(set(order.tolist())) == len(order) == top_k
        shown = propensity[order]
        assert (shown >= 1 / 201).all() and (shown <= 1).all()


def test_an_item_focus_explores_only_new_items_and_is_a_named_setting() -> None:
    slot, rows = _world(n_items=6, learned=3)
    assert FOCUS["item"] == (SLOTS.index("item"),) == (1,)
    # slot 0 (the bias) shared by every row and never learned: wide, but it moves them all
    rows = OnlineInputs(rows.base_logit, rows.dense, np.concatenate([np.full((6, 1), 200), rows.sparse], axis=1))
    noise = slot.model.sample_noise(rows, np.random.default_rng(1), n_samples=3000, columns=FOCUS["item"])
    spread = noise.std(axis=0)
    assert (spread[3:] > 0.9).all() and (spread[:3] < 0.5).all()  # learned items barely move
    everything = slot.model.sample_noise(rows, np.random.default_rng(1), n_samples=3000)
    assert (everything.std(axis=0)[:3] > 0.9).all()  # without the focus the shared weight moves them too
    policy = ExplorationPolicy(enabled=True, share=1.0, focus="item", samples=64, propensity_draws=0)
    order, propensity = explore(slot, rows, slot.score(rows), 6, policy, "request-3")
    assert sorted(order.tolist()) == list(range(6)) and (propensity[order] >= 1 / 65).all()
    assert "item weights only" in policy.describe()
    with pytest.raises(InvalidInput, match="exploration.focus"):
        ExplorationPolicy(focus="user")
    with pytest.raises(ValueError, match="serving.explore_focus"):
        ServingConfig(explore_focus="everything")
