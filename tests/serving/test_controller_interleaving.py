"""The canary's interleaving verdict: on real event-log tables (``interleave_team`` rows as the
compactor writes them), and in the controller's cycle against the in-memory app
(``controller_kit``), where it is a second single-look test beside the A/B bound."""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from feature_store.event_log import write_event_log
from protos.events import conform
from serving.controller.config import ControllerConfig
from serving.controller.staging import combine
from serving.controller.verdicts import Verdict, judge_canary, judge_interleaving
from serving.interleaving import CANDIDATE, CHAMPION, SHARED
from tests.serving.controller_kit import T0, FakeClock, World, champion_of, served_rows, world  # noqa: F401

CFG = ControllerConfig(interleave_min_users=150, canary_min_duration="10m",
                       canary_min_events=3_000, canary_margin=0.05, canary_bootstrap_samples=200)
LONG_ENOUGH = timedelta(minutes=15)


def interleaved_rows(champion: str, users: int, requests_per_user: int, *, candidate_ctr: float,
                     champion_ctr: float, seed: int = 0, user_prefix: str = "a") -> pa.Table:
    """Interleaved impressions of ``champion``'s log: per request 5 slots (one shared, two of
    each team, in a random order), each team's slots clicked at its own rate."""
    rng = np.random.default_rng(seed)
    n_req = users * requests_per_user
    teams = np.array([rng.permutation([SHARED, CHAMPION, CANDIDATE, CHAMPION, CANDIDATE])
                      for _ in range(n_req)]).reshape(-1)
    p = np.where(teams == CANDIDATE, candidate_ctr, np.where(teams == CHAMPION, champion_ctr, 0.5))
    n = teams.size
    request = np.repeat(np.arange(n_req), 5)
    return conform(pa.table({
        "user_id": [f"{user_prefix}{r // requests_per_user}" for r in request.tolist()],
        "item_id": [f"i{int(k)}" for k in rng.integers(0, 500, n)],
        "ts": pa.array([T0 + timedelta(seconds=int(s)) for s in np.sort(rng.integers(0, 3600, n))],
                       pa.timestamp("us", tz="UTC")),
        "label": (rng.random(n) < p).astype(np.float32),
        "request_id": [f"il-{user_prefix}-{r}" for r in request.tolist()],
        "base_version": [champion] * n,
        "final_score": np.full(n, 0.1, np.float32),
        "interleave_team": pa.array(teams, pa.int8()),
    }))


def test_users_preferring_the_candidates_picks_pass_it_with_the_figures() -> None:
    rows = interleaved_rows("base-0001", 300, 4, candidate_ctr=0.3, champion_ctr=0.15)
    verdict = judge_interleaving(rows, "base-0001", "base-0002", CFG, LONG_ENOUGH)
    assert verdict.decision == "pass", verdict.reason
    f = verdict.figures
    assert f["interleaved_requests"] == 1200
    assert f["candidate_wins"] > f["champion_wins"] and f["p_value"] < 0.05
    assert 0.5 < f["share_lower"] < f["candidate_share"] < f["share_upper"]


def test_users_preferring_the_champions_picks_fail_the_candidate() -> None:
    rows = interleaved_rows("base-0001", 300, 4, candidate_ctr=0.15, champion_ctr=0.3)
    verdict = judge_interleaving(rows, "base-0001", "base-0002", CFG, LONG_ENOUGH)
    assert verdict.decision == "fail" and "prefers the champion" in verdict.reason
    assert verdict.figures["share_upper"] < 0.5


def test_an_equal_candidate_shows_no_preference_and_passes() -> None:
    rows = interleaved_rows("base-0001", 300, 4, candidate_ctr=0.2, champion_ctr=0.2, seed=3)
    verdict = judge_interleaving(rows, "base-0001", "base-0002", CFG, LONG_ENOUGH)
    assert verdict.decision == "pass" and verdict.figures["p_value"] >= 0.05


def test_it_waits_for_its_users_and_the_canarys_duration_and_reads_only_interleaved_rows() -> None:
    rows = interleaved_rows("base-0001", 300, 4, candidate_ctr=0.15, champion_ctr=0.3)
    assert judge_interleaving(rows, "base-0001", "base-0002", CFG, timedelta(minutes=5)).decision == "wait"
    few = interleaved_rows("base-0001", 60, 4, candidate_ctr=0.15, champion_ctr=0.3)
    waited = judge_interleaving(few, "base-0001", "base-0002", CFG, LONG_ENOUGH)
    assert waited.decision == "wait" and "of 150 users" in waited.reason
    plain = served_rows("base-0001", 200, 10, seed=2)  # not interleaved: no team column
    assert judge_interleaving(plain, "base-0001", "base-0002", CFG, LONG_ENOUGH).figures[
        "interleaved_requests"] == 0
    other = interleaved_rows("base-0009", 300, 4, candidate_ctr=0.15, champion_ctr=0.3)
    assert judge_interleaving(other, "base-0001", "base-0002", CFG, LONG_ENOUGH).figures[
        "interleaved_requests"] == 0  # another champion's rows


def test_interleaved_requests_are_left_out_of_the_ab_groups() -> None:
    ab = pa.concat_tables([conform(served_rows("base-0001", 200, 20, seed=1, user_prefix="a")),
                           conform(served_rows("base-0002", 200, 20, seed=1, user_prefix="b"))])
    mixed = pa.concat_tables([ab, interleaved_rows("base-0001", 100, 4, candidate_ctr=0.9,
                                                   champion_ctr=0.0, user_prefix="a")])
    alone = judge_canary(ab, "base-0001", "base-0002", CFG, LONG_ENOUGH).figures
    beside = judge_canary(mixed, "base-0001", "base-0002", CFG, LONG_ENOUGH).figures
    assert alone == beside and alone["champion_rows"] == 4000


@pytest.mark.parametrize(
    ("ab", "interleaving", "decision"),
    [("pass", "pass", "pass"), ("pass", "wait", "wait"), ("wait", "pass", "wait"),
     ("pass", "fail", "fail"), ("fail", "wait", "fail"), ("wait", "wait", "wait")],
)
def test_the_canary_passes_only_when_both_tests_pass_and_fails_when_either_fails(
    ab: str, interleaving: str, decision: str
) -> None:
    combined = combine(Verdict(ab, f"ab {ab}", {"x": 1}), Verdict(interleaving, f"il {interleaving}", {"y": 2}))
    assert combined.decision == decision
    assert combined.figures == {"x": 1, "interleaving": {"y": 2}}


def _with_interleaving(world: World, candidate_ctr: float, champion_ctr: float) -> None:  # noqa: F811
    """The app also interleaves during the canary: the champion's group gets interleaved
    requests, written to the event log beside the A/B rows."""
    cfg = dataclasses.replace(world.settings.controller, interleave_min_users=150)
    world.settings = dataclasses.replace(world.settings, controller=cfg)
    serve_ab = world.app.on_stage

    def serve(version: str, phase: str) -> None:
        assert serve_ab is not None
        serve_ab(version, phase)
        if phase == "canary":
            rows = interleaved_rows(world.champion, 300, 4, candidate_ctr=candidate_ctr,
                                    champion_ctr=champion_ctr, user_prefix="a")
            write_event_log(rows, world.settings.feature_store.events_dir)

    world.app.on_stage = serve


def test_a_cycle_with_interleaving_promotes_a_preferred_candidate_with_both_verdicts(world: World) -> None:  # noqa: F811
    _with_interleaving(world, candidate_ctr=0.3, champion_ctr=0.15)
    summary = world.controller().run_cycle()
    assert summary["outcome"] == "promoted", summary
    canary = [e for e in world.store.history() if e["event"] == "verdict"][-1]
    figures: dict[str, Any] = canary["figures"]
    assert figures["champion_rows"] == 4000  # the A/B groups, interleaved rows left out
    assert figures["interleaving"]["candidate_wins"] > figures["interleaving"]["champion_wins"]
    assert "interleaving shows no preference for the champion" in canary["reason"]


def test_a_cycle_whose_users_prefer_the_champion_aborts_the_canary(world: World) -> None:  # noqa: F811
    _with_interleaving(world, candidate_ctr=0.1, champion_ctr=0.3)
    summary = world.controller().run_cycle()
    assert summary["outcome"] == "aborted" and "interleaving prefers the champion" in summary["reason"]
    assert "non-inferior" not in summary["reason"]  # the A/B passed; the interleaving failed it
    assert world.app.calls[-1] == "abort_candidate" and champion_of(world) == world.champion


class _LaterRows(FakeClock):
    """A clock whose sleep, once the A/B test has made its single look, writes more rows of
    both kinds (as live traffic goes on), and enough interleaved users to decide."""

    def __init__(self, world: World) -> None:  # noqa: F811
        super().__init__(world.clock.at)
        self.world = world
        self.written = False

    def sleep(self, seconds: float) -> None:
        super().sleep(seconds)
        current, _ = self.world.store.load()
        looks = ((current.staged if current else None) or {}).get("looks", {})
        if "ab" in looks and not self.written:
            self.written = True
            events_dir = self.world.settings.feature_store.events_dir
            candidate = str(current.version) if current else ""
            later = [served_rows(self.world.champion, 200, 20, seed=4, user_prefix="c"),
                     served_rows(candidate, 200, 20, seed=4, user_prefix="d", distortion=4.0)]
            later = [t.set_column(t.schema.get_field_index("request_id"), "request_id",  # new ids
                                  pa.array([f"later-{i}" for i in range(t.num_rows)]))
                     for t in later]
            for table in (*later, interleaved_rows(self.world.champion, 300, 4, candidate_ctr=0.3,
                                           champion_ctr=0.15, user_prefix="e")):
                write_event_log(table, events_dir)


def test_each_test_looks_once_the_ab_verdict_is_kept_while_the_interleaving_waits(world: World) -> None:  # noqa: F811
    _with_interleaving(world, candidate_ctr=0.3, champion_ctr=0.15)  # 300 users: ~230 decided
    world.settings = dataclasses.replace(world.settings, controller=dataclasses.replace(
        world.settings.controller, interleave_min_users=400))
    world.clock = _LaterRows(world)
    summary = world.controller().run_cycle()
    assert summary["outcome"] == "promoted", summary
    assert world.clock.written
    canary = [e for e in world.store.history() if e["event"] == "verdict"][-1]["figures"]
    # The A/B verdict is the first look's (4,000 rows a group), not a second look at the
    # later rows, whose candidate is clearly worse; the interleaving decided on the later users.
    assert canary["candidate_rows"] == canary["champion_rows"] == 4000
    assert canary["interleaving"]["interleaved_requests"] == 2400
