"""Poisoned feedback never reaches the weights: each reason is rejected whole, counted,
logged, and leaves the model bit-identical."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from datetime import timedelta

import numpy as np
import pyarrow as pa
import pytest

from tests.online_layer.ol_helpers import START, feed, world_for
from online_layer.features import OnlineInputs
from online_layer.join import ServedRecord
from online_layer.learner import OnlineLearner, ReplayBatch
from online_layer.synthetic import Event, SyntheticWorld
from online_layer.validation import LabelRateGuard, RejectReason

LATER = START + timedelta(hours=1)


def fingerprint(learner: OnlineLearner) -> tuple[bytes, bytes]:
    return learner.model.snapshot(), learner.model.weights().tobytes()


@pytest.fixture
def warmed(make_learner) -> tuple[OnlineLearner, SyntheticWorld]:
    """A learner that has learned 960 examples, with nothing pending."""
    learner = make_learner()
    world = world_for(learner)
    feed(learner, world, 120)
    learner.flush(close_pending=True)
    assert learner.report().batches_learned > 0 and learner.report().pending_examples == 0
    return learner, world


def served(learner: OnlineLearner, world: SyntheticWorld, **changes) -> tuple[ServedRecord, list[dict]]:
    record = world.request(LATER)
    if changes:
        record = replace(record, **changes)
    learner.record_served(record)
    return record, world.feedback(record, LATER + timedelta(seconds=5))


def with_row(events: list[dict], row: int = 3, **changes) -> list[dict]:
    events[row] = {**events[row], **changes}
    return events


def bad_widths(record: ServedRecord) -> OnlineInputs:
    x = record.inputs
    return OnlineInputs(x.base_logit, x.dense[:, :-1], x.sparse)


def nan_inputs(record: ServedRecord) -> OnlineInputs:
    dense = record.inputs.dense.copy()
    dense[2, 0] = np.nan
    return OnlineInputs(record.inputs.base_logit, dense, record.inputs.sparse)


def missing_label(learner, world):
    _, events = served(learner, world)
    return [{k: v for k, v in e.items() if k != "label"} for e in events]


def label_as_text(learner, world):
    _, events = served(learner, world)
    return [{**e, "label": str(e["label"])} for e in events]


def unknown_column(learner, world):
    _, events = served(learner, world)
    return [{**e, "dwell_ms": 1200} for e in events]


def not_a_table(learner, world):
    served(learner, world)
    return "request r1 was clicked"


def served_with_other_widths(learner, world):
    record = world.request(LATER)
    record = replace(record, inputs=bad_widths(record))
    learner.record_served(record)
    return world.feedback(record, LATER)


def nan_label(learner, world):
    return with_row(served(learner, world)[1], label=float("nan"))


def served_with_nan_inputs(learner, world):
    record = world.request(LATER)
    record = replace(record, inputs=nan_inputs(record))
    learner.record_served(record)
    return world.feedback(record, LATER)


def label_above_one(learner, world):
    return with_row(served(learner, world)[1], label=1.5)


def negative_position(learner, world):
    return with_row(served(learner, world)[1], position=-2)


def huge_position(learner, world):
    return with_row(served(learner, world)[1], position=20_000)


def time_far_ahead(learner, world):
    return with_row(served(learner, world)[1], ts=LATER + timedelta(days=10))


def time_before_request(learner, world):
    return with_row(served(learner, world)[1], ts=LATER - timedelta(days=1))


def empty_item_id(learner, world):
    return with_row(served(learner, world)[1], item_id="")


def null_request_id(learner, world):
    return with_row(served(learner, world)[1], request_id=None)


def never_served_request(learner, world):
    return with_row(served(learner, world)[1], request_id="r-never-served")


def item_not_served(learner, world):
    return with_row(served(learner, world)[1], item_id="i-not-shown")


def another_user(learner, world):
    return with_row(served(learner, world)[1], user_id="u-somebody-else")


def claims_another_base(learner, world):
    return with_row(served(learner, world)[1], base_version="base-0")


def served_by_another_base(learner, world):
    return served(learner, world, base_version="base-0")[1]


CASES: list[tuple[Callable, RejectReason]] = [
    (missing_label, RejectReason.SCHEMA_SKEW),
    (label_as_text, RejectReason.SCHEMA_SKEW),
    (unknown_column, RejectReason.SCHEMA_SKEW),
    (not_a_table, RejectReason.SCHEMA_SKEW),
    (served_with_other_widths, RejectReason.SCHEMA_SKEW),
    (nan_label, RejectReason.NON_FINITE),
    (served_with_nan_inputs, RejectReason.NON_FINITE),
    (label_above_one, RejectReason.OUT_OF_RANGE),
    (negative_position, RejectReason.OUT_OF_RANGE),
    (huge_position, RejectReason.OUT_OF_RANGE),
    (time_far_ahead, RejectReason.OUT_OF_RANGE),
    (time_before_request, RejectReason.OUT_OF_RANGE),
    (empty_item_id, RejectReason.MALFORMED_ID),
    (null_request_id, RejectReason.MALFORMED_ID),
    (never_served_request, RejectReason.UNKNOWN_ID),
    (item_not_served, RejectReason.UNKNOWN_ID),
    (another_user, RejectReason.UNKNOWN_ID),
    (claims_another_base, RejectReason.BASE_VERSION),
    (served_by_another_base, RejectReason.BASE_VERSION),
]


@pytest.mark.parametrize("poison, reason", CASES, ids=[c[0].__name__ for c in CASES])
def test_poisoned_batch_is_rejected_whole_and_weights_stay_bit_identical(
    warmed, poison, reason: RejectReason, caplog: pytest.LogCaptureFixture
) -> None:
    learner, world = warmed
    before = fingerprint(learner)
    events = poison(learner, world)
    with caplog.at_level(logging.WARNING, logger="online_layer.learner"):
        result = learner.add_feedback(events)
    learner.flush(close_pending=True)
    assert result.rejected == reason.value and result.accepted == 0
    report = learner.report()
    assert report.rejected_batches == {reason.value: 1}
    assert report.rejected_rows == {reason.value: len(events) if isinstance(events, list) else 0}
    assert fingerprint(learner) == before
    assert reason.value in caplog.text


def test_the_same_feedback_without_poison_is_learned(warmed) -> None:
    learner, world = warmed
    before = fingerprint(learner)
    _, events = served(learner, world)
    result = learner.add_feedback(events)
    learner.flush(close_pending=True)
    assert result.rejected is None and result.accepted == len(events)
    assert fingerprint(learner) != before
    assert learner.report().rejected_batches == {}


def test_a_click_flood_is_rejected_before_learning(warmed) -> None:
    learner, world = warmed
    before = fingerprint(learner)
    flood: list[Event] = []
    for _ in range(16):  # 128 clicks: two full mini-batches of nothing but clicks
        _, events = served(learner, world)
        flood.extend({**e, "label": 1.0} for e in events)
    result = learner.add_feedback(flood)
    learner.flush(close_pending=True)
    assert result.rejected is None  # the feedback itself is well-formed ...
    report = learner.report()
    assert report.rejected_batches == {"label_flood": 2}  # ... its mini-batches are not
    assert report.rejected_rows == {"label_flood": 128}
    assert fingerprint(learner) == before


def test_a_replay_batch_for_another_base_is_rejected(warmed) -> None:
    learner, world = warmed
    before = fingerprint(learner)
    record = world.request(LATER)
    batch = ReplayBatch("base-0", record.inputs, np.zeros(len(record.inputs)))
    assert learner.learn_replay([batch]) == 0
    assert learner.report().rejected_batches == {"base_version": 1}
    assert fingerprint(learner) == before


def test_feedback_for_closed_windows_is_dropped_not_rejected(warmed) -> None:
    learner, world = warmed
    record, events = served(learner, world)
    learner.flush(close_pending=True)  # the window of ``record`` closes with no feedback
    result = learner.add_feedback(events)
    assert result.rejected is None and result.dropped == len(events) and result.accepted == 0
    assert learner.report().dropped_rows == {"late": len(events)}


def test_an_arrow_table_in_the_events_schema_is_accepted(warmed) -> None:
    learner, world = warmed
    _, events = served(learner, world)
    table = pa.Table.from_pylist(events)
    assert learner.add_feedback(table).accepted == len(events)


class TestLabelRateGuard:
    def test_learns_the_rate_before_judging(self) -> None:
        guard = LabelRateGuard(halflife=1000, min_events=100, factor=3.0, z=5.0)
        assert guard.observe(np.ones(64)) is None  # no history yet: nothing to compare
        assert guard.events == 64

    def test_a_burst_is_a_flood_but_a_lasting_shift_is_accepted(self) -> None:
        guard = LabelRateGuard(halflife=1000, min_events=100, factor=3.0, z=5.0)
        for _ in range(10):
            guard.observe(np.r_[np.ones(5), np.zeros(95)])
        assert guard.observe(np.r_[np.ones(60), np.zeros(40)]) is not None
        verdicts = [guard.observe(np.r_[np.ones(60), np.zeros(40)]) for _ in range(60)]
        assert verdicts[0] is not None and verdicts[-1] is None

    def test_a_drought_is_judged_only_when_two_sided(self) -> None:
        one, two = (
            LabelRateGuard(1000, 100, 3.0, 3.0, two_sided=flag) for flag in (False, True)
        )
        for guard in (one, two):
            for _ in range(10):
                guard.observe(np.r_[np.ones(30), np.zeros(70)])
        assert one.verdict(np.zeros(500)) is None
        drought = two.verdict(np.zeros(500))
        assert drought is not None and "below" in drought
