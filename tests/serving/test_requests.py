"""A malformed Rank or Feedback call is refused with a message that says what is wrong."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from protos.freshrank.v1 import ranking_pb2 as pb
from serving.errors import InvalidRequest
from serving.requests import parse_feedback_request, parse_rank_request

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def rank(**fields) -> pb.RankRequest:
    base = {"request_id": "r1", "user_id": "u1", "candidate_item_ids": ["a", "b", "c"]}
    base.update(fields)
    return pb.RankRequest(**base)


def test_a_valid_request_keeps_candidates_in_order_and_uses_now_without_context() -> None:
    query = parse_rank_request(rank(top_k=2), max_candidates=10, now=lambda: NOW)
    assert query.item_ids == ("a", "b", "c")
    assert query.top_k == 2
    assert query.request_time == NOW


def test_request_time_from_context_wins_over_the_clock() -> None:
    request = rank()
    when = datetime(2020, 5, 6, 7, 0, tzinfo=UTC)
    request.context.request_time.FromDatetime(when)
    assert parse_rank_request(request, 10, now=lambda: NOW).request_time == when


@pytest.mark.parametrize("top_k, expected", [(0, 3), (3, 3), (7, 3), (1, 1)])
def test_top_k_zero_or_beyond_the_candidates_returns_them_all(top_k: int, expected: int) -> None:
    assert parse_rank_request(rank(top_k=top_k), max_candidates=10).top_k == expected


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"request_id": ""}, "request_id is empty"),
        ({"user_id": ""}, "user_id is empty"),
        ({"candidate_item_ids": []}, "candidate_item_ids is empty"),
        ({"candidate_item_ids": ["a", "b", "a"]}, "candidate_item_ids[2] duplicates"),
        ({"candidate_item_ids": ["a", ""]}, "candidate_item_ids[1] is empty"),
        ({"candidate_item_ids": [str(i) for i in range(11)]}, "has 11 items; the limit is 10"),
        ({"top_k": 11}, "top_k is 11; the limit is 10"),
    ],
)
def test_malformed_rank_requests_name_the_field(fields: dict, message: str) -> None:
    with pytest.raises(InvalidRequest) as error:
        parse_rank_request(rank(**fields), max_candidates=10)
    assert message in str(error.value)


def feedback(**fields) -> pb.FeedbackRequest:
    event = {"request_id": "r1", "user_id": "u1", "item_id": "a", "label": 1.0, "position": 2}
    event.update(fields)
    request = pb.FeedbackRequest(events=[pb.FeedbackEvent(**event)])
    if "no_time" not in fields:
        request.events[0].event_time.FromDatetime(NOW)
    return request


def test_feedback_becomes_an_events_table() -> None:
    table = parse_feedback_request(feedback(), max_events=10)
    row = table.to_pylist()[0]
    assert (row["request_id"], row["user_id"], row["item_id"]) == ("r1", "u1", "a")
    assert row["ts"] == NOW
    assert (row["label"], row["position"]) == (1.0, 2)


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"label": float("nan")}, "events[0].label is nan"),
        ({"label": 1.5}, "events[0].label is 1.5"),
        ({"label": -0.5}, "events[0].label is -0.5"),
        ({"position": -1}, "events[0].position is -1"),
        ({"item_id": ""}, "events[0].item_id is empty"),
        ({"request_id": ""}, "events[0].request_id is empty"),
    ],
)
def test_malformed_feedback_names_the_event_and_field(fields: dict, message: str) -> None:
    with pytest.raises(InvalidRequest) as error:
        parse_feedback_request(feedback(**fields), max_events=10)
    assert message in str(error.value)


def test_feedback_without_event_time_is_refused() -> None:
    request = pb.FeedbackRequest(
        events=[pb.FeedbackEvent(request_id="r", user_id="u", item_id="a", label=0.0)]
    )
    with pytest.raises(InvalidRequest, match=r"events\[0\]\.event_time is not set"):
        parse_feedback_request(request, max_events=10)


def test_empty_and_oversized_feedback_are_refused() -> None:
    with pytest.raises(InvalidRequest, match="events is empty"):
        parse_feedback_request(pb.FeedbackRequest(), max_events=10)
    big = pb.FeedbackRequest(events=[feedback().events[0]] * 3)
    with pytest.raises(InvalidRequest, match="3 entries; the limit is 2"):
        parse_feedback_request(big, max_events=2)


OUT_OF_RANGE = [
    (253_402_300_800, 0),  # 10000-01-01T00:00:00Z: past the Timestamp range
    (-62_135_596_801, 0),  # the second before 0001-01-01
    (1_700_000_000, -1),  # negative nanos
    (1_700_000_000, 1_000_000_000),  # nanos of a whole second
]


@pytest.mark.parametrize("seconds, nanos", OUT_OF_RANGE)
def test_an_out_of_range_request_time_names_the_field(seconds: int, nanos: int) -> None:
    request = rank()
    request.context.request_time.seconds = seconds
    request.context.request_time.nanos = nanos
    with pytest.raises(InvalidRequest, match=r"^context\.request_time is out of range"):
        parse_rank_request(request, 10)


@pytest.mark.parametrize("seconds, nanos", OUT_OF_RANGE)
def test_an_out_of_range_event_time_names_the_event_and_field(seconds: int, nanos: int) -> None:
    request = feedback()
    request.events.add(request_id="r1", user_id="u1", item_id="b", label=0.0)
    request.events[1].event_time.seconds = seconds
    request.events[1].event_time.nanos = nanos
    with pytest.raises(InvalidRequest, match=r"^events\[1\]\.event_time is out of range"):
        parse_feedback_request(request, max_events=10)


def test_the_ends_of_the_timestamp_range_are_accepted() -> None:
    for seconds, nanos in ((-62_135_596_800, 0), (253_402_300_799, 999_999_999)):
        request = rank()
        request.context.request_time.seconds = seconds
        request.context.request_time.nanos = nanos
        assert parse_rank_request(request, 10).request_time.year in (1, 9999)
