"""When a layer publishes, what it published, and what serving may have of it.

Per layer (reset by a rebase, because snapshots are bound to one base), ``PublishState``
keeps the publishing cadence (every ``publish_every_batches`` learned batches or
``publish_every_s`` seconds), the latest snapshot, the last ``keep_snapshots`` ready ones
(for ``rollback``) and the feedback-to-publish latencies. What a snapshot says about where
it came from is ``online_layer.lineage``; the bytes are ``online_layer.snapshot``.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

# ``sink(version, blob, lineage)``: called on every publish (the model registry).
SnapshotSink = Callable[[str, bytes, dict[str, Any]], None]
# ``next()`` -> the next publish number. A version names one set of weights (replicas skip a
# snapshot whose version they hold), so serving passes one that outlives the process.
Sequencer = Callable[[], int]


@dataclass(frozen=True, eq=False)
class PublishedSnapshot:
    """One published version of the layer.

    ``published_at`` is unix time (serving's time-to-live starts there). ``feedback_*``
    are the unix times at which the oldest and newest feedback first learned in this
    version arrived at the learner (None if none), so "feedback to publish" latency is
    ``published_at - feedback_newest`` for the freshest click and
    ``published_at - feedback_oldest`` for the most delayed one.
    """

    version: str
    base_version: str
    blob: bytes
    published_at: float
    ready: bool
    lineage: dict[str, Any]
    feedback_oldest: float | None
    feedback_newest: float | None


@dataclass(frozen=True, eq=False)
class ServingView:
    """The answer to a serving replica's weight poll (``OnlineLearner.serving_view``).

    ``withhold``: apply no online weights at all (the circuit breaker is not closed; drop
    any installed ones); ``detail`` says why, for ``FALLBACK_REASON_BREAKER_OPEN``.
    Otherwise ``snapshot`` is a newer ready snapshot to install, or None (nothing new).
    """

    snapshot: PublishedSnapshot | None
    withhold: bool
    breaker_state: str
    detail: str


@dataclass(eq=False)
class PublishState:
    """One layer's publishing: cadence, latest and ready snapshots, latencies."""

    keep_snapshots: int
    last_publish_at: float
    sequencer: Sequencer | None = None  # None: count from 1 in this process
    sequence: int = 0
    published: int = 0
    rollbacks: int = 0
    batches_since: int = 0
    latest: PublishedSnapshot | None = None
    ready_history: deque[PublishedSnapshot] = field(init=False)
    arrivals: list[float] = field(default_factory=list)  # feedback arrivals since the last publish
    latencies: deque[float] = field(default_factory=lambda: deque(maxlen=1000))

    def __post_init__(self) -> None:
        self.ready_history = deque(maxlen=self.keep_snapshots)

    def note_batch(self, arrived: np.ndarray) -> None:
        """A batch was learned; ``arrived`` holds its feedback arrival times (NaN: none)."""
        self.batches_since += 1
        seen = arrived[np.isfinite(arrived)]
        if seen.size:
            self.arrivals.extend((float(seen.min()), float(seen.max())))

    def due(self, now: float, every_batches: int, every_s: float, force: bool = False) -> bool:
        """Something was learned since the last publish, and the cadence (or ``force``)
        says publish now."""
        if self.batches_since == 0:
            return False
        return force or self.batches_since >= every_batches or now - self.last_publish_at >= every_s

    def next_sequence(self) -> int:
        self.sequence = self.sequencer() if self.sequencer is not None else self.sequence + 1
        return self.sequence

    def arrival_span(self) -> tuple[float | None, float | None]:
        """Oldest and newest feedback arrival learned since the last publish."""
        if not self.arrivals:
            return None, None
        return min(self.arrivals), max(self.arrivals)

    def record(self, snap: PublishedSnapshot) -> None:
        """``snap`` was just published: it becomes the latest (and a rollback target if ready)."""
        if snap.feedback_oldest is not None:
            self.latencies.append(snap.published_at - snap.feedback_oldest)
        self.latest = snap
        if snap.ready:
            self.ready_history.append(snap)
        self.published += 1
        self.batches_since = 0
        self.last_publish_at = snap.published_at
        self.arrivals = []

    def for_serving(self, include_unready: bool = False) -> PublishedSnapshot | None:
        """The latest snapshot if it is ready (or regardless, with ``include_unready``)."""
        snap = self.latest
        if snap is None or (not snap.ready and not include_unready):
            return None
        return snap

    def last_ready(self, before: float | None = None) -> PublishedSnapshot | None:
        """The newest kept ready snapshot; with ``before``, the newest published before
        that time, or the oldest kept when all are later (the least exposed)."""
        if not self.ready_history:
            return None
        if before is None:
            return self.ready_history[-1]
        earlier = [snap for snap in self.ready_history if snap.published_at < before]
        return earlier[-1] if earlier else self.ready_history[0]

    def rolled_back(self) -> None:
        """The model went back to ``last_ready()``: nothing is served until it is ready again."""
        self.rollbacks += 1
        self.latest = None

    def latency_percentile(self, q: float) -> float | None:
        """The ``q``-th percentile of feedback-to-publish latency (oldest feedback), seconds."""
        if not self.latencies:
            return None
        return float(np.percentile(np.asarray(self.latencies, dtype=np.float64), q))


def deliver(sink: SnapshotSink | None, snap: PublishedSnapshot) -> bool:
    """Hand ``snap`` to the sink; a failure is logged and reported (False), never raised:
    the registry must not stop learning."""
    if sink is None:
        return True
    try:
        sink(snap.version, snap.blob, snap.lineage)
    except Exception:
        logger.exception("snapshot sink failed for %s", snap.version)
        return False
    return True
