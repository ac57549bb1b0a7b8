"""Turn gRPC messages into validated domain values (and say exactly what is wrong if not).

Validation lives here, not in the deployment, so it is tested without Ray; the ingress's
door (``serving.ingress``) turns ``InvalidRequest`` into ``INVALID_ARGUMENT``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa

from google.protobuf.timestamp_pb2 import Timestamp

from protos.events import EVENTS_SCHEMA, conform
from protos.freshrank.v1 import ranking_pb2
from serving.errors import InvalidRequest

# google.protobuf.Timestamp's valid range: 0001-01-01T00:00:00Z .. 9999-12-31T23:59:59.999999999Z.
TIMESTAMP_MIN_SECONDS = -62_135_596_800
TIMESTAMP_MAX_SECONDS = 253_402_300_799


@dataclass(frozen=True)
class RankQuery:
    """A validated Rank call."""

    request_id: str
    user_id: str
    item_ids: tuple[str, ...]
    top_k: int  # 1..len(item_ids)
    request_time: datetime  # UTC


def _utc_now() -> datetime:
    return datetime.now(UTC)


def check_timestamp(value: Timestamp, field: str) -> None:
    """Refuse a ``Timestamp`` outside the range the type defines (naming ``field``).

    >>> check_timestamp(Timestamp(seconds=0, nanos=0), "context.request_time")
    >>> try:
    ...     check_timestamp(Timestamp(seconds=1, nanos=-1), "events[3].event_time")
    ... except ValueError as error:
    ...     print(str(error).split(":")[0])
    events[3].event_time is out of range (seconds=1, nanos=-1)
    """
    if not (
        TIMESTAMP_MIN_SECONDS <= value.seconds <= TIMESTAMP_MAX_SECONDS
        and 0 <= value.nanos <= 999_999_999
    ):
        raise InvalidRequest(
            f"{field} is out of range (seconds={value.seconds}, nanos={value.nanos}): a "
            "Timestamp lies in 0001-01-01T00:00:00Z .. 9999-12-31T23:59:59.999999999Z, "
            "nanos in [0, 999999999]"
        )


def parse_rank_request(
    request: ranking_pb2.RankRequest,
    max_candidates: int,
    now: Callable[[], datetime] = _utc_now,
) -> RankQuery:
    """Validate a ``RankRequest``.

    A ``top_k`` of 0, or larger than the candidate list, returns every candidate.

    Raises:
        InvalidRequest: empty request or user id, no candidates, more than ``max_candidates``,
            an empty or duplicate candidate id, ``top_k`` above ``max_candidates``, or a
            ``context.request_time`` outside the ``Timestamp`` range.
    """
    if not request.request_id:
        raise InvalidRequest("request_id is empty: set a caller-chosen id to join feedback")
    if not request.user_id:
        raise InvalidRequest("user_id is empty")
    items = tuple(request.candidate_item_ids)
    if not items:
        raise InvalidRequest("candidate_item_ids is empty: send at least one candidate")
    if len(items) > max_candidates:
        raise InvalidRequest(
            f"candidate_item_ids has {len(items)} items; the limit is {max_candidates}"
        )
    if request.top_k > max_candidates:
        raise InvalidRequest(f"top_k is {request.top_k}; the limit is {max_candidates}")
    if len(set(items)) != len(items):
        seen: set[str] = set()
        for index, item in enumerate(items):
            if item in seen:
                raise InvalidRequest(
                    f"candidate_item_ids[{index}] duplicates an earlier candidate: {item!r}"
                )
            seen.add(item)
    for index, item in enumerate(items):
        if not item:
            raise InvalidRequest(f"candidate_item_ids[{index}] is empty")
    top_k = len(items) if request.top_k == 0 else min(int(request.top_k), len(items))
    if request.HasField("context") and request.context.HasField("request_time"):
        check_timestamp(request.context.request_time, "context.request_time")
        request_time = request.context.request_time.ToDatetime(tzinfo=UTC)
    else:
        request_time = now()
    return RankQuery(request.request_id, request.user_id, items, top_k, request_time)


def parse_feedback_request(
    request: ranking_pb2.FeedbackRequest, max_events: int
) -> pa.Table:
    """Validate a ``FeedbackRequest`` and return its events as an events-schema table.

    Raises:
        InvalidRequest: no events, too many, or an event with an empty id, no event time or
            one outside the ``Timestamp`` range, a label that is NaN or outside [0, 1], or a
            negative position; the message names the event's index and the field.
    """
    events = request.events
    if not events:
        raise InvalidRequest("events is empty")
    if len(events) > max_events:
        raise InvalidRequest(f"events has {len(events)} entries; the limit is {max_events}")
    n = len(events)
    request_ids, users, items = [], [], []
    ts = np.empty(n, dtype="datetime64[us]")
    labels = np.empty(n, dtype=np.float32)
    positions = np.empty(n, dtype=np.int32)
    for i, event in enumerate(events):
        for field in ("request_id", "user_id", "item_id"):
            if not getattr(event, field):
                raise InvalidRequest(f"events[{i}].{field} is empty")
        if not event.HasField("event_time"):
            raise InvalidRequest(f"events[{i}].event_time is not set")
        check_timestamp(event.event_time, f"events[{i}].event_time")
        if not (math.isfinite(event.label) and 0.0 <= event.label <= 1.0):
            raise InvalidRequest(f"events[{i}].label is {event.label}; it must be in [0, 1]")
        if event.position < 0:
            raise InvalidRequest(f"events[{i}].position is {event.position}; it must be >= 0")
        request_ids.append(event.request_id)
        users.append(event.user_id)
        items.append(event.item_id)
        ts[i] = np.datetime64(event.event_time.ToMicroseconds(), "us")
        labels[i] = event.label
        positions[i] = event.position
    table = pa.table(
        {
            "user_id": pa.array(users, pa.string()),
            "item_id": pa.array(items, pa.string()),
            "ts": pa.array(ts).cast(EVENTS_SCHEMA.field("ts").type),
            "label": pa.array(labels),
            "request_id": pa.array(request_ids, pa.string()),
            "position": pa.array(positions),
        }
    )
    return conform(table)
