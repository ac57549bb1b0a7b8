"""The learner service: join window, mini-batches by size and time, progressive
validation, publishing, rebase onto a new base, replay, rollback."""

from __future__ import annotations

import time
from datetime import timedelta

import numpy as np
import pytest

from tests.online_layer.ol_helpers import START, FakeClock, feed, synthetic_user, world_for
from online_layer import load_snapshot, read_snapshot_header
from online_layer.errors import BaseVersionMismatch, InputError, ServedRecordError
from online_layer.learner import OnlineLearner, ReplayBatch


def event(record, row: int, label: float, when, position: int | None = None) -> dict:
    e = {
        "request_id": record.request_id,
        "user_id": record.user_id,
        "item_id": record.item_ids[row],
        "ts": when,
        "label": label,
    }
    if position is not None:
        e["position"] = position
    return e


# -- learning from a stream -----------------------------------------------------------------


def test_the_layer_beats_the_base_on_a_drifting_world(make_learner) -> None:
    learner = make_learner()
    world = world_for(learner, seed=3)
    feed(learner, world, 900)  # day one
    feed(learner, world, 900, start=START + timedelta(days=1))
    learner.flush(close_pending=True)
    report = learner.report()
    assert report.examples_learned == 2 * 900 * 8 and report.rejected_batches == {}
    assert [d.day for d in report.progressive_by_day] == ["2026-03-01", "2026-03-02"]
    day1, day2 = report.progressive_by_day
    assert day1.examples == day2.examples == 900 * 8
    assert report.progressive.logloss_hybrid < report.progressive.logloss_base
    assert day2.auc_hybrid > day2.auc_base + 0.03
    assert report.readiness.ready, report.readiness.reason
    assert report.examples_per_s > 0 and report.nonzero_weights > 0


def test_each_batch_is_scored_before_it_is_learned(make_learner) -> None:
    learner = make_learner(batch_size=64)
    world = world_for(learner)
    feed(learner, world, 8)  # 64 examples, clicks learned at once, the rest pending
    learner.flush(close_pending=True)
    first = learner.report().progressive
    # The first examples met zero weights: hybrid == base exactly.
    assert first.examples == 64
    assert first.logloss_hybrid == pytest.approx(first.logloss_base, abs=0)
    # ... and were then learned: the weights moved off zero.
    assert learner.model.nnz() > 0 and learner.model.n_examples == 64


def test_batches_by_size(make_learner) -> None:
    learner = make_learner(batch_size=50, emit="on_arrival")  # labels are final
    world = world_for(learner)
    feed(learner, world, 25)  # 200 examples
    assert learner.report().batches_learned == 4
    assert learner.report().pending_examples == 0
    assert learner.model.n_updates == 4 and learner.model.n_examples == 200  # reached the model


def test_batches_by_time(make_learner, clock: FakeClock) -> None:
    learner = make_learner(batch_size=1000, emit="on_arrival", max_batch_delay_s=2.0)
    world = world_for(learner)
    feed(learner, world, 3)
    assert learner.report().batches_learned == 0 and learner.report().pending_examples == 24
    clock.now += 1.0
    assert learner.tick() == 0
    clock.now += 1.5
    assert learner.tick() == 1
    assert learner.report().examples_learned == 24
    assert learner.model.n_examples == 24 and learner.model.nnz() > 0


def test_an_impression_waits_for_its_click_within_the_window(make_learner) -> None:
    learner = make_learner(join_window_s=60.0, emit="window_close")
    world = world_for(learner)
    record = world.request(START)
    learner.record_served(record)
    learner.add_feedback([event(record, 0, 0.0, START), event(record, 1, 0.0, START)])
    learner.add_feedback([event(record, 1, 1.0, START + timedelta(seconds=50))])  # late click
    learner.tick(event_time=START + timedelta(seconds=61))  # the window closes
    learner.flush()
    report = learner.report()
    assert report.examples_learned == 2 and report.progressive.positives == 1
    assert learner.model.n_examples == 2  # they reached the model
    # A click after the window closed is dropped, not learned and not rejected.
    result = learner.add_feedback([event(record, 0, 1.0, START + timedelta(seconds=70))])
    assert result.dropped == 1 and learner.report().dropped_rows == {"late": 1}


def test_on_arrival_learns_feedback_at_once_and_a_repeat_is_a_duplicate(make_learner) -> None:
    learner = make_learner(batch_size=2, emit="on_arrival")
    world = world_for(learner)
    record = world.request(START)
    learner.record_served(record)
    result = learner.add_feedback([event(record, 2, 1.0, START), event(record, 3, 0.0, START)])
    assert result.batches_learned == 1 and learner.report().progressive.positives == 1
    assert learner.model.n_examples == 2
    # The label of item 3 was final: a later click for it is a duplicate, not learned.
    late_click = learner.add_feedback([event(record, 3, 1.0, START + timedelta(seconds=9))])
    assert late_click.dropped == 1 and learner.report().dropped_rows == {"duplicate": 1}


def test_window_close_learns_nothing_before_the_window_closes(make_learner) -> None:
    learner = make_learner(batch_size=1, join_window_s=300.0)
    world = world_for(learner)
    record = world.request(START)
    learner.record_served(record)
    assert learner.add_feedback([event(record, 2, 1.0, START)]).batches_learned == 0
    assert learner.tick(event_time=START + timedelta(seconds=299)) == 0
    assert learner.model.n_examples == 0
    assert learner.tick(event_time=START + timedelta(seconds=300)) == 1
    assert learner.model.n_examples == 1


def test_implicit_negatives_learn_shown_items_without_feedback(make_learner) -> None:
    learner = make_learner(join_window_s=10.0, implicit_negatives=True)
    world = world_for(learner)
    record = world.request(START)
    learner.record_served(record)
    learner.add_feedback([event(record, 0, 1.0, START)])
    learner.flush(close_pending=True)
    report = learner.report()
    assert report.examples_learned == len(record.item_ids)
    assert report.progressive.positives == 1
    assert learner.model.n_examples == len(record.item_ids)


def test_the_logged_position_is_learned_and_the_rank_token_is_served(make_learner) -> None:
    learner = make_learner(batch_size=1, emit="on_arrival")
    world = world_for(learner)
    record = world.request(START)
    learner.record_served(record)
    learner.add_feedback([event(record, 0, 1.0, START, position=4)])
    f = learner.featurizer
    w = learner.model.weights()
    n_dense = f.n_dense
    assert w[n_dense + f.position_indices(np.array([4]), 1)[0]] != 0.0
    assert w[n_dense + f.rank_position_index] == 0.0


def test_a_replay_buffer_mixes_older_examples_into_each_batch(make_learner) -> None:
    def run() -> OnlineLearner:
        learner = make_learner(replay_fraction=0.5, replay_capacity=500, seed=7)
        feed(learner, world_for(learner), 40)
        learner.flush(close_pending=True)
        return learner

    a, b = run(), run()
    report = a.report()
    assert report.replay_buffer_examples > 0
    assert report.examples_learned == 40 * 8  # replayed rows are extra, not counted twice
    assert a.model.n_examples == 40 * 8 + report.replay_buffer_examples  # ... but learned
    assert a.model.nnz() > 0
    assert a.model.snapshot() == b.model.snapshot()  # seeded: deterministic


def test_the_numpy_and_cython_learners_agree(make_learner) -> None:
    cython, numpy = make_learner(), make_learner(implementation="numpy")
    for learner in (cython, numpy):
        feed(learner, world_for(learner, seed=5), 60)
        learner.flush(close_pending=True)
    np.testing.assert_allclose(cython.model.weights(), numpy.model.weights(), rtol=0, atol=1e-9)
    # Agreement on zero weights would prove nothing: both learned, and scores moved.
    assert cython.model.nnz() == numpy.model.nnz() > 0
    probe = world_for(cython, seed=6).request(START).inputs
    assert not np.allclose(cython.model.predict_many(probe), probe.base_logit)


# -- publishing ------------------------------------------------------------------------------


def test_snapshots_are_published_to_the_sink_every_n_batches(make_learner) -> None:
    published: list[tuple[str, bytes, dict]] = []
    learner = make_learner(sink=lambda v, b, lin: published.append((v, b, lin)),
                           emit="on_arrival", publish_every_batches=3)
    feed(learner, world_for(learner), 48)  # 384 examples = 6 batches of 64
    assert [v for v, _, _ in published] == ["ol-base-1-g0-000001", "ol-base-1-g0-000002"]
    version, blob, lineage = published[-1]
    header = read_snapshot_header(blob)
    assert header.base_version == "base-1" and header.metadata["version"] == version
    assert header.metadata["layout"] == learner.featurizer.layout()
    assert lineage["parent_version"] == "ol-base-1-g0-000001"
    assert lineage["base_version"] == "base-1" and lineage["examples_learned"] == 384
    assert lineage["data_window"] == {"first_day": "2026-03-01", "last_day": "2026-03-01"}
    restored = load_snapshot(blob, "base-1", expected_layout=learner.featurizer.layout())
    assert np.array_equal(restored.weights(), learner.model.weights())
    assert restored.nnz() > 0 and restored.n_examples == 384


def test_snapshots_are_published_every_t_seconds(make_learner, clock: FakeClock) -> None:
    learner = make_learner(emit="on_arrival", publish_every_batches=100, publish_every_s=5.0)
    feed(learner, world_for(learner), 8)
    assert learner.report().published == 0
    clock.now += 5.0
    learner.tick()
    assert learner.report().published == 1


def test_serving_gets_nothing_until_the_layer_is_ready(make_learner) -> None:
    learner = make_learner(emit="on_arrival", publish_every_batches=1,
                           readiness_min_examples=1_000)
    world = world_for(learner, seed=2)
    feed(learner, world, 40)  # 320 examples: published, but not ready
    assert learner.report().published > 0
    assert learner.latest_snapshot() is None and learner.latest_version() is None
    assert learner.latest_snapshot(include_unready=True) is not None
    feed(learner, world, 400, start=START + timedelta(hours=1))
    snapshot = learner.latest_snapshot()
    assert snapshot is not None and snapshot.ready and learner.latest_version() == snapshot.version
    assert load_snapshot(snapshot.blob, "base-1").nnz() > 0  # what serving gets was learned


def test_publish_latency_is_measured_from_feedback_arrival(make_learner, clock: FakeClock) -> None:
    learner = make_learner(emit="on_arrival", publish_every_batches=1)
    world = world_for(learner)
    feed(learner, world, 7)  # 56 examples: one short of a batch
    clock.now += 0.25
    feed(learner, world, 1, start=START + timedelta(minutes=1))  # completes it; publishes
    snap = learner.latest_snapshot(include_unready=True)
    assert snap.published_at == clock.now
    assert snap.published_at - snap.feedback_newest == 0.0
    assert snap.published_at - snap.feedback_oldest == pytest.approx(0.25)
    assert learner.report().publish_latency_p95_s == pytest.approx(0.25)


def test_a_failing_sink_never_stops_learning(make_learner) -> None:
    def broken(version: str, blob: bytes, lineage: dict) -> None:
        raise OSError("registry disk full")

    learner = make_learner(sink=broken, emit="on_arrival", publish_every_batches=1)
    feed(learner, world_for(learner), 24)
    report = learner.report()
    assert report.batches_learned == 3 and report.sink_failures == 3
    assert learner.model.n_examples == 24 * 8 and learner.model.nnz() > 0


# -- a new base version ------------------------------------------------------------------------


def test_rebase_retires_the_old_layer_and_serves_the_base_alone(make_learner) -> None:
    learner = make_learner(publish_every_batches=1)
    old_world = world_for(learner)
    feed(learner, old_world, 200)
    assert learner.latest_snapshot() is not None
    old_blob = learner.latest_snapshot().blob
    assert load_snapshot(old_blob, "base-1").nnz() > 0  # the old layer had learned
    pending = old_world.request(START + timedelta(seconds=200))
    learner.record_served(pending)
    late = old_world.feedback(pending, START + timedelta(seconds=201))
    learner.add_feedback(late)  # joined, waiting for its window when the base changes

    report = learner.rebase("base-2")
    assert report.base_version == "base-2" and report.generation == 1
    assert report.examples_learned == 0 and report.dropped_rows["retired"] >= len(late)
    assert learner.latest_snapshot() is None and learner.latest_snapshot(include_unready=True) is None
    probe = pending.inputs
    assert np.array_equal(learner.model.predict_many(probe), probe.base_logit)
    with pytest.raises(BaseVersionMismatch):
        learner.model.restore(old_blob, "base-2")
    # Late feedback for the old base is dropped; new traffic on the old base is refused.
    assert learner.add_feedback(late).dropped == len(late)
    stray = old_world.request(START + timedelta(hours=1))
    learner.record_served(stray)
    assert learner.add_feedback(old_world.feedback(stray, START)).rejected == "base_version"
    with pytest.raises(InputError):
        learner.rebase("base-2")


def test_a_new_layer_is_warm_started_by_replay_and_earns_readiness(make_learner) -> None:
    learner = make_learner(readiness_min_examples=1_500)
    old = world_for(learner, seed=4)
    feed(learner, old, 50)
    # The lead re-scores recent events with the new base and hands them over featurized.
    new_world = world_for(learner, seed=4)
    new_world.base_version = "base-2"
    replay = []
    for record, events in new_world.stream(300, START):
        replay.append(ReplayBatch(
            "base-2", record.inputs, np.array([e["label"] for e in events]),
            positions=np.array([e["position"] for e in events]),
            event_time=np.full(len(events), np.datetime64(START.replace(tzinfo=None), "us")),
            user_ids=np.full(len(events), record.user_id, dtype=object),
            item_ids=np.asarray(record.item_ids, dtype=object),
        ))
    report = learner.rebase("base-2", replay=replay)
    assert report.warm_start_examples == 300 * 8 and report.examples_learned == 300 * 8
    assert report.readiness.ready, report.readiness.reason
    snapshot = learner.latest_snapshot()
    assert snapshot is not None and snapshot.base_version == "base-2"
    warm = load_snapshot(snapshot.blob, "base-2")
    assert warm.nnz() > 0 and warm.n_examples == 300 * 8  # the replay was learned
    assert snapshot.version.startswith("ol-base-2-g1-")


def test_rollback_restores_the_last_ready_snapshot(make_learner) -> None:
    learner = make_learner(publish_every_batches=1, readiness_min_examples=200)
    world = world_for(learner, seed=2)
    feed(learner, world, 300)
    good = learner.latest_snapshot()
    assert good is not None
    feed(learner, world, 40, start=START + timedelta(hours=2))
    assert learner.model.snapshot() != load_snapshot(good.blob, "base-1").snapshot()
    last_ready = learner._layer.publishing.last_ready()
    assert last_ready is not None
    assert learner.rollback() == last_ready.version
    assert np.array_equal(learner.model.weights(), load_snapshot(last_ready.blob, "base-1").weights())
    assert not learner.readiness().ready  # readiness must be earned again
    assert learner.latest_snapshot() is None and learner.report().rollbacks == 1


# -- contract details ------------------------------------------------------------------------------


def test_two_learners_fed_the_same_stream_publish_identical_bytes(make_learner) -> None:
    a, b = make_learner(), make_learner()
    for learner in (a, b):
        feed(learner, world_for(learner, seed=9), 80)
        learner.flush(close_pending=True)
    blob = a.publish().blob
    assert blob == b.publish().blob
    # Identical zero weights would prove nothing: the bytes hold what was learned.
    published = load_snapshot(blob, "base-1")
    assert published.nnz() > 0 and published.n_examples == 80 * 8
    assert np.array_equal(published.weights(), a.model.weights())


def test_record_served_refuses_what_is_not_a_served_record(make_learner) -> None:
    learner = make_learner()
    record = world_for(learner).request(START)
    with pytest.raises(ServedRecordError):
        learner.record_served([record, {"request_id": "r2"}])  # type: ignore[list-item]
    assert learner.report().pending_requests == 0
    with pytest.raises(ServedRecordError, match="item_ids"):
        type(record)(record.request_id, record.user_id, START, "base-1", ("a",), record.inputs)


def test_report_is_plain_data(make_learner) -> None:
    learner = make_learner()
    feed(learner, world_for(learner), 20)
    data = learner.report().to_dict()
    assert data["base_version"] == "base-1" and data["readiness"]["ready"] in (True, False)
    assert isinstance(data["progressive"]["logloss_base"], float)


def test_the_ticker_learns_a_waiting_batch_without_any_call(make_learner) -> None:
    learner = OnlineLearner(
        {"batch_size": 1000, "emit": "on_arrival", "max_batch_delay_s": 0.05}, "base-1", 8,
        established_users=synthetic_user,
    )
    feed(learner, world_for(learner), 2)
    learner.start_ticker(interval_s=0.02)
    try:
        deadline = time.monotonic() + 10.0
        while learner.report().batches_learned == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        learner.stop_ticker()
    assert learner.report().batches_learned == 1
    assert learner.model.n_examples == 2 * 8


def test_beyond_max_pending_requests_the_oldest_windows_close_early(make_learner) -> None:
    learner = make_learner(max_pending_requests=5, join_window_s=3600.0)
    world = world_for(learner)
    feed(learner, world, 12)
    report = learner.report()
    assert report.pending_requests == 5 and report.extra["closed_early"] == 7
    learner.flush(close_pending=True)
    assert learner.report().examples_learned == 12 * 8  # nothing lost, only learned early


def test_beyond_max_pending_rows_the_oldest_windows_close_early_however_few_requests(make_learner) -> None:
    """Memory follows rows (shown items), not requests: 8 rows a request, room for 20."""
    learner = make_learner(max_pending_rows=20, join_window_s=3600.0)
    world = world_for(learner)
    feed(learner, world, 12)
    report = learner.report()
    assert report.pending_requests == 2 and report.extra["closed_early"] == 10
    learner.flush(close_pending=True)
    assert learner.report().examples_learned == 12 * 8
