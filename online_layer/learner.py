"""The learner service: feedback in, validated mini-batches learned, snapshots published.

``OnlineLearner`` is a plain class (tested in-process); serving runs it as a Ray actor
(``ray.remote(OnlineLearner)``). Its loop, driven by the calls it receives:

1. ``record_served`` keeps what serving showed per request (``ServedRecord``).
2. ``add_feedback`` checks a feedback batch (``online_layer.validation``): a batch that fails
   any check is rejected whole and counted by reason. Accepted rows join their served
   record and wait for their final label (``online_layer.join``).
3. Joined examples are emitted when their window closes (or at once, with
   ``emit="on_arrival"``) and form mini-batches by size (``batch_size``) or by time
   (``max_batch_delay_s``; ``online_layer.batching``). Each mini-batch passes the
   click-flood check, is scored as serving would score it (rank-time position token) and
   by the base alone (progressive validation), and is then learned with the position it
   was shown at, plus an optional sample from the replay buffer (``online_layer.layer``).
   Before that, the manipulation guard (``online_layer.defences.FeedbackGuard``, settings
   ``[online_layer.guard]``) screens the mini-batch: examples beyond a user's caps, over
   the new-user budget, or new users' clicks in a coordinated burst are quarantined
   (counted by reason, never learned, never scored). Only kept examples are scored and
   learned, so readiness and the breaker are judged on data an attacker cannot dominate;
   every hybrid score (progressive and serving) clips the correction to ``max_correction``.
4. The circuit breaker (``online_layer.breaker``, ``[online_layer.breaker]``) gets every
   learned batch's per-example hybrid and base log losses with their users, on the
   learner's wall clock. When it opens, the layer rolls back to its last good snapshot
   (the newest ready one published before the losing run began), ``latest_snapshot``
   returns nothing and ``serving_view`` tells serving to run the base alone
   (``FALLBACK_REASON_BREAKER_OPEN``); learning goes on, and after the cool-down the
   half-open test on fresh events decides whether it closes (then a snapshot is
   published at once).
5. Every ``publish_every_batches`` batches or ``publish_every_s`` seconds it publishes a
   snapshot (``online_layer.publishing``, ``online_layer.lineage``), numbered by
   ``sequencer``, for ``latest_snapshot`` and the injected ``snapshot_sink`` (the registry).

Time: the join, the watermark and the guard run on event time; no request or feedback
time may move the watermark more than ``max_served_ahead_s`` past the wall clock (it is
clamped there and counted), so one call "from next year" cannot stop learning.

A layer is bound to one base version: all its state is one ``Layer``. ``rebase`` retires
it (pending feedback for the old base is dropped) and starts a new ``Layer`` for the new
base, optionally warm-started from replayed events (``online_layer.warm_start``);
``latest_snapshot`` returns nothing until that layer passes its readiness check
(``online_layer.readiness``), so serving runs the base alone meanwhile.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any

import numpy as np

from feature_store.catalog import FRESH_ITEM_FEATURES
from online_layer.config import OnlineLayerConfig
from online_layer.errors import InputError
from online_layer.features import OnlineFeaturizer
from online_layer.batching import oldest_unlearned
from online_layer.intake import FeedbackIntake
from online_layer.layer import Layer
from online_layer.lineage import snapshot_of
from online_layer.model import OnlineModel
from online_layer.publishing import PublishedSnapshot, Sequencer, ServingView, SnapshotSink, deliver
from online_layer.readiness import Readiness, assess
from online_layer.reports import FeedbackResult, LearnerReport, build_report
from online_layer.safety import Safety
from online_layer.served import Emitted, ServedRecord, to_us
from online_layer.ticker import Ticker
from online_layer.validation import BatchRejected, FeedbackEvents, LabelRateGuard, RejectReason
from online_layer.warm_start import ReplayBatch, as_emitted, check_replay

# The result types live beside their jobs; they are named here too, for callers that
# import them with the learner.
__all__ = [
    "FeedbackResult",
    "LearnerReport",
    "OnlineLearner",
    "PublishedSnapshot",
    "Readiness",
    "ReplayBatch",
    "ServingView",
    "SnapshotSink",
]

logger = logging.getLogger(__name__)


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
    established_users : callable, optional
        ``established_users(user_id) -> bool``: users known before this learner started
        (serving passes the base's training vocabulary), never counted as new by the guard.
        Without it every user earns tenure (``[online_layer.guard]`` ``new_user_*``).
    sequencer : callable, optional
        ``next() -> int`` numbering every layer's publishes (default: from 1, in-process).
    """

    def __init__(
        self,
        config: OnlineLayerConfig | Mapping[str, Any] | None,
        base_version: str,
        embedding_dim: int,
        fresh_features: Sequence[str] = FRESH_ITEM_FEATURES,
        snapshot_sink: SnapshotSink | None = None,
        clock: Callable[[], float] = time.time,
        established_users: Callable[[str], bool] | None = None,
        sequencer: Sequencer | None = None,
    ) -> None:
        if isinstance(config, OnlineLayerConfig):
            cfg = config
        else:
            cfg = OnlineLayerConfig.from_dict(config or {})
        self.config = cfg
        self._clock = clock
        self._sink = snapshot_sink
        self.sequencer = sequencer or itertools.count(1).__next__
        self._fresh_features = tuple(fresh_features)
        self._lock = threading.RLock()
        self._ticker: Ticker | None = None
        self._guard = LabelRateGuard(
            cfg.label_rate_halflife,
            cfg.label_rate_min_events,
            cfg.label_rate_factor,
            cfg.label_rate_z,
            cfg.label_rate_two_sided,
        )
        self._intake = FeedbackIntake(cfg)
        self._safety = Safety(cfg, established_users)
        self._sink_failures = 0
        self._layer = self._new_layer(base_version, embedding_dim, generation=0)

    # -- the layer and its base -----------------------------------------------------------

    def _new_layer(self, base_version: str, embedding_dim: int, generation: int) -> Layer:
        return Layer.start(
            self.config, base_version, embedding_dim, self._fresh_features, generation,
            self._clock(), self.sequencer,
        )

    @property
    def base_version(self) -> str:
        return self._layer.base_version

    @property
    def model(self) -> OnlineModel:
        """The current layer's model (serving restores a resumed snapshot into it)."""
        return self._layer.model

    @property
    def featurizer(self) -> OnlineFeaturizer:
        """The current layer's featurizer (its ``layout()`` is in every snapshot)."""
        return self._layer.featurizer

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
            old = self._layer
            retired = self._intake.retire(old.pending.count)
            self._layer = self._new_layer(
                new_base_version, embedding_dim or old.featurizer.embedding_dim,
                generation=old.generation + 1,
            )
            logger.info(
                "retired the online layer for base %s (%d pending examples dropped); "
                "generation %d corrects base %s",
                old.base_version, retired, self._layer.generation, new_base_version,
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
            now = self._clock()
            emitted, kept = self._intake.served(items, self.featurizer, now)
            self._safety.note_requests([r.user_id for r in kept], self._event_now())
            self._layer.pending.add(emitted, now)
            self._drive(now)
            return len(kept)

    def add_feedback(self, events: FeedbackEvents) -> FeedbackResult:
        """Validate one feedback batch (events schema: Arrow table or list of dicts), join
        it, and learn whatever mini-batches it completes.

        A batch that fails validation is rejected whole (``FeedbackResult.rejected`` names
        the reason); it never raises for bad data.
        """
        with self._lock:
            now = self._clock()
            result, emitted = self._intake.feedback(events, self.base_version, now)
            if result.rejected is not None:
                return result
            self._layer.pending.add(emitted, now)
            return replace(result, batches_learned=self._drive(now))

    def established_users(self, user_ids: Sequence[str]) -> Any:
        """Boolean mask: which users the manipulation guard does not count as new now.
        Serving feeds only their feedback to the fresh item counters, so made-up users
        cannot move an item's live counters (and through them the base's score) either."""
        with self._lock:
            return self._safety.established(list(user_ids), self._event_now())

    def learn_replay(self, batches: Iterable[ReplayBatch]) -> int:
        """Learn already featurized examples through the live door: each batch is checked
        like feedback (base version, widths, finite values, labels, positions, ids; rejected
        whole, counted by reason), then screened by the guard, flood-checked, learned and
        judged by the breaker mini-batch by mini-batch (``online_layer.warm_start``).
        Returns the number of mini-batches learned."""
        learned = 0
        with self._lock:
            layer, cfg = self._layer, self.config
            for batch in batches:
                try:
                    checked = check_replay(batch, layer.base_version, layer.featurizer,
                                           cfg.max_position, require_ids=self._safety.screening,
                                           max_id_chars=cfg.max_id_chars)
                except BatchRejected as rejection:
                    self._intake.reject(rejection)
                    continue
                for part in as_emitted(checked, layer.featurizer, cfg.batch_size):
                    examples = layer.examples
                    learned += self._learn_emitted(part)
                    layer.warm_start += layer.examples - examples
            self._maybe_publish(self._clock(), force=learned > 0)
        return learned

    # -- the loop -------------------------------------------------------------------------

    def _drive(self, now: float, force: bool = False) -> int:
        """Learn full batches; a partial one if forced or its oldest example waited long
        enough; then publish if due. Returns the batches learned."""
        pending = self._layer.pending
        size = self.config.batch_size
        learned = 0
        while pending.count >= size:
            learned += self._learn_emitted(pending.take(size))
        due = pending.waited(now) >= self.config.max_batch_delay_s
        if pending.count and (force or due):
            learned += self._learn_emitted(pending.take(pending.count))
        self._maybe_publish(now, force=force)
        return learned

    def _event_now(self) -> float:
        """The learner's event time (its join watermark; the wall clock before any)."""
        watermark = self._intake.joiner.watermark_us
        return self._clock() if watermark is None else watermark / 1e6

    def _learn_emitted(self, batch: Emitted) -> int:
        """Screen, flood-check, then learn one mini-batch of joined examples and let the
        breaker judge it; 1 if learned, else 0."""
        batch = self._safety.screen(batch, self._event_now())
        if len(batch) == 0:
            return 0
        verdict = self._guard.observe(batch.labels)
        if verdict is not None:
            self._intake.reject(BatchRejected(RejectReason.LABEL_FLOOD, verdict, len(batch)))
            return 0
        days = batch.request_us.astype("datetime64[us]").astype("datetime64[D]")
        hybrid_loss, base_loss = self._layer.learn(
            batch.inputs, batch.positions, batch.labels, days, batch.arrived,
            self.config.replay_fraction,
        )
        if self._safety.judge(self._layer, batch.users.tolist(), hybrid_loss, base_loss,
                              self._clock()):
            self._publish(self._clock())  # closed on evidence: serve the layer at once
        return 1

    def force_breaker_open(self, reason: str) -> str | None:
        """Open the circuit breaker by operator decision: base alone, roll back, cool
        down, then the half-open test. Returns the version rolled back to (None: none)."""
        with self._lock:
            return self._safety.force_open(self._layer, reason, self._clock())

    def tick(self, event_time: datetime | None = None) -> int:
        """Run the time-based triggers now (learn a waiting partial batch, publish).

        ``event_time`` moves the join watermark forward, closing windows on an idle live
        stream. Returns the batches learned.
        """
        with self._lock:
            now = self._clock()
            if self._safety.poll(self._layer, now):  # open -> half-open without traffic
                self._publish(now)
            if event_time is not None:
                self._layer.pending.add(
                    self._intake.joiner.advance(to_us(event_time), now), now
                )
            return self._drive(now)

    def flush(self, close_pending: bool = False) -> int:
        """Learn every emitted example now, and publish if anything was learned since the
        last publish. ``close_pending`` first closes every open join window (end of a
        stream or a replay). Returns the batches learned."""
        with self._lock:
            now = self._clock()
            if close_pending:
                self._layer.pending.add(self._intake.joiner.close_all(), now)
            return self._drive(now, force=True)

    # -- publishing -----------------------------------------------------------------------

    def _maybe_publish(self, now: float, force: bool = False) -> None:
        cfg = self.config
        if self._layer.publishing.due(now, cfg.publish_every_batches, cfg.publish_every_s, force):
            self._publish(now)

    def publish(self) -> PublishedSnapshot:
        """Publish the current weights now (whether or not anything changed)."""
        with self._lock:
            return self._publish(self._clock())

    def _publish(self, now: float) -> PublishedSnapshot:
        readiness = self._serving_readiness()
        snap = snapshot_of(self._layer, readiness, self.config.ftrl_params(), now,
                           breaker=self._safety.judgement())
        self._layer.publishing.record(snap)
        logger.info("published %s (ready=%s: %s)", snap.version, readiness.ready, readiness.reason)
        if not deliver(self._sink, snap):
            self._sink_failures += 1
        return snap

    def latest_snapshot(self, include_unready: bool = False) -> PublishedSnapshot | None:
        """The latest published snapshot if it passed its readiness check and the breaker
        is closed, else None (serving runs the base alone). ``include_unready`` returns it
        regardless."""
        with self._lock:
            if not include_unready and not self._safety.allows_online:
                return None
            return self._layer.publishing.for_serving(include_unready)

    def serving_view(self, known_version: str | None = None) -> ServingView:
        """What a serving replica polling for weights must do now: ``withhold`` (breaker
        not closed: apply no online weights, drop the ones it has), or install
        ``snapshot`` when it is newer than ``known_version`` (None: nothing new)."""
        with self._lock:
            return self._safety.view(self._layer, known_version)

    def latest_version(self) -> str | None:
        """The version ``latest_snapshot()`` would return (cheap to poll: no blob)."""
        snap = self.latest_snapshot()
        return None if snap is None else snap.version

    def rollback(self) -> str | None:
        """Restore the last ready snapshot of this layer (the circuit breaker does this
        when it opens; an operator may too); the rolling metric restarts, so readiness must
        be earned again. Returns the restored version, or None when there is none."""
        with self._lock:
            version = self._layer.rollback()
            if version is not None:
                logger.warning("rolled the online layer back to %s", version)
            return version

    # -- status ---------------------------------------------------------------------------

    def readiness(self) -> Readiness:
        """Whether the current layer may be served (``online_layer.readiness``): enough
        examples learned, and over the rolling window log loss and AUC no worse than the
        base's, within their tolerances."""
        return assess(self.config, self._layer.examples, self._layer.rolling)

    def _serving_readiness(self) -> Readiness:
        return self._safety.serving_readiness(self.readiness())

    def report(self) -> LearnerReport:
        with self._lock:
            return build_report(
                self._layer, self._serving_readiness(), self._intake.counts,
                self._intake.joiner, self._guard, self._sink_failures,
                defences=self._safety.guard, breaker=self._safety.status(),
                breaker_rollbacks=self._safety.rollbacks,
            )

    def durability_marks(self) -> tuple[int | None, float | None]:
        """``(join watermark in us, oldest unlearned feedback arrival)`` for a write-ahead
        log's checkpoint: every feedback that arrived (learner clock) before the second
        value is learned or refused; None when nothing accepted waits (in an open join
        window or a waiting mini-batch)."""
        with self._lock:
            oldest = oldest_unlearned(self._intake.joiner.pending_entries(), self._layer.pending)
            return self._intake.joiner.watermark_us, oldest

    # -- a background ticker for actors ---------------------------------------------------

    def start_ticker(self, interval_s: float = 0.5) -> None:
        """Call ``tick()`` every ``interval_s`` seconds on a daemon thread, so time-based
        batches and publishes happen even when no call arrives (for the Ray actor)."""
        with self._lock:
            if self._ticker is None:
                self._ticker = Ticker(self.tick, interval_s, name="online-learner-tick")
                self._ticker.start()

    def stop_ticker(self) -> None:
        ticker = self._ticker
        if ticker is not None:
            ticker.stop()
            self._ticker = None
