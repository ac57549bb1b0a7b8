"""The Rank hot path, free of Ray: features -> base -> online correction -> sort.

Kept out of the Serve deployment so it can be tested in-process and benchmarked against a
bare gRPC server running the same code. The online model is held in one immutable
``OnlineSlot`` that a single attribute assignment swaps, so each request sees one
consistent (weights, version, base version) triple while a poller installs new weights.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from protos.freshrank.v1 import ranking_pb2
from protos.metrics import sigmoid
from serving.exploration import ExplorationPolicy, explore
from serving.requests import RankQuery

if TYPE_CHECKING:
    from base_model.artifact import BaseScorer
    from feature_store.online import OnlineFeatureReader
    from online_layer.features import OnlineFeaturizer, OnlineInputs
    from online_layer.reports import LearnerReport
    from online_layer.model import OnlineModel
    from serving.config import ServingConfig

logger = logging.getLogger(__name__)

Reason = ranking_pb2.FallbackReason


@dataclass(frozen=True)
class OnlineSlot:
    """Online weights as installed in one replica.

    Attributes:
        model: The online model (``predict_many(inputs) -> logits``).
        version: The snapshot's version.
        base_version: The base version the weights were trained against.
        published_at: Unix time the learner published them (for the TTL).
        max_correction: The most logits the correction may move a score
            (``[online_layer.guard] max_correction``; the learner's progressive metrics
            clip the same way).
    """

    model: OnlineModel
    version: str
    base_version: str
    published_at: float
    max_correction: float = math.inf

    def score(self, inputs: OnlineInputs) -> np.ndarray:
        """Hybrid logits: base plus the correction, clipped to ``max_correction``."""
        from online_layer.defences import clip_correction

        logits = self.model.predict_many(inputs)
        if math.isfinite(self.max_correction):
            logits = clip_correction(inputs.base_logit, logits, self.max_correction)
        return logits


@dataclass(frozen=True)
class Fallback:
    reason: ranking_pb2.FallbackReason
    detail: str


def choose_fallback(
    slot: OnlineSlot | None,
    base_version: str,
    now: float,
    ttl_seconds: float,
    enabled: bool,
    breaker_detail: str | None = None,
    absent_detail: str = "no online weights loaded",
) -> Fallback | None:
    """Decide whether this request must be scored by the base alone, and why.

    The order matters only for the reported reason: an operator's switch first, then the
    learner's circuit breaker (``breaker_detail`` is set while it is not closed), then a
    missing layer, a layer for another base (never applied, whatever its age), then age.
    """
    if not enabled:
        return Fallback(Reason.FALLBACK_REASON_ONLINE_DISABLED, "online layer disabled by config")
    if breaker_detail is not None:
        return Fallback(Reason.FALLBACK_REASON_BREAKER_OPEN, breaker_detail)
    if slot is None:
        return Fallback(Reason.FALLBACK_REASON_ONLINE_ABSENT, absent_detail)
    if slot.base_version != base_version:
        return Fallback(
            Reason.FALLBACK_REASON_BASE_VERSION_MISMATCH,
            f"online {slot.version} was trained for base {slot.base_version}, "
            f"serving base is {base_version}",
        )
    age = now - slot.published_at
    if age > ttl_seconds:
        return Fallback(
            Reason.FALLBACK_REASON_ONLINE_STALE,
            f"online {slot.version} is {age:.0f}s old (ttl {ttl_seconds:.0f}s)",
        )
    return None


@dataclass(frozen=True)
class RankOutcome:
    """What one Rank call produced (in candidate order unless named otherwise).

    Attributes:
        order: Indices into ``query.item_ids``, best first, ``query.top_k`` of them.
        final_logits: Base logit plus the correction, or the base logit on fallback.
        base_logits: The base model's logits.
        inputs: The online layer's inputs as served (rank-time position token): what the
            learner joins feedback to, so it learns from exactly what serving saw.
        user_features: The user's dense features the base scored with
            (``len(USER_FEATURES)`` float32), logged with the impression; None if unknown.
        item_features: The items' dense features as served (``(N, len(ITEM_FEATURES))``
            float32, candidate order), logged with the impression; None if unknown.
        propensity: The probability each candidate is shown at its position (candidate
            order); None: the deterministic policy (1.0 for every shown item).
    """

    query: RankQuery
    order: np.ndarray
    final_logits: np.ndarray
    base_logits: np.ndarray
    item_categories: tuple[str, ...]
    base_version: str
    online_version: str
    fallback: Fallback | None
    inputs: OnlineInputs
    user_features: np.ndarray | None = None
    item_features: np.ndarray | None = None
    propensity: np.ndarray | None = None

    def to_response(self) -> ranking_pb2.RankResponse:
        final = sigmoid(self.final_logits)
        base = sigmoid(self.base_logits)
        items = self.query.item_ids
        response = ranking_pb2.RankResponse(
            request_id=self.query.request_id,
            base_version=self.base_version,
            online_version="" if self.fallback else self.online_version,
            fallback=self.fallback is not None,
        )
        if self.fallback is not None:
            response.fallback_reason = self.fallback.reason
            response.fallback_detail = self.fallback.detail
        add = response.items.add
        for index in self.order.tolist():
            add(item_id=items[index], score=float(final[index]), base_score=float(base[index]))
        return response


class HybridRanker:
    """Scores candidates with the base model and, when safe, the online correction.

    Args:
        features: The Feast online store reader.
        base: The scorer of the serving base version.
        featurizer: The online layer's featurizer matching the base's embedding size.
        config: Serving settings (TTL, operator switch).
        clock: Unix time source (tests pass a fake one).
    """

    def __init__(
        self,
        features: OnlineFeatureReader,
        base: BaseScorer,
        featurizer: OnlineFeaturizer,
        config: ServingConfig,
        clock: Callable[[], float] = time.time,
    ) -> None:
        from feature_store.catalog import FRESH_ITEM_FEATURES, ITEM_FEATURES

        self._features = features
        self._base = base
        self._featurizer = featurizer
        self._config = config
        self._clock = clock
        self._fresh_columns = np.array([ITEM_FEATURES.index(n) for n in FRESH_ITEM_FEATURES])
        self._online: OnlineSlot | None = None
        self._enabled = bool(config.online_enabled)
        self._breaker: str | None = None
        self.exploration = ExplorationPolicy.of(config)  # serving.exploration; the operator's
        self.absent_detail = "no online weights loaded"  # why, when no layer is installed

    @property
    def base_version(self) -> str:
        return str(self._base.version)

    @property
    def featurizer(self) -> OnlineFeaturizer:
        """The online layer's featurizer for this base (its layout is in every snapshot)."""
        return self._featurizer

    @property
    def feature_service(self) -> str:
        return str(self._base.feature_service)

    @property
    def online(self) -> OnlineSlot | None:
        return self._online

    def install_online(self, slot: OnlineSlot | None) -> None:
        """Swap the online weights; requests in flight keep the slot they read."""
        self._online = slot

    def set_enabled(self, enabled: bool) -> None:
        self._enabled = bool(enabled)

    @property
    def breaker_detail(self) -> str | None:
        return self._breaker

    def apply_breaker(self, detail: str | None) -> None:
        """The learner's circuit breaker as the last poll saw it: ``detail`` while it is
        not closed (every request falls back with ``FALLBACK_REASON_BREAKER_OPEN`` and the
        installed weights are dropped: they are what the breaker judged), None once closed."""
        if detail is not None:
            self._online = None
            if self._breaker is None:
                logger.warning("online layer off serving: %s", detail)
        elif self._breaker is not None:
            logger.info("circuit breaker closed: the online layer may serve again")
        self._breaker = detail

    def current_fallback(self) -> Fallback | None:
        return choose_fallback(
            self._online,
            self.base_version,
            self._clock(),
            self._config.online_ttl_seconds,
            self._enabled,
            self._breaker,
            self.absent_detail,
        )

    def base_logits(self, query: RankQuery) -> np.ndarray:
        """The base's logits for the query's candidates, in candidate order (the shadow
        comparison: features looked up and scored as ``rank`` does, nothing else)."""
        found = self._features.get(query.user_id, query.item_ids, now=query.request_time)
        scores = self._base.score(
            query.user_id, query.item_ids, found.user, found.items, found.item_categories
        )
        return np.asarray(scores.logits, dtype=np.float64)

    def rank(self, query: RankQuery) -> RankOutcome:
        items = query.item_ids
        found = self._features.get(query.user_id, items, now=query.request_time)
        # One user: its vocabulary row is looked up once and its features broadcast
        # (``BaseScorer.score`` takes a str and a (Fu,) row), not N times.
        base = self._base.score(query.user_id, items, found.user, found.items, found.item_categories)
        inputs = self._featurizer.transform(
            base.logits,
            base.user_embeddings,
            base.item_embeddings,
            found.items[:, self._fresh_columns],
            query.user_id,
            items,
            found.item_categories,
            hours=query.request_time.hour,
        )
        base_logits = inputs.base_logit
        slot = self._online  # read once: one consistent (weights, versions) per request
        fallback = choose_fallback(
            slot,
            self.base_version,
            self._clock(),
            self._config.online_ttl_seconds,
            self._enabled,
            self._breaker,
            self.absent_detail,
        )
        final = base_logits
        if fallback is None and slot is not None:
            try:
                final = slot.score(inputs)
            except Exception as error:  # the base must still answer
                logger.exception("online layer %s failed; serving base alone", slot.version)
                fallback = Fallback(Reason.FALLBACK_REASON_ONLINE_ERROR, str(error))
                final = base_logits
        order = np.argsort(-final, kind="stable")[: query.top_k]
        propensity = None
        policy = self.exploration  # read once, like the slot
        if fallback is None and slot is not None and policy.applies(query.request_id):
            try:  # a Thompson draw of the online posterior ranks this request
                order, propensity = explore(slot, inputs, final, query.top_k, policy, query.request_id)
            except Exception:  # the greedy order still answers
                logger.exception("exploration failed; serving the greedy order")
        return RankOutcome(
            query=query,
            order=order,
            final_logits=final,
            base_logits=base_logits,
            item_categories=tuple(found.item_categories),
            base_version=self.base_version,
            online_version=slot.version if slot is not None else "",
            fallback=fallback,
            inputs=inputs,
            user_features=found.user,
            item_features=found.items,
            propensity=propensity,
        )


def fill_learner_status(reply: ranking_pb2.StatusReply, report: LearnerReport) -> None:
    """Copy the learner's defences into ``Status``: the breaker's state, reason and
    transition counts, and the guard's quarantined examples by reason."""
    reply.breaker_state = report.breaker_state
    reply.breaker_reason = report.breaker_reason
    for move, count in report.breaker_transitions.items():
        reply.breaker_transitions[move] = count
    for reason, count in report.quarantined.items():
        reply.quarantined_examples[reason] = count
    reply.breaker_rollbacks = report.breaker_rollbacks
    reply.clamped_future_times = report.clamped_future_times
