"""Turn gRPC messages into validated domain values (and say exactly what is wrong if not).

Validation lives here, not in the deployment, so it is tested without Ray; the ingress's
door (``serving.ingress``) turns ``InvalidRequest`` into ``INVALID_ARGUMENT``.

Limits (``Limits``, from ``ServingConfig``; documented in serving/README.md): ids are at most
``max_id_bytes`` UTF-8 bytes, ``context.attributes`` at most ``max_attributes`` entries of
at most ``max_attribute_bytes`` per key and value, times no more than
``max_clock_skew_seconds`` ahead of the server clock, not before 1970-01-01 and (when
``max_event_age_seconds`` > 0) not older than that. A refusal names the field and quotes at
most ``QUOTE_CHARS`` characters of the bad value.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pyarrow as pa

from google.protobuf.timestamp_pb2 import Timestamp

from protos.errors import InvalidInput
from protos.events import EVENTS_SCHEMA, conform
from protos.freshrank.v1 import ranking_pb2
from serving.errors import InvalidRequest

QUOTE_CHARS = 32  # characters of a caller's bad value quoted back in a message
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# google.protobuf.Timestamp's valid range: 0001-01-01T00:00:00Z .. 9999-12-31T23:59:59.999999999Z.
TIMESTAMP_MIN_SECONDS = -62_135_596_800
TIMESTAMP_MAX_SECONDS = 253_402_300_799


@dataclass(frozen=True)
class Limits:
    """What the ingress accepts (see ``ServingConfig`` for each)."""

    max_id_bytes: int = 256
    max_attributes: int = 32
    max_attribute_bytes: int = 256
    max_clock_skew_seconds: float = 300.0
    max_event_age_seconds: float = 0.0
    max_reason_bytes: int = 1024

    @classmethod
    def of(cls, cfg: object) -> Limits:
        """From a ``ServingConfig`` (or anything with the same attribute names)."""
        names = ("max_id_bytes", "max_attributes", "max_attribute_bytes",
                 "max_clock_skew_seconds", "max_event_age_seconds")
        return cls(**{name: getattr(cfg, name) for name in names})


DEFAULT_LIMITS = Limits()


def quote(value: str) -> str:
    """A bad value as a message may show it: its first ``QUOTE_CHARS`` characters.

    >>> quote("x" * 1000)
    "'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx'... (1000 characters)"
    """
    if len(value) <= QUOTE_CHARS:
        return repr(value)
    return f"{value[:QUOTE_CHARS]!r}... ({len(value)} characters)"


def check_text(value: str, field: str, max_bytes: int, required: bool = True) -> None:
    """Refuse an empty (when ``required``) or over-long string, naming ``field``."""
    if not value:
        if required:
            raise InvalidRequest(f"{field} is empty")
        return
    size = len(value.encode("utf-8", "surrogatepass"))
    if size > max_bytes:
        raise InvalidRequest(
            f"{field} is {size} bytes; the limit is {max_bytes} (starts {quote(value)})"
        )


def check_time_window(when: datetime, field: str, now: datetime, limits: Limits) -> None:
    """Refuse a time far ahead of the server clock, before 1970, or (optionally) too old."""
    ahead = (when - now).total_seconds()
    if ahead > limits.max_clock_skew_seconds:
        raise InvalidRequest(
            f"{field} is {when.isoformat()}, {ahead:.0f} s ahead of the server clock; at most "
            f"serving.max_clock_skew_seconds={limits.max_clock_skew_seconds:g} ahead is accepted"
        )
    if when < EPOCH:
        raise InvalidRequest(f"{field} is {when.isoformat()}, before 1970-01-01T00:00:00Z")
    if limits.max_event_age_seconds > 0:
        age = (now - when).total_seconds()
        if age > limits.max_event_age_seconds:
            raise InvalidRequest(
                f"{field} is {when.isoformat()}, {age:.0f} s old; the limit is "
                f"serving.max_event_age_seconds={limits.max_event_age_seconds:g}"
            )


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
    limits: Limits = DEFAULT_LIMITS,
) -> RankQuery:
    """Validate a ``RankRequest``.

    A ``top_k`` of 0, or larger than the candidate list, returns every candidate.

    Raises:
        InvalidRequest: empty or over-long request or user id, no candidates, more than
            ``max_candidates``, an empty, over-long or duplicate candidate id, ``top_k``
            above ``max_candidates``, too many or over-long ``context.attributes``, or a
            ``context.request_time`` outside the ``Timestamp`` range or the clock window.
    """
    check_text(request.request_id, "request_id", limits.max_id_bytes)
    check_text(request.user_id, "user_id", limits.max_id_bytes)
    items = tuple(request.candidate_item_ids)
    if not items:
        raise InvalidRequest("candidate_item_ids is empty: send at least one candidate")
    if len(items) > max_candidates:
        raise InvalidRequest(
            f"candidate_item_ids has {len(items)} items; the limit is {max_candidates}"
        )
    if request.top_k > max_candidates:
        raise InvalidRequest(f"top_k is {request.top_k}; the limit is {max_candidates}")
    for index, item in enumerate(items):
        check_text(item, f"candidate_item_ids[{index}]", limits.max_id_bytes)
    if len(set(items)) != len(items):
        seen: set[str] = set()
        for index, item in enumerate(items):
            if item in seen:
                raise InvalidRequest(
                    f"candidate_item_ids[{index}] duplicates an earlier candidate: {quote(item)}"
                )
            seen.add(item)
    top_k = len(items) if request.top_k == 0 else min(int(request.top_k), len(items))
    if request.HasField("context"):
        attributes = request.context.attributes
        if len(attributes) > limits.max_attributes:
            raise InvalidRequest(
                f"context.attributes has {len(attributes)} entries; the limit is "
                f"{limits.max_attributes}"
            )
        for key in sorted(attributes)[: limits.max_attributes]:
            check_text(key, "context.attributes key", limits.max_attribute_bytes)
            check_text(
                attributes[key], f"context.attributes[{quote(key)}]",
                limits.max_attribute_bytes, required=False,
            )
    clock = now()
    if request.HasField("context") and request.context.HasField("request_time"):
        check_timestamp(request.context.request_time, "context.request_time")
        request_time = request.context.request_time.ToDatetime(tzinfo=UTC)
        check_time_window(request_time, "context.request_time", clock, limits)
    else:
        request_time = clock
    return RankQuery(request.request_id, request.user_id, items, top_k, request_time)


def parse_feedback_request(
    request: ranking_pb2.FeedbackRequest,
    max_events: int,
    now: Callable[[], datetime] = _utc_now,
    limits: Limits = DEFAULT_LIMITS,
    max_position: int | None = None,
) -> pa.Table:
    """Validate a ``FeedbackRequest`` and return its events as an events-schema table.

    Raises:
        InvalidRequest: no events, too many, or an event with an empty or over-long id, no
            event time or one outside the ``Timestamp`` range or the clock window, a label
            that is NaN or outside [0, 1], a negative position (or one of
            ``max_position`` or more), or the same (request_id, item_id) twice in the batch;
            the message names the event's index and the field.
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
    clock = now()
    seen: dict[tuple[str, str], int] = {}
    for i, event in enumerate(events):
        for field in ("request_id", "user_id", "item_id"):
            check_text(getattr(event, field), f"events[{i}].{field}", limits.max_id_bytes)
        if not event.HasField("event_time"):
            raise InvalidRequest(f"events[{i}].event_time is not set")
        check_timestamp(event.event_time, f"events[{i}].event_time")
        check_time_window(
            event.event_time.ToDatetime(tzinfo=UTC), f"events[{i}].event_time", clock, limits
        )
        if not (math.isfinite(event.label) and 0.0 <= event.label <= 1.0):
            raise InvalidRequest(f"events[{i}].label is {event.label}; it must be in [0, 1]")
        if event.position < 0:
            raise InvalidRequest(f"events[{i}].position is {event.position}; it must be >= 0")
        if max_position is not None and event.position >= max_position:
            raise InvalidRequest(
                f"events[{i}].position is {event.position}; it must be < {max_position} "
                "(serving.max_candidates)"
            )
        key = (event.request_id, event.item_id)
        if key in seen:
            raise InvalidRequest(
                f"events[{i}] repeats events[{seen[key]}] (same request_id and item_id): send "
                "one event per shown item"
            )
        seen[key] = i
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


@dataclass(frozen=True)
class AdminAction:
    """A validated admin call: what to do, who asks and why (all go to the audit log)."""

    enabled: bool | None  # SetOnlineEnabled
    to_version: str  # RollbackOnline / RollbackBase: "" = the default target
    reason: str
    actor: str
    base_version: str = ""  # StageCandidate / PromoteBase
    phase: str = ""  # StageCandidate: "shadow" or "canary"
    share: float = 0.0  # StageCandidate, canary: the share of users
    exploration: dict[str, Any] | None = None  # SetExploration: the settings to change


AdminRequest = (
    ranking_pb2.SetOnlineEnabledRequest | ranking_pb2.RollbackOnlineRequest
    | ranking_pb2.StageCandidateRequest | ranking_pb2.PromoteBaseRequest
    | ranking_pb2.RollbackBaseRequest | ranking_pb2.AbortCandidateRequest
    | ranking_pb2.SetExplorationRequest
)
_PHASES = {ranking_pb2.CANDIDATE_PHASE_SHADOW: "shadow", ranking_pb2.CANDIDATE_PHASE_CANARY: "canary"}


def _exploration_changes(request: ranking_pb2.SetExplorationRequest) -> dict[str, Any]:
    """The fields a SetExploration call sets (unset optionals keep the current value: the
    running policy's, or the settings' while no operator has set one), each checked alone
    against ``serving.exploration.ExplorationPolicy``'s bounds (``propensity_draws`` in
    [0, 1024], 0 meaning Monte Carlo with ``samples``)."""
    from serving.exploration import ExplorationPolicy

    changes: dict[str, Any] = {"enabled": bool(request.enabled)}
    for name in ("share", "slots", "scale", "samples", "propensity_draws"):
        if request.HasField(name):
            value = getattr(request, name)
            try:
                ExplorationPolicy(**{name: value})
            except InvalidInput as error:
                raise InvalidRequest(f"{name} is {value!r}: {error}") from None
            changes[name] = value
    return changes


def parse_admin_request(request: AdminRequest, limits: Limits = DEFAULT_LIMITS) -> AdminAction:
    """Validate an admin request: ``reason`` and ``actor`` are required and bounded, and
    each rpc's own fields are checked (versions bounded; a phase named; a canary share in
    (0, 0.5], finite).

    Raises:
        InvalidRequest: naming the field.
    """
    import math

    from serving.plan import MAX_CANARY_SHARE

    check_text(request.reason, "reason", limits.max_reason_bytes)
    check_text(request.actor, "actor", limits.max_id_bytes)
    if isinstance(request, ranking_pb2.SetOnlineEnabledRequest):
        return AdminAction(bool(request.enabled), "", request.reason, request.actor)
    if isinstance(request, ranking_pb2.AbortCandidateRequest):
        return AdminAction(None, "", request.reason, request.actor)
    if isinstance(request, ranking_pb2.SetExplorationRequest):
        return AdminAction(bool(request.enabled), "", request.reason, request.actor,
                           exploration=_exploration_changes(request))
    if isinstance(request, ranking_pb2.StageCandidateRequest):
        check_text(request.base_version, "base_version", limits.max_id_bytes)
        phase = _PHASES.get(request.phase)
        if phase is None:
            raise InvalidRequest(
                f"phase is {request.phase}: CANDIDATE_PHASE_SHADOW (1) or CANDIDATE_PHASE_CANARY (2)"
            )
        share = float(request.canary_share)
        if phase == "canary" and not (math.isfinite(share) and 0.0 < share <= MAX_CANARY_SHARE):
            raise InvalidRequest(f"canary_share is {share!r}; a canary needs a share in (0, {MAX_CANARY_SHARE}]")
        if phase == "shadow" and share != 0.0:
            raise InvalidRequest(f"canary_share is {share!r}; a shadow serves no users (leave it 0)")
        return AdminAction(None, "", request.reason, request.actor, request.base_version, phase, share)
    if isinstance(request, ranking_pb2.PromoteBaseRequest):
        check_text(request.base_version, "base_version", limits.max_id_bytes, required=False)
        return AdminAction(None, "", request.reason, request.actor, request.base_version)
    check_text(request.to_version, "to_version", limits.max_id_bytes, required=False)
    return AdminAction(None, request.to_version, request.reason, request.actor)
