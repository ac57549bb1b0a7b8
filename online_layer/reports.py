"""What the learner tells its callers: ``FeedbackResult`` per feedback call, the learner's
lifetime counters (``FeedbackCounts``), and ``LearnerReport``, the learner at a glance
(``build_report`` assembles it from the current layer and what outlives it)."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from online_layer.metrics import ProgressiveSummary
from online_layer.readiness import Readiness
from online_layer.validation import BatchRejected

if TYPE_CHECKING:
    from online_layer.breaker import BreakerStatus
    from online_layer.defences import FeedbackGuard
    from online_layer.join import FeedbackJoiner
    from online_layer.layer import Layer
    from online_layer.validation import LabelRateGuard


@dataclass(frozen=True)
class FeedbackResult:
    """What ``add_feedback`` did with one batch."""

    accepted: int  # rows joined to a served record
    dropped: int  # rows for closed or retired requests, or repeats of an emitted label
    rejected: str | None  # the RejectReason value when the whole batch was rejected
    detail: str  # why, when rejected
    batches_learned: int  # mini-batches learned during this call


@dataclass(eq=False)
class FeedbackCounts:
    """Feedback counters that outlive a base version: rejected batches and rows by reason,
    dropped rows by why (``late``, ``retired``, ``duplicate``), accepted rows."""

    rejected_batches: Counter[str] = field(default_factory=Counter)
    rejected_rows: Counter[str] = field(default_factory=Counter)
    dropped: Counter[str] = field(default_factory=Counter)
    accepted_rows: int = 0
    served_refused: Counter[str] = field(default_factory=Counter)  # served records not kept

    def reject(self, rejection: BatchRejected) -> None:
        reason = rejection.reason.value
        self.rejected_batches[reason] += 1
        self.rejected_rows[reason] += rejection.rows


@dataclass(frozen=True)
class LearnerReport:
    """The learner at a glance (``report()``); ``to_dict`` gives plain JSON-able values."""

    base_version: str
    generation: int
    implementation: str
    batches_learned: int
    examples_learned: int
    replay_buffer_examples: int
    warm_start_examples: int
    learn_seconds: float
    examples_per_s: float
    feedback_rows_accepted: int
    rejected_batches: dict[str, int]
    rejected_rows: dict[str, int]
    dropped_rows: dict[str, int]
    pending_requests: int
    pending_examples: int
    progressive: ProgressiveSummary
    progressive_by_day: tuple[ProgressiveSummary, ...]
    readiness: Readiness
    published: int
    last_published_version: str | None
    publish_latency_p50_s: float | None
    publish_latency_p95_s: float | None
    sink_failures: int
    rollbacks: int
    nonzero_weights: int
    watermark: str | None = None
    extra: dict[str, float] = field(default_factory=dict)  # closed_early, label_rate
    # The manipulation guard: examples quarantined (never learned), by reason.
    quarantined: dict[str, int] = field(default_factory=dict)
    # The circuit breaker: state ("closed", "open", "half_open"), why, the last judgement
    # (trimmed per-user excess log loss of hybrid over base), transition counts
    # ("closed->open": n), and how many rollbacks it made.
    breaker_state: str = "closed"
    breaker_reason: str = ""
    breaker_excess_loss: float | None = None
    breaker_transitions: dict[str, int] = field(default_factory=dict)
    breaker_rollbacks: int = 0
    # Request or feedback times clamped to the wall clock + max_served_ahead_s, and served
    # records not kept (by why: "id_too_long").
    clamped_future_times: int = 0
    served_refused: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def build_report(
    layer: Layer,
    readiness: Readiness,
    counts: FeedbackCounts,
    joiner: FeedbackJoiner,
    guard: LabelRateGuard,
    sink_failures: int,
    defences: FeedbackGuard | None = None,
    breaker: BreakerStatus | None = None,
    breaker_rollbacks: int = 0,
) -> LearnerReport:
    """The report of a learner whose current layer is ``layer``. Total: no value the
    learner holds (a watermark in year 9999, say) can make it raise."""
    publishing = layer.publishing
    latest = publishing.latest
    watermark = joiner.watermark_us
    return LearnerReport(
        base_version=layer.base_version,
        generation=layer.generation,
        implementation=layer.model.implementation,
        batches_learned=layer.batches,
        examples_learned=layer.examples,
        replay_buffer_examples=layer.replayed,
        warm_start_examples=layer.warm_start,
        learn_seconds=layer.learn_seconds,
        examples_per_s=layer.examples / layer.learn_seconds if layer.learn_seconds else 0.0,
        feedback_rows_accepted=counts.accepted_rows,
        rejected_batches=dict(counts.rejected_batches),
        rejected_rows=dict(counts.rejected_rows),
        dropped_rows=dict(counts.dropped),
        pending_requests=joiner.pending_requests,
        pending_examples=layer.pending.count,
        progressive=layer.metrics.overall(),
        progressive_by_day=layer.metrics.by_day(),
        readiness=readiness,
        published=publishing.published,
        last_published_version=None if latest is None else latest.version,
        publish_latency_p50_s=publishing.latency_percentile(50),
        publish_latency_p95_s=publishing.latency_percentile(95),
        sink_failures=sink_failures,
        rollbacks=publishing.rollbacks,
        nonzero_weights=layer.model.nnz(),
        watermark=None if watermark is None else format_us(watermark),
        extra={"closed_early": joiner.closed_early, "label_rate": guard.rate},
        quarantined={} if defences is None else defences.report(),
        breaker_state="closed" if breaker is None else breaker.state,
        breaker_reason="" if breaker is None else breaker.reason,
        breaker_excess_loss=None if breaker is None else breaker.excess_loss,
        breaker_transitions={} if breaker is None else dict(breaker.transitions),
        breaker_rollbacks=breaker_rollbacks,
        clamped_future_times=joiner.clamped_future,
        served_refused=dict(counts.served_refused),
    )


def format_us(us: int) -> str:
    """ISO 8601 of microseconds since the epoch; total (any int gives a string).

    >>> format_us(0)
    '1970-01-01T00:00:00+00:00'
    >>> format_us(253_402_300_800 * 10**6)  # year 10000: not a datetime
    '253402300800000000 us since the epoch (out of the datetime range)'
    """
    try:
        return (datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=int(us))).isoformat()
    except (OverflowError, ValueError):
        return f"{int(us)} us since the epoch (out of the datetime range)"
