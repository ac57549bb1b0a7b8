"""The learner service: feedback in, validated mini-batches learned, snapshots published.

``OnlineLearner`` is a plain class (tested in-process); serving runs it as a Ray actor
(``ray.remote(OnlineLearner)``). Its loop, driven by the calls it receives:

1. ``record_served`` keeps what serving showed per request (``ServedRecord``).
2. ``add_feedback`` checks a feedback batch (``online_layer.validation``): a batch that fails
   any check is rejected whole and counted by reason. Accepted rows join their served
   record and wait for their final label (``online_layer.join``).
3. Joined examples are emitted when their window closes (or at once, with
   ``emit="on_arrival"``) and form mini-batches by size (``batch_size``) or by time
   (``max_batch_delay_s``). Each mini-batch passes the click-flood check, is scored as
   serving would score it (rank-time position token) and by the base alone (progressive
   validation), and is then learned with the position it was shown at, plus an optional
   sample from the replay buffer.
4. Every ``publish_every_batches`` batches or ``publish_every_s`` seconds it publishes a
   snapshot: kept for ``latest_snapshot`` and handed to the injected ``snapshot_sink``
   (the model registry).

A layer is bound to one base version. ``rebase`` retires it (pending feedback for the old
base is dropped) and starts a fresh layer for the new base, optionally warm-started from
replayed events; ``latest_snapshot`` returns nothing until that layer passes its readiness
check, so serving runs the base alone meanwhile.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np

from feature_store.catalog import FRESH_ITEM_FEATURES
from online_layer._ftrl import kernel_version
from online_layer.config import OnlineLayerConfig
from online_layer.errors import InputError, ServedRecordError
from online_layer.features import OnlineFeaturizer, OnlineInputs
from online_layer.ftrl import FTRLProximal
from online_layer.join import Emitted, FeedbackJoiner, ServedRecord, to_us
from online_layer.metrics import ProgressiveMetrics, ProgressiveSummary, RollingWindow
from online_layer.model import OnlineModel
from online_layer.reference import FTRLReference
from online_layer.replay import ReplayBuffer
from online_layer.validation import (
    BatchRejected,
    LabelRateGuard,
    RejectReason,
    check_feedback,
    to_table,
)

logger = logging.getLogger(__name__)

def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


SnapshotSink = Callable[[str, bytes, dict[str, Any]], None]
MODELS: dict[str, type[OnlineModel]] = {"cython": FTRLProximal, "numpy": FTRLReference}


@dataclass(frozen=True)
class FeedbackResult:
    """What ``add_feedback`` did with one batch."""

    accepted: int  # rows joined to a served record
    dropped: int  # rows for closed or retired requests, or repeats of an emitted label
    rejected: str | None  # the RejectReason value when the whole batch was rejected
    detail: str  # why, when rejected
    batches_learned: int  # mini-batches learned during this call


@dataclass(frozen=True, eq=False)
class ReplayBatch:
    """Already featurized examples to learn (warm start of a new layer, or catch-up).

    ``inputs`` are the rows as served (any position token); ``positions`` the positions
    shown (-1 or None: unknown); ``event_time`` (datetime64) buckets the progressive
    metrics by day.
    """

    base_version: str
    inputs: OnlineInputs
    labels: np.ndarray
    positions: np.ndarray | None = None
    event_time: np.ndarray | None = None


@dataclass(frozen=True)
class Readiness:
    """Whether the current layer may be served, and why (or why not)."""

    ready: bool
    reason: str
    examples_learned: int
    rolling_examples: int
    rolling_logloss_hybrid: float | None
    rolling_logloss_base: float | None
    rolling_auc_hybrid: float | None = None
    rolling_auc_base: float | None = None


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
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class OnlineLearner:
    """Learns the online correction for one base version from live feedback.

    Parameters
    ----------
    config : OnlineLayerConfig or mapping
        Settings (a mapping is checked by ``OnlineLayerConfig.from_dict``; Ray passes
        ``asdict(cfg)``).
    base_version : str
        The base model version the layer corrects.
    embedding_dim : int
        That base model's embedding size.
    fresh_features : sequence of str
        Fresh counter names, in the featurizer's column order.
    snapshot_sink : callable, optional
        ``sink(version, blob, lineage)`` called on every publish (the registry). Its
        failures are logged and counted, never raised into the learning loop.
    clock : callable
        Wall clock in unix seconds (injectable for tests).
    """

    def __init__(
        self,
        config: OnlineLayerConfig | Mapping[str, Any] | None,
        base_version: str,
        embedding_dim: int,
        fresh_features: Sequence[str] = FRESH_ITEM_FEATURES,
        snapshot_sink: SnapshotSink | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if isinstance(config, OnlineLayerConfig):
            cfg = config
        else:
            cfg = OnlineLayerConfig.from_dict(config or {})
        self.config = cfg
        self._clock = clock
        self._sink = snapshot_sink
        self._fresh_features = tuple(fresh_features)
        self._lock = threading.RLock()
        self._ticker: threading.Thread | None = None
        self._ticker_stop = threading.Event()
        self._guard = LabelRateGuard(
            cfg.label_rate_halflife,
            cfg.label_rate_min_events,
            cfg.label_rate_factor,
            cfg.label_rate_z,
            cfg.label_rate_two_sided,
        )
        self._joiner = FeedbackJoiner(
            cfg.join_window_s,
            cfg.max_clock_skew_s,
            cfg.max_pending_requests,
            cfg.emit,
            cfg.implicit_negatives,
        )
        self._rejected_batches: Counter[str] = Counter()
        self._rejected_rows: Counter[str] = Counter()
        self._dropped: Counter[str] = Counter()
        self._accepted_rows = 0
        self._sink_failures = 0
        self._generation = 0
        self._start_layer(base_version, embedding_dim)

    # -- layer lifecycle ------------------------------------------------------------------

    def _start_layer(self, base_version: str, embedding_dim: int) -> None:
        cfg = self.config
        self.featurizer = OnlineFeaturizer(
            embedding_dim, self._fresh_features, cfg.hash_bits, cfg.position_buckets
        )
        self.model: OnlineModel = MODELS[cfg.implementation](
            self.featurizer.n_dense, cfg.hash_bits, base_version, **cfg.ftrl_params()
        )
        self._pending: deque[Emitted] = deque()
        self._pending_count = 0
        self._pending_since: float | None = None
        self._replay = (
            ReplayBuffer(cfg.replay_capacity, self.featurizer.n_dense, self.featurizer.n_sparse,
                         cfg.seed)
            if cfg.replay_fraction > 0
            else None
        )
        self._metrics = ProgressiveMetrics()
        self._rolling = RollingWindow(cfg.readiness_window)
        self._batches = 0
        self._examples = 0
        self._replayed = 0
        self._warm_start = 0
        self._learn_seconds = 0.0
        self._sequence = 0
        self._latest: PublishedSnapshot | None = None
        self._ready_history: deque[PublishedSnapshot] = deque(maxlen=cfg.keep_snapshots)
        self._batches_since_publish = 0
        self._last_publish_at = self._clock()
        self._since_publish_arrivals: list[float] = []
        self._latencies: deque[float] = deque(maxlen=1000)
        self._published = 0
        self._rollbacks = 0
        self._event_window: list[int] = []

    @property
    def base_version(self) -> str:
        return self.model.base_version

    def rebase(
        self,
        new_base_version: str,
        embedding_dim: int | None = None,
        replay: Iterable[ReplayBatch] | None = None,
    ) -> LearnerReport:
        """Retire the layer for the old base and start one for ``new_base_version``.

        Pending served records and unlearned examples of the old base are dropped (counted
        as ``retired``); feedback for them that arrives later is dropped too. The new layer
        starts from zero weights (the base alone) and, if ``replay`` is given, learns those
        already featurized batches first (a warm start; they count toward readiness).
        ``latest_snapshot`` returns None until the new layer is ready.

        Raises
        ------
        InputError
            ``new_base_version`` is empty or the current one.
        """
        with self._lock:
            if not isinstance(new_base_version, str) or not new_base_version:
                raise InputError("new_base_version must be a non-empty string")
            if new_base_version == self.base_version:
                raise InputError(f"the layer already corrects base {new_base_version!r}")
            old = self.base_version
            retired = self._joiner.retire_all() + self._pending_count
            self._dropped["retired"] += retired
            self._generation += 1
            self._start_layer(new_base_version, embedding_dim or self.featurizer.embedding_dim)
            logger.info(
                "retired the online layer for base %s (%d pending examples dropped); "
                "generation %d corrects base %s",
                old, retired, self._generation, new_base_version,
            )
            if replay is not None:
                self.learn_replay(replay)
            return self.report()

    # -- inputs ---------------------------------------------------------------------------

    def record_served(self, records: ServedRecord | Sequence[ServedRecord]) -> int:
        """Keep what serving showed, for joining feedback; returns how many were recorded.

        Raises
        ------
        ServedRecordError
            Something that is not a ``ServedRecord`` (a bug in the caller). Records whose
            values are bad (NaN inputs, other widths) are kept and make their feedback
            batches fail validation, where they are counted.
        """
        items = [records] if isinstance(records, ServedRecord) else list(records)
        with self._lock:
            for record in items:
                if not isinstance(record, ServedRecord):
                    raise ServedRecordError(
                        f"record_served takes ServedRecord objects, got {type(record).__name__}"
                    )
            now = self._clock()
            for record in items:
                self._enqueue(self._joiner.add(record, self._problem(record.inputs)), now)
            self._drive(now)
            return len(items)

    def _problem(self, inputs: OnlineInputs) -> tuple[RejectReason, str] | None:
        f = self.featurizer
        if inputs.n_dense != f.n_dense or inputs.n_sparse != f.n_sparse:
            return (
                RejectReason.SCHEMA_SKEW,
                f"served inputs have {inputs.n_dense} dense / {inputs.n_sparse} sparse "
                f"columns; the layer has {f.n_dense} / {f.n_sparse}",
            )
        if not inputs.all_finite():
            return RejectReason.NON_FINITE, "served inputs hold NaN or inf"
        if inputs.sparse.size and (
            inputs.sparse.min() < 0 or inputs.sparse.max() >= (1 << f.hash_bits)
        ):
            return RejectReason.OUT_OF_RANGE, "served inputs hold a hashed index outside the table"
        return None

    def add_feedback(self, events: Any) -> FeedbackResult:
        """Validate one feedback batch (events schema: Arrow table or list of dicts), join
        it, and learn whatever mini-batches it completes.

        A batch that fails validation is rejected whole (``FeedbackResult.rejected`` names
        the reason); it never raises for bad data.
        """
        with self._lock:
            now = self._clock()
            try:
                table = to_table(events)
                columns = check_feedback(table, self.config.max_position)
                plan = self._joiner.plan(columns, self.base_version)
            except BatchRejected as rejection:
                self._reject(rejection)
                return FeedbackResult(0, 0, rejection.reason.value, rejection.detail, 0)
            emitted, dropped = self._joiner.apply(plan, now)
            self._dropped.update(dropped)
            accepted = len(plan.rows) - dropped.get("duplicate", 0)
            self._accepted_rows += accepted
            self._enqueue(emitted, now)
            learned = self._drive(now)
            return FeedbackResult(accepted, sum(dropped.values()), None, "", learned)

    def learn_replay(self, batches: Iterable[ReplayBatch]) -> int:
        """Learn already featurized examples (progressively validated, no flood check).

        Each batch is checked like feedback (base version, widths, finite values, labels,
        positions) and rejected whole, counted by reason, if it fails. Returns the number
        of mini-batches learned.
        """
        learned = 0
        with self._lock:
            for batch in batches:
                try:
                    checked = self._check_replay(batch)
                except BatchRejected as rejection:
                    self._reject(rejection)
                    continue
                inputs, labels, positions, days = checked
                size = self.config.batch_size
                for start in range(0, len(inputs), size):
                    part = slice(start, start + size)
                    self._learn(
                        self.featurizer.with_positions(inputs.take(part), None),
                        positions[part],
                        labels[part],
                        days[part],
                        arrived=np.full(labels[part].shape[0], np.nan),
                    )
                    self._warm_start += labels[part].shape[0]
                    learned += 1
            self._maybe_publish(self._clock(), force=learned > 0)
        return learned

    def _check_replay(
        self, batch: ReplayBatch
    ) -> tuple[OnlineInputs, np.ndarray, np.ndarray, np.ndarray]:
        if not isinstance(batch, ReplayBatch):
            raise BatchRejected(
                RejectReason.SCHEMA_SKEW, f"expected ReplayBatch, got {type(batch).__name__}"
            )
        n = len(batch.inputs)
        if batch.base_version != self.base_version:
            raise BatchRejected(
                RejectReason.BASE_VERSION,
                f"replay batch is for base {batch.base_version!r}; this layer corrects "
                f"base {self.base_version!r}",
                n,
            )
        problem = self._problem(batch.inputs)
        if problem is not None:
            raise BatchRejected(problem[0], problem[1], n)
        labels = np.asarray(batch.labels, dtype=np.float64)
        if labels.shape != (n,):
            raise BatchRejected(
                RejectReason.SCHEMA_SKEW, f"labels have shape {labels.shape}, expected ({n},)", n
            )
        if not np.isfinite(labels).all():
            raise BatchRejected(RejectReason.NON_FINITE, "a replay label is NaN or inf", n)
        if ((labels < 0) | (labels > 1)).any():
            raise BatchRejected(RejectReason.OUT_OF_RANGE, "a replay label is outside [0, 1]", n)
        if batch.positions is None:
            positions = np.full(n, -1, dtype=np.int64)
        else:
            positions = np.asarray(batch.positions)
            if positions.shape != (n,) or not np.issubdtype(positions.dtype, np.integer):
                raise BatchRejected(
                    RejectReason.SCHEMA_SKEW, f"positions must be {n} integers", n
                )
            if (positions > self.config.max_position).any():
                raise BatchRejected(RejectReason.OUT_OF_RANGE, "a replay position is too large", n)
            positions = positions.astype(np.int64)
        if batch.event_time is None:
            days = np.full(n, np.datetime64("NaT"), dtype="datetime64[D]")
        else:
            days = np.asarray(batch.event_time).astype("datetime64[D]")
            if days.shape != (n,):
                raise BatchRejected(RejectReason.SCHEMA_SKEW, f"event_time must have {n} entries", n)
        return batch.inputs, labels, positions, days

    # -- the loop -------------------------------------------------------------------------

    def _reject(self, rejection: BatchRejected) -> None:
        reason = rejection.reason.value
        self._rejected_batches[reason] += 1
        self._rejected_rows[reason] += rejection.rows
        logger.warning("rejected a batch of %d rows: %s: %s", rejection.rows, reason,
                       rejection.detail)

    def _enqueue(self, emitted: list[Emitted], now: float) -> None:
        for group in emitted:
            if len(group):
                if not self._pending:
                    self._pending_since = now
                self._pending.append(group)
                self._pending_count += len(group)

    def _take(self, k: int) -> Emitted:
        parts: list[Emitted] = []
        taken = 0
        while taken < k and self._pending:
            group = self._pending.popleft()
            if taken + len(group) > k:
                group, rest = group.split(k - taken)
                self._pending.appendleft(rest)
            parts.append(group)
            taken += len(group)
        self._pending_count -= taken
        if not self._pending:
            self._pending_since = None
        return Emitted.concat(parts)

    def _drive(self, now: float, force: bool = False) -> int:
        """Learn full batches; a partial one if forced or its oldest example waited long
        enough; then publish if due. Returns the batches learned."""
        size = self.config.batch_size
        learned = 0
        while self._pending_count >= size:
            learned += self._learn_emitted(self._take(size))
        due = (
            self._pending_since is not None
            and now - self._pending_since >= self.config.max_batch_delay_s
        )
        if self._pending_count and (force or due):
            learned += self._learn_emitted(self._take(self._pending_count))
        self._maybe_publish(now, force=force)
        return learned

    def _learn_emitted(self, batch: Emitted) -> int:
        days = batch.request_us.astype("datetime64[us]").astype("datetime64[D]")
        return int(
            self._learn(batch.inputs, batch.positions, batch.labels, days, batch.arrived,
                        check_flood=True)
        )

    def _learn(
        self,
        served: OnlineInputs,
        positions: np.ndarray,
        labels: np.ndarray,
        days: np.ndarray,
        arrived: np.ndarray,
        check_flood: bool = False,
    ) -> bool:
        """Flood check, progressive validation, then one ``learn_many``. Returns False if
        the batch was rejected."""
        n = labels.shape[0]
        if check_flood:
            verdict = self._guard.observe(labels)
            if verdict is not None:
                self._reject(BatchRejected(RejectReason.LABEL_FLOOD, verdict, n))
                return False
        start = time.perf_counter()
        hybrid = self.model.predict_many(served)
        base = served.base_logit
        self._metrics.update(days, labels, hybrid, base)
        self._rolling.add(labels, hybrid, base)
        shown = self.featurizer.with_positions(served, positions)
        learn_inputs, learn_labels = shown, labels
        if self._replay is not None:
            sample = self._replay.sample(int(round(self.config.replay_fraction * n)))
            if sample is not None:
                learn_inputs = OnlineInputs.concat([shown, sample[0]])
                learn_labels = np.concatenate([labels, sample[1]])
                self._replayed += len(sample[0])
            self._replay.add(shown, labels)
        self.model.learn_many(learn_inputs, learn_labels)
        self._learn_seconds += time.perf_counter() - start
        self._batches += 1
        self._examples += n
        self._batches_since_publish += 1
        seen = arrived[np.isfinite(arrived)]
        if seen.size:
            self._since_publish_arrivals.extend((float(seen.min()), float(seen.max())))
        valid_days = days[~np.isnat(days)]
        if valid_days.size:
            lo = int(valid_days.min().astype(np.int64))
            hi = int(valid_days.max().astype(np.int64))
            self._event_window = [min(self._event_window[0], lo), max(self._event_window[1], hi)] \
                if self._event_window else [lo, hi]
        return True

    def tick(self, event_time: datetime | None = None) -> int:
        """Run the time-based triggers now (learn a waiting partial batch, publish).

        ``event_time`` moves the join watermark forward, closing windows on an idle live
        stream. Returns the batches learned.
        """
        with self._lock:
            now = self._clock()
            if event_time is not None:
                self._enqueue(self._joiner.advance(to_us(event_time)), now)
            return self._drive(now)

    def flush(self, close_pending: bool = False) -> int:
        """Learn every emitted example now, and publish if anything was learned since the
        last publish. ``close_pending`` first closes every open join window (end of a
        stream or a replay). Returns the batches learned."""
        with self._lock:
            now = self._clock()
            if close_pending:
                self._enqueue(self._joiner.close_all(), now)
            return self._drive(now, force=True)

    # -- publishing -----------------------------------------------------------------------

    def _maybe_publish(self, now: float, force: bool = False) -> None:
        if self._batches_since_publish == 0:
            return
        cfg = self.config
        if (
            force
            or self._batches_since_publish >= cfg.publish_every_batches
            or now - self._last_publish_at >= cfg.publish_every_s
        ):
            self._publish(now)

    def publish(self) -> PublishedSnapshot:
        """Publish the current weights now (whether or not anything changed)."""
        with self._lock:
            return self._publish(self._clock())

    def _publish(self, now: float) -> PublishedSnapshot:
        self._sequence += 1
        version = f"ol-{self.base_version}-g{self._generation}-{self._sequence:06d}"
        readiness = self.readiness()
        parent = self._latest.version if self._latest is not None else None
        metadata = {
            "version": version,
            "layout": self.featurizer.layout(),
            "generation": self._generation,
            "sequence": self._sequence,
            "ready": readiness.ready,
            "implementation": self.model.implementation,
            "kernel_version": kernel_version(),
        }
        blob = self.model.snapshot(metadata)
        window = self._event_window
        lineage = {
            "tier": "online",
            "version": version,
            "base_version": self.base_version,
            "parent_version": parent,
            "generation": self._generation,
            "sequence": self._sequence,
            "batches_learned": self._batches,
            "examples_learned": self._examples,
            "warm_start_examples": self._warm_start,
            "data_window": {
                "first_day": str(np.datetime64(window[0], "D")) if window else None,
                "last_day": str(np.datetime64(window[1], "D")) if window else None,
            },
            "readiness": asdict(readiness),
            "progressive": asdict(self._metrics.overall()),
            "params": self.config.ftrl_params(),
            "layout": self.featurizer.layout(),
            "kernel_version": kernel_version(),
            "published_at": now,
        }
        arrivals = self._since_publish_arrivals
        snap = PublishedSnapshot(
            version=version,
            base_version=self.base_version,
            blob=blob,
            published_at=now,
            ready=readiness.ready,
            lineage=lineage,
            feedback_oldest=min(arrivals) if arrivals else None,
            feedback_newest=max(arrivals) if arrivals else None,
        )
        if snap.feedback_oldest is not None:
            self._latencies.append(now - snap.feedback_oldest)
        self._latest = snap
        if readiness.ready:
            self._ready_history.append(snap)
        self._published += 1
        self._batches_since_publish = 0
        self._last_publish_at = now
        self._since_publish_arrivals = []
        logger.info("published %s (ready=%s: %s)", version, readiness.ready, readiness.reason)
        if self._sink is not None:
            try:
                self._sink(version, blob, lineage)
            except Exception:  # the registry must not stop learning
                self._sink_failures += 1
                logger.exception("snapshot sink failed for %s", version)
        return snap

    def latest_snapshot(self, include_unready: bool = False) -> PublishedSnapshot | None:
        """The latest published snapshot if it passed its readiness check, else None
        (serving runs the base alone). ``include_unready`` returns it regardless."""
        with self._lock:
            snap = self._latest
            if snap is None or (not snap.ready and not include_unready):
                return None
            return snap

    def latest_version(self) -> str | None:
        """The version ``latest_snapshot()`` would return (cheap to poll: no blob)."""
        snap = self.latest_snapshot()
        return None if snap is None else snap.version

    def rollback(self) -> str | None:
        """Restore the last ready snapshot of this layer (after the circuit breaker
        tripped); the rolling metric restarts, so readiness must be earned again. Returns
        the restored version, or None when there is none."""
        with self._lock:
            if not self._ready_history:
                return None
            snap = self._ready_history[-1]
            self.model.restore(snap.blob, self.base_version)
            self._rolling.clear()
            self._rollbacks += 1
            self._latest = None
            logger.warning("rolled the online layer back to %s", snap.version)
            return snap.version

    # -- status ---------------------------------------------------------------------------

    def readiness(self) -> Readiness:
        """Ready when the layer has learned ``readiness_min_examples`` and, over the last
        ``readiness_window`` progressively scored examples, its log loss is no worse than
        the base's (within ``readiness_tolerance``, relative) and its AUC no worse than the
        base's (within ``readiness_auc_tolerance``). Both matter: a layer can fix the
        base's calibration (better log loss) while adding ranking noise (worse AUC)."""
        cfg = self.config
        losses = self._rolling.log_losses()
        h, b = losses if losses is not None else (None, None)
        auc_h, auc_b = self._rolling.aucs()
        window = self._rolling.examples
        if self._examples < cfg.readiness_min_examples:
            ready, reason = False, (
                f"learned {self._examples} of {cfg.readiness_min_examples} examples"
            )
        elif h is None or b is None:
            ready, reason = False, "no progressive validation since the last rollback"
        elif h > b * (1.0 + cfg.readiness_tolerance):
            ready, reason = False, f"rolling log loss {h:.5f} > base {b:.5f} over {window} examples"
        elif auc_h is not None and auc_b is not None and auc_h < auc_b - cfg.readiness_auc_tolerance:
            ready, reason = False, f"rolling AUC {auc_h:.4f} < base {auc_b:.4f} over {window} examples"
        else:
            ready, reason = True, (
                f"rolling log loss {h:.5f} <= base {b:.5f} and AUC "
                f"{_fmt(auc_h)} vs base {_fmt(auc_b)} over {window} examples"
            )
        return Readiness(ready, reason, self._examples, window, h, b, auc_h, auc_b)

    def report(self) -> LearnerReport:
        with self._lock:
            latencies = np.asarray(self._latencies, dtype=np.float64)
            watermark = self._joiner.watermark_us
            return LearnerReport(
                base_version=self.base_version,
                generation=self._generation,
                implementation=self.model.implementation,
                batches_learned=self._batches,
                examples_learned=self._examples,
                replay_buffer_examples=self._replayed,
                warm_start_examples=self._warm_start,
                learn_seconds=self._learn_seconds,
                examples_per_s=self._examples / self._learn_seconds if self._learn_seconds else 0.0,
                feedback_rows_accepted=self._accepted_rows,
                rejected_batches=dict(self._rejected_batches),
                rejected_rows=dict(self._rejected_rows),
                dropped_rows=dict(self._dropped),
                pending_requests=self._joiner.pending_requests,
                pending_examples=self._pending_count,
                progressive=self._metrics.overall(),
                progressive_by_day=self._metrics.by_day(),
                readiness=self.readiness(),
                published=self._published,
                last_published_version=None if self._latest is None else self._latest.version,
                publish_latency_p50_s=float(np.percentile(latencies, 50)) if latencies.size else None,
                publish_latency_p95_s=float(np.percentile(latencies, 95)) if latencies.size else None,
                sink_failures=self._sink_failures,
                rollbacks=self._rollbacks,
                nonzero_weights=self.model.nnz(),
                watermark=(
                    None if watermark is None
                    else datetime.fromtimestamp(watermark / 1e6, UTC).isoformat()
                ),
                extra={"closed_early": self._joiner.closed_early,
                       "label_rate": self._guard.rate},
            )

    # -- a background ticker for actors ---------------------------------------------------

    def start_ticker(self, interval_s: float = 0.5) -> None:
        """Call ``tick()`` every ``interval_s`` seconds on a daemon thread, so time-based
        batches and publishes happen even when no call arrives (for the Ray actor)."""
        with self._lock:
            if self._ticker is not None:
                return
            self._ticker_stop.clear()

            def loop() -> None:
                while not self._ticker_stop.wait(interval_s):
                    try:
                        self.tick()
                    except Exception:
                        logger.exception("online learner tick failed")

            self._ticker = threading.Thread(target=loop, name="online-learner-tick", daemon=True)
            self._ticker.start()

    def stop_ticker(self) -> None:
        thread = self._ticker
        if thread is not None:
            self._ticker_stop.set()
            thread.join(timeout=5)
            self._ticker = None
