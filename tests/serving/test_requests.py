"""A malformed Rank or Feedback call is refused with a message that says what is wrong."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from protos.freshrank.v1 import ranking_pb2 as pb
from serving.errors import InvalidRequest
from serving.requests import Limits, parse_admin_request, parse_feedback_request, parse_rank_request

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


def test_the_ends_of_the_timestamp_range_parse_but_are_outside_the_clock_window() -> None:
    """Valid Timestamps, so no range error; but year 1 is before 1970 and year 9999 is far
    ahead of the server clock: both refused naming the field (they used to break Status
    and stop learning)."""
    for seconds, nanos, why in (
        (-62_135_596_800, 0, "before 1970-01-01"),
        (253_402_300_799, 999_999_999, "ahead of the server clock"),
    ):
        request = rank()
        request.context.request_time.seconds = seconds
        request.context.request_time.nanos = nanos
        with pytest.raises(InvalidRequest, match=r"^context\.request_time is ") as error:
            parse_rank_request(request, 10, now=lambda: NOW)
        assert why in str(error.value)


LIMITS = Limits(max_id_bytes=8, max_attributes=2, max_attribute_bytes=4,
                max_clock_skew_seconds=60, max_event_age_seconds=3600)


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"request_id": "r" * 9}, "request_id is 9 bytes; the limit is 8"),
        ({"user_id": "\u00e9" * 5}, "user_id is 10 bytes; the limit is 8"),
        ({"candidate_item_ids": ["a", "b" * 9]}, "candidate_item_ids[1] is 9 bytes"),
    ],
)
def test_ids_have_a_size_limit(fields: dict, message: str) -> None:
    with pytest.raises(InvalidRequest) as error:
        parse_rank_request(rank(**fields), 10, now=lambda: NOW, limits=LIMITS)
    assert message in str(error.value)


def test_a_huge_id_is_never_echoed_back_whole() -> None:
    huge = "x" * 4_000_000
    with pytest.raises(InvalidRequest) as error:
        parse_rank_request(rank(request_id=huge), 10)
    assert "request_id is 4000000 bytes; the limit is 256" in str(error.value)
    assert len(str(error.value)) < 200
    request = feedback(item_id=huge)
    with pytest.raises(InvalidRequest) as error:
        parse_feedback_request(request, 10, now=lambda: NOW)
    assert str(error.value).startswith("events[0].item_id is 4000000 bytes")
    assert len(str(error.value)) < 200


def test_attributes_are_bounded_in_count_and_size() -> None:
    request = rank()
    request.context.attributes.update({"a": "1", "b": "2", "c": "3"})
    with pytest.raises(InvalidRequest, match="context.attributes has 3 entries; the limit is 2"):
        parse_rank_request(request, 10, now=lambda: NOW, limits=LIMITS)
    request = rank()
    request.context.attributes["surface"] = "x"
    with pytest.raises(InvalidRequest, match="context.attributes key is 7 bytes"):
        parse_rank_request(request, 10, now=lambda: NOW, limits=LIMITS)
    request = rank()
    request.context.attributes["dev"] = "phone"
    with pytest.raises(InvalidRequest, match=r"context.attributes\['dev'\] is 5 bytes"):
        parse_rank_request(request, 10, now=lambda: NOW, limits=LIMITS)
    request = rank()
    request.context.attributes["dev"] = ""
    assert parse_rank_request(request, 10, now=lambda: NOW, limits=LIMITS).user_id == "u1"


@pytest.mark.parametrize(
    "offset, accepted",
    [(timedelta(seconds=59), True), (timedelta(seconds=61), False),
     (-timedelta(seconds=3599), True), (-timedelta(seconds=3601), False)],
)
def test_times_outside_the_window_around_the_server_clock_are_refused(
    offset: timedelta, accepted: bool
) -> None:
    request = rank()
    request.context.request_time.FromDatetime(NOW + offset)
    event = feedback()
    event.events[0].event_time.FromDatetime(NOW + offset)
    if accepted:
        assert parse_rank_request(request, 10, now=lambda: NOW, limits=LIMITS).request_time == NOW + offset
        assert parse_feedback_request(event, 10, now=lambda: NOW, limits=LIMITS).num_rows == 1
        return
    with pytest.raises(InvalidRequest, match=r"^context\.request_time is .*serving\.max_"):
        parse_rank_request(request, 10, now=lambda: NOW, limits=LIMITS)
    with pytest.raises(InvalidRequest, match=r"^events\[0\]\.event_time is .*serving\.max_"):
        parse_feedback_request(event, 10, now=lambda: NOW, limits=LIMITS)


def test_a_year_ahead_is_refused_by_default_and_old_replays_are_not() -> None:
    request = rank()
    request.context.request_time.FromDatetime(NOW + timedelta(days=365))
    with pytest.raises(InvalidRequest, match="ahead of the server clock"):
        parse_rank_request(request, 10, now=lambda: NOW)
    request.context.request_time.FromDatetime(datetime(1998, 3, 1, tzinfo=UTC))  # ml-100k
    assert parse_rank_request(request, 10, now=lambda: NOW).request_time.year == 1998


def test_duplicate_events_and_positions_past_the_candidate_limit_are_refused() -> None:
    request = feedback()
    request.events.add().CopyFrom(request.events[0])
    with pytest.raises(InvalidRequest, match=r"events\[1\] repeats events\[0\]"):
        parse_feedback_request(request, 10, now=lambda: NOW)
    with pytest.raises(InvalidRequest, match=r"events\[0\]\.position is 2; it must be < 2"):
        parse_feedback_request(feedback(), 10, now=lambda: NOW, max_position=2)


@pytest.mark.parametrize(
    "request_, message",
    [
        (pb.SetOnlineEnabledRequest(enabled=True, actor="me"), "reason is empty"),
        (pb.SetOnlineEnabledRequest(enabled=True, reason="r"), "actor is empty"),
        (pb.RollbackOnlineRequest(reason="r", actor="a" * 300), "actor is 300 bytes"),
        (pb.RollbackOnlineRequest(reason="r", actor="me", to_version="v" * 300), "to_version is 300 bytes"),
    ],
)
def test_admin_requests_need_a_reason_and_an_actor(request_, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        parse_admin_request(request_)


def test_admin_requests_parse() -> None:
    action = parse_admin_request(pb.SetOnlineEnabledRequest(enabled=False, reason="r", actor="me"))
    assert (action.enabled, action.reason, action.actor) == (False, "r", "me")
    action = parse_admin_request(pb.RollbackOnlineRequest(reason="r", actor="me"))
    assert (action.enabled, action.to_version) == (None, "")
