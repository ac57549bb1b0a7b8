"""The side doors of live learning hold like the front one.

* A warm-start replay (``learn_replay``, ``rebase(replay=...)``) is screened by the guard,
  flood-checked and judged by the breaker exactly like live feedback; while the guard is on
  a replay must say who was shown what.
* ``RegistrySnapshotSink`` never persists a snapshot published while the breaker was not
  closed or was judging a losing run: when it trips, the online champion (what a restart
  loads) is still a snapshot from before the losing run.
* The join's memory of closed request ids is bounded in count and in bytes, whatever the
  ids' length.
"""

from __future__ import annotations

import tracemalloc
from datetime import timedelta

import numpy as np

from online_layer.join import FeedbackJoiner
from online_layer.learner import OnlineLearner, ReplayBatch
from online_layer.synthetic import SyntheticWorld
from tests.online_layer.ol_helpers import START, FakeClock, world_for
from tests.online_layer.test_learner_defences import (
    BREAKER,
    coldest_item,
    correction_of,
    slate_record,
)


def replay_of(world: SyntheticWorld, n: int, start=START) -> list[ReplayBatch]:  # noqa: ANN001
    """``n`` logged requests of the world's (real) users, featurized, as replay batches."""
    out = []
    for record, events in world.stream(n, start):
        labels = np.array([e["label"] for e in events])
        out.append(ReplayBatch(
            world.base_version, record.inputs, labels,
            positions=np.array([e["position"] for e in events]),
            user_ids=np.full(len(events), record.user_id, dtype=object),
            item_ids=np.asarray(record.item_ids, dtype=object),
        ))
    return out


def campaign_replay(world: SyntheticWorld, target: int, bots: int) -> list[ReplayBatch]:
    """Made-up users each shown the target among 7 others, clicking only the target."""
    rng = np.random.default_rng(7)
    out = []
    for b in range(bots):
        others = rng.choice([i for i in range(len(world.items)) if i != target], 7, replace=False)
        record = slate_record(world, f"bot-{b}", f"bot{b}", int(rng.integers(0, 200)),
                              [target, *others.tolist()], START)
        labels = np.array([1.0] + [0.0] * 7)
        out.append(ReplayBatch(
            world.base_version, record.inputs, labels, positions=np.arange(8),
            user_ids=np.full(8, record.user_id, dtype=object),
            item_ids=np.asarray(record.item_ids, dtype=object),
        ))
    return out


# -- warm-start replay -------------------------------------------------------------------------


def test_a_replay_that_does_not_say_who_clicked_is_refused_while_the_guard_is_on(
    make_learner,
) -> None:
    learner = make_learner()
    world = world_for(learner, seed=1)
    anonymous = [ReplayBatch(b.base_version, b.inputs, b.labels, b.positions)
                 for b in replay_of(world, 20)]
    assert learner.learn_replay(anonymous) == 0
    assert learner.report().rejected_batches == {"schema_skew": 20}
    assert learner.report().examples_learned == 0
    unguarded = make_learner(guard={"enabled": False})
    assert unguarded.learn_replay(anonymous) > 0  # without the guard nobody needs naming


def test_a_campaign_inside_a_replay_is_quarantined_like_live_feedback(make_learner) -> None:
    results = {}
    for guarded in (True, False):
        learner = make_learner(emit="on_arrival", label_rate_min_events=10**9,
                               guard={"enabled": guarded})
        world = world_for(learner, seed=5)
        target = coldest_item(world)
        batches = replay_of(world, 300)
        campaign = campaign_replay(world, target, 400)
        mixed = [b for pair in zip(campaign, batches + batches[:100], strict=False) for b in pair]
        learner.learn_replay(mixed)
        results[guarded] = (correction_of(learner, world, target), learner.report())
    (with_guard, report), (without, _) = results[True], results[False]
    print(f"campaign in a replay: target correction {with_guard:+.3f} logit with the guard, "
          f"{without:+.3f} without; quarantined {report.quarantined}")
    assert report.quarantined.get("coordinated_burst", 0) > 0.8 * 400 * 8
    assert report.warm_start_examples == report.examples_learned  # only kept rows count
    assert without > 0.5  # the campaign works on an unguarded replay ...
    assert with_guard < 0.1 * without  # ... and not through the guard


def test_a_losing_replay_trips_the_breaker(make_learner, clock: FakeClock) -> None:
    learner = make_learner(emit="on_arrival", publish_every_batches=1, breaker=BREAKER,
                           readiness_min_examples=300, label_rate_min_events=10**9)
    world = world_for(learner, seed=3, trend_scale=1.5)
    for batch in replay_of(world, 600):
        learner.learn_replay([batch])
        clock.now += 0.05
    assert learner.report().breaker_state == "closed"
    assert learner.latest_snapshot() is not None
    opened = learner.report().breaker_transitions.get("closed->open", 0)
    rollbacks = learner.report().breaker_rollbacks
    world.trend = -world.trend  # a replay of a world that turned: the layer now loses
    for batch in replay_of(world, 1500, START + timedelta(hours=1)):
        learner.learn_replay([batch])
        clock.now += 0.05
        if learner.report().breaker_state == "open":
            break
    report = learner.report()
    assert report.breaker_state == "open", report.breaker_reason
    assert report.breaker_transitions["closed->open"] == opened + 1
    assert report.breaker_rollbacks == rollbacks + 1
    assert learner.latest_snapshot() is None


# -- the registry snapshot sink and the breaker ------------------------------------------------


def test_the_online_champion_is_a_snapshot_from_before_the_losing_run(
    make_learner, clock: FakeClock, tmp_path
) -> None:
    from protos.registry import ModelRegistry
    from serving.snapshots import RegistrySnapshotSink, champion_snapshot

    registry = ModelRegistry(tmp_path / "registry")
    (tmp_path / "base").mkdir()
    base = registry.register("base", tmp_path / "base", {
        "data_window": {}, "feature_service": "test", "parent": None, "code_version": "test",
        "metrics": {}})
    sink = RegistrySnapshotSink(registry, "test", min_interval_s=0.0, clock=clock)
    learner: OnlineLearner = make_learner(sink, base, emit="on_arrival", publish_every_batches=1,
                                          keep_snapshots=20, breaker=BREAKER,
                                          readiness_min_examples=300,
                                          label_rate_min_events=10**9)
    world = world_for(learner, seed=3, trend_scale=1.5)
    for record, events in world.stream(600, START):
        learner.record_served(record)
        learner.add_feedback(events)
        clock.now += 0.05
    assert registry.champion("online") is not None
    world.trend = -world.trend  # the world turns: the layer now loses
    for record, events in world.stream(1500, START + timedelta(hours=1)):
        learner.record_served(record)
        learner.add_feedback(events)
        clock.now += 0.05
        if learner.report().breaker_state == "open":
            break
    losing_since = learner._safety.breaker.losing_since
    assert learner.report().breaker_state == "open" and losing_since is not None
    champion = registry.champion("online")
    assert champion is not None
    assert champion.lineage["published_at"] < losing_since  # from before the losing run
    assert champion.lineage["breaker"] == {"state": "closed", "losing_since": None}
    # Every ready snapshot published during the losing run was offered and withheld.
    during = [s for s in learner._layer.publishing.ready_history if s.published_at >= losing_since]
    assert sink.withheld >= len(during) >= 1
    assert all(v.lineage["published_at"] < losing_since for v in registry.versions("online"))
    # What a restart loads is that champion.
    resumed = champion_snapshot(registry, learner.base_version)
    assert resumed is not None and resumed[0] == champion.lineage["learner_version"]


# -- the join's memory -------------------------------------------------------------------------


def test_the_memory_of_closed_request_ids_is_bounded_whatever_their_length(make_learner) -> None:
    learner = make_learner(emit="on_arrival", max_pending_requests=10, max_closed_requests=1_000)
    world = world_for(learner, seed=2)
    joiner: FeedbackJoiner = learner._intake.joiner
    tracemalloc.start()
    try:
        start = first = 0
        per_id = float("inf")
        for n, (record, _) in enumerate(world.stream(3_000, START)):
            long_id = f"{n:08d}" + "x" * 500  # 508 characters: under max_id_chars
            learner.record_served(type(record)(long_id, record.user_id, record.request_time,
                                               record.base_version, record.item_ids,
                                               record.inputs))
            if n == 10:
                start = tracemalloc.get_traced_memory()[0]
            if n == 1_010:  # 1,000 more closed: the bound reached
                per_id = (tracemalloc.get_traced_memory()[0] - start) / 1_000
            if n == 1_499:
                first = tracemalloc.get_traced_memory()[0]
        last = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert joiner.closed_remembered == 1_000  # the bound, once 2,990 windows closed early
    print(f"closed request ids: {per_id:.0f} bytes each (508-character ids)")
    assert per_id < 400  # a digest (a 508-character id alone is 557 bytes)
    assert last - first < 200_000  # flat once bounded
    # A closed id is still known (its late feedback is dropped, not refused as unknown).
    recent = f"{2_500:08d}" + "x" * 500  # closed (the last 10 are still open), remembered
    events = [{"request_id": recent, "user_id": "u1", "item_id": "i1", "ts": START,
               "label": 0.0, "position": 0}]
    result = learner.add_feedback(events)
    assert result.rejected is None and result.dropped == 1, result
