"""The Ray Serve deployments: a gRPC ingress that ranks, and the online learner behind it.

Composition follows Serve's pattern: the learner's handle is passed into the ingress's
constructor and wired once with ``.bind()`` (``serving.app.build_app``).

Ranker (ingress, ``freshrank.v1.Ranker``; method names equal the rpc names)
    Rank: validate -> ``HybridRanker`` (features, base, online correction, sort) -> reply.
    What was shown is buffered and sent to the learner in batches; Feedback flushes that
    buffer first, so the learner always knows an impression before its click.
    A background task polls the learner for newer online weights and swaps them in.
    Every rpc goes through one door (``serving.ingress.rpc``): bad input is
    ``INVALID_ARGUMENT`` naming the field, a ``FreshrankError`` its own status, anything
    else ``INTERNAL`` with a short message (logged here with the request id).
Learner
    Wraps ``online_layer.learner.OnlineLearner`` for the champion base; takes feedback,
    pushes fresh item counters to the feature store, persists ready snapshots.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import TYPE_CHECKING, Any

import pyarrow as pa
from ray import serve
from ray.serve.grpc_util import RayServegRPCContext

from protos.freshrank.v1 import ranking_pb2 as pb
from serving.errors import NotReady
from serving.ingress import rpc
from serving.ranking import HybridRanker, OnlineSlot, RankOutcome, fill_learner_status
from serving.requests import RankQuery, parse_feedback_request, parse_rank_request
from serving.settings import Settings

if TYPE_CHECKING:
    from ray.serve.handle import DeploymentHandle

    from protos.registry import ModelVersion
    from feature_store.push import FreshCounterPusher
    from online_layer.join import ServedRecord
    from online_layer.learner import LearnerReport, PublishedSnapshot, ServingView

logger = logging.getLogger(__name__)

SERVED_FLUSH_SECONDS = 0.2
SERVED_FLUSH_RECORDS = 256


def _champion_base(settings: Settings) -> ModelVersion:
    from protos.registry import ModelRegistry

    champion = ModelRegistry(settings.registry_dir).champion("base")
    if champion is None:
        raise NotReady(
            f"no champion base model in {settings.registry_dir}: train one first "
            "(freshrank train ...)"
        )
    return champion


@serve.deployment(name="Learner", num_replicas=1, max_ongoing_requests=256)
class Learner:
    """The online learner for the champion base (one replica: it owns the weights)."""

    def __init__(self, settings: Settings) -> None:
        from base_model.artifact import BaseScorer
        from protos.registry import ModelRegistry
        from base_model.train import code_version
        from feature_store.push import FreshCounterPusher
        from online_layer.learner import OnlineLearner
        from serving.snapshots import RegistrySnapshotSink, champion_snapshot

        registry = ModelRegistry(settings.registry_dir)
        champion = _champion_base(settings)
        base = BaseScorer.load(champion.path)
        self._learner = OnlineLearner(
            settings.online_layer,
            base_version=base.version,
            embedding_dim=base.embedding_dim,
            snapshot_sink=RegistrySnapshotSink(registry, code_version()),
            # Users the base was trained on are established: the manipulation guard never
            # counts them as new, so a restart does not make every real user a stranger.
            established_users=base.users.__contains__,
        )
        resumed = champion_snapshot(registry, base.version)
        if resumed is not None:
            self._learner.model.restore(resumed[1], base.version)
            logger.info("learner resumed from online snapshot %s", resumed[0])
        self._counters = _CounterPushLoop(
            FreshCounterPusher(settings.feature_store), settings.serving.fresh_push_seconds
        )
        self._learner.start_ticker()

    def record_served(self, records: list[ServedRecord]) -> int:
        return self._learner.record_served(records)

    def feedback(self, events: pa.Table) -> dict[str, Any]:
        result = self._learner.add_feedback(events)
        if result.rejected is None:
            # Poisoned batches teach nothing: not the layer, not the fresh counters; nor
            # do users the manipulation guard counts as new move the live counters.
            trusted = self._learner.established_users(events.column("user_id").to_pylist())
            if trusted.all():
                self._counters.add(events)
            elif trusted.any():
                self._counters.add(events.filter(pa.array(trusted)))
        return {
            "accepted": result.accepted,
            "dropped": result.dropped,
            "rejected": result.rejected or "",
            "detail": result.detail,
        }

    def latest_snapshot(self, known_version: str | None) -> PublishedSnapshot | None:
        """The newest ready snapshot, or None when the caller already has it (or none, or
        the circuit breaker is not closed)."""
        snapshot = self._learner.latest_snapshot()
        if snapshot is None or snapshot.version == known_version:
            return None
        return snapshot

    def serving_view(self, known_version: str | None) -> ServingView:
        """The Ranker replicas' weight poll: withhold the layer (breaker not closed), or a
        newer ready snapshot to install (``OnlineLearner.serving_view``)."""
        return self._learner.serving_view(known_version)

    def report(self) -> LearnerReport:
        return self._learner.report()

    def flush(self) -> int:
        return self._learner.flush()

    def __del__(self) -> None:
        learner = getattr(self, "_learner", None)
        if learner is not None:
            learner.stop_ticker()
        counters = getattr(self, "_counters", None)
        if counters is not None:
            counters.stop()


class _CounterPushLoop:
    """Feeds accepted feedback to the fresh-counter pusher off the request path.

    A Feast push is a write to the online store (tens of milliseconds); doing it per
    Feedback call would make every call pay it. Feedback is queued and pushed, coalesced,
    every ``interval_s`` by a daemon thread: serving sees a breaking item's counters within
    about that interval.
    """

    def __init__(self, pusher: FreshCounterPusher, interval_s: float) -> None:
        self._pusher = pusher
        self._interval = interval_s
        self._queue: list[pa.Table] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fresh-counters", daemon=True)
        self._thread.start()

    def add(self, events: pa.Table) -> None:
        with self._lock:
            self._queue.append(events)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.push_now()

    def push_now(self) -> int:
        with self._lock:
            batch, self._queue = self._queue, []
        if not batch:
            return 0
        try:
            return int(self._pusher.observe(pa.concat_tables(batch)))
        except Exception:
            logger.exception("pushing fresh counters failed; they catch up with the next push")
            return 0

    def stop(self) -> None:
        self._stop.set()


def _rank_query(ranker: Ranker, request: pb.RankRequest) -> RankQuery:
    return parse_rank_request(request, ranker._settings.serving.max_candidates)


def _feedback_events(ranker: Ranker, request: pb.FeedbackRequest) -> pa.Table:
    return parse_feedback_request(request, ranker._settings.serving.max_feedback_events)


@serve.deployment(name="Ranker")
class Ranker:
    """gRPC ingress implementing ``freshrank.v1.Ranker`` (every rpc through ``ingress.rpc``)."""

    def __init__(self, settings: Settings, learner: DeploymentHandle) -> None:
        from base_model.artifact import BaseScorer
        from protos.registry import ModelRegistry
        from feature_store.online import OnlineFeatureReader
        from online_layer.features import OnlineFeaturizer
        from serving.snapshots import champion_snapshot

        self._settings = settings
        self._learner = learner
        champion = _champion_base(settings)
        base = BaseScorer.load(champion.path)
        cfg = settings.online_layer
        self._featurizer = OnlineFeaturizer(
            base.embedding_dim, hash_bits=cfg.hash_bits, position_buckets=cfg.position_buckets
        )
        self._ranker = HybridRanker(
            OnlineFeatureReader(settings.feature_store), base, self._featurizer, settings.serving
        )
        resumed = champion_snapshot(ModelRegistry(settings.registry_dir), base.version)
        if resumed is not None:
            self._install(*resumed)
        self._served: list[ServedRecord] = []
        self._served_since = time.monotonic()
        self._served_lock = asyncio.Lock()
        self._background: asyncio.Task[None] | None = None
        self._last_poll = 0.0
        self._requests = 0
        self._fallbacks = 0

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Live operator switches (Serve's ``user_config``), applied without a restart:
        ``online_enabled`` (False serves the base alone)."""
        unknown = sorted(set(user_config) - {"online_enabled"})
        if unknown:
            raise ValueError(f"unknown Ranker user_config key(s): {', '.join(unknown)}")
        if "online_enabled" in user_config:
            self._ranker.set_enabled(bool(user_config["online_enabled"]))
            logger.info("online layer %s by operator", "enabled" if user_config["online_enabled"] else "disabled")

    # ----------------------------------------------------------------- background work

    def _ensure_background(self) -> None:
        if self._background is None or self._background.done():
            self._background = asyncio.get_running_loop().create_task(self._poll_forever())

    async def _poll_forever(self) -> None:
        period = self._settings.serving.weight_poll_seconds
        while True:
            try:
                await self._poll_weights()
                if self._served and time.monotonic() - self._served_since > SERVED_FLUSH_SECONDS:
                    await self._flush_served()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("background weight poll failed; keeping current weights")
            await asyncio.sleep(min(period, SERVED_FLUSH_SECONDS))

    async def _poll_weights(self) -> None:
        slot = self._ranker.online
        now = time.monotonic()
        if now - self._last_poll < self._settings.serving.weight_poll_seconds:
            return
        self._last_poll = now
        view = await self._learner.serving_view.remote(slot.version if slot is not None else None)
        if view.withhold:  # the learner's circuit breaker is not closed: base alone
            self._ranker.apply_breaker(view.detail)
            return
        if view.snapshot is not None:
            snapshot = view.snapshot
            self._install(snapshot.version, snapshot.blob, snapshot.published_at)
        self._ranker.apply_breaker(None)

    def _install(self, version: str, blob: bytes, published_at: float) -> None:
        base_version = self._ranker.base_version
        from online_layer.factory import load_snapshot

        model = load_snapshot(blob, base_version, expected_layout=self._featurizer.layout())
        self._ranker.install_online(
            OnlineSlot(model, version, base_version, published_at,
                       max_correction=self._settings.online_layer.guard.max_correction)
        )
        logger.info("installed online weights %s for base %s", version, base_version)

    async def _flush_served(self) -> None:
        # The lock is held until the learner has the batch: a Feedback call that flushes
        # while the background poller's flush is in flight waits for it, so an impression
        # always reaches the learner before its click (else: ``unknown_id``).
        async with self._served_lock:
            if not self._served:
                return
            batch, self._served = self._served, []
            self._served_since = time.monotonic()
            await self._learner.record_served.remote(batch)

    def _remember(self, outcome: RankOutcome) -> None:
        from online_layer.join import ServedRecord

        query = outcome.query
        shown = outcome.order
        if not self._served:
            self._served_since = time.monotonic()
        self._served.append(
            ServedRecord(
                request_id=query.request_id,
                user_id=query.user_id,
                request_time=query.request_time,
                base_version=outcome.base_version,
                item_ids=tuple(query.item_ids[i] for i in shown.tolist()),
                inputs=outcome.inputs.take(shown),
                online_version=outcome.online_version if outcome.fallback is None else "",
            )
        )

    # ----------------------------------------------------------------------- the rpcs
    # Each goes through the door (``serving.ingress.rpc``): it decodes the request, maps bad
    # input to INVALID_ARGUMENT, a ``FreshrankError`` to its status, anything else to INTERNAL.

    @rpc(parse=_rank_query)
    async def Rank(self, query: RankQuery, grpc_context: RayServegRPCContext) -> pb.RankResponse:
        self._ensure_background()
        outcome = self._ranker.rank(query)
        self._requests += 1
        self._fallbacks += outcome.fallback is not None
        self._remember(outcome)
        if len(self._served) >= SERVED_FLUSH_RECORDS:
            await self._flush_served()
        return outcome.to_response()

    @rpc(parse=_feedback_events)
    async def Feedback(
        self, events: pa.Table, grpc_context: RayServegRPCContext
    ) -> pb.FeedbackReply:
        self._ensure_background()
        await self._flush_served()  # impressions reach the learner before their clicks
        result = await self._learner.feedback.remote(events)
        return pb.FeedbackReply(
            accepted=result["accepted"],
            dropped=result["dropped"],
            rejected_reason=result["rejected"],
            rejected_detail=result["detail"],
        )

    @rpc()
    async def Status(
        self, request: pb.StatusRequest, grpc_context: RayServegRPCContext
    ) -> pb.StatusReply:
        self._ensure_background()
        report = await self._learner.report.remote()
        slot = self._ranker.online
        fallback = self._ranker.current_fallback()
        reply = pb.StatusReply(
            base_version=self._ranker.base_version,
            online_version=slot.version if slot else "",
            online_base_version=slot.base_version if slot else "",
            online_weight_age_seconds=(time.time() - slot.published_at) if slot else -1.0,
            fallback=fallback is not None,
            online_updates=report.batches_learned,
            requests_served=self._requests,
            requests_fallback=self._fallbacks,
            feature_service=self._ranker.feature_service,
        )
        if fallback is not None:
            reply.fallback_reason = fallback.reason
            reply.fallback_detail = fallback.detail
        for reason, count in report.rejected_batches.items():
            reply.rejected_batches[reason] = count
        fill_learner_status(reply, report)
        return reply
