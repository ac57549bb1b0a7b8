"""The Ray Serve deployments: a gRPC ingress that ranks, and the online learner behind it.

Composition follows Serve's pattern: the learner's handle is passed into the ingress's
constructor and wired once with ``.bind()`` (``serving.app.build_app``).

Ranker (ingress, ``freshrank.v1.Ranker``; method names equal the rpc names)
    Rank: validate -> ``HybridRanker`` (features, base, online correction, sort) -> reply.
    What was shown is appended to the replica's served log before the reply
    (``serving.served_log``); the learner follows the logs and reads them before each
    feedback batch, so it always knows an impression before its click.
    A background task polls the learner for newer online weights and swaps them in.
    Every rpc goes through one door (``serving.ingress.rpc``): bad input is
    ``INVALID_ARGUMENT`` naming the field, a ``FreshrankError`` its own status, anything
    else ``INTERNAL`` with a short message (logged here with the request id).
Learner
    Wraps ``online_layer.learner.OnlineLearner`` for the champion base; takes feedback
    (logged, fsynced, before ``accepted`` is answered), pushes fresh item counters to the
    feature store, persists ready snapshots; on start replays what its snapshot lacks.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from pathlib import Path
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import pyarrow as pa
from ray import serve
from ray.serve.grpc_util import RayServegRPCContext

from protos.errors import FailedPrecondition, NotFound
from protos.freshrank.v1 import ranking_pb2 as pb
from serving import metrics_hub, observability
from serving.auth import AccessPolicy, PeerPolicy, Secret, load_token
from serving.errors import NotReady
from serving.health import HealthState
from serving.ingress import RPCS, caller_metadata, caller_peer, rpc
from serving.observability import observed
from serving.ranking import HybridRanker, OnlineSlot, RankOutcome, fill_learner_status
from serving.requests import (
    AdminAction,
    Limits,
    RankQuery,
    parse_admin_request,
    parse_feedback_request,
    parse_rank_request,
)
from serving.settings import Settings

if TYPE_CHECKING:
    from ray.serve.handle import DeploymentHandle

    from protos.registry import ModelVersion
    from feature_store.push import FreshCounterPusher
    from online_layer.join import ServedRecord
    from online_layer.learner import LearnerReport, PublishedSnapshot, ServingView

logger = logging.getLogger(__name__)



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
        from protos.code_version import code_version
        from feature_store.push import FreshCounterPusher
        from online_layer.learner import OnlineLearner
        from serving.durability import DurableSink, LearnerDurability, StrictClock
        from serving.snapshots import RegistrySnapshotSink, champion_snapshot

        observability.configure_replica_logging()
        registry = ModelRegistry(settings.registry_dir)
        champion = _champion_base(settings)
        base = BaseScorer.load(champion.path)
        # Durability (serving.served_log): the sink's lineage records which logged feedback
        # a snapshot covers; on start the learner replays what its snapshot lacks.
        clock = StrictClock()
        sink = DurableSink(RegistrySnapshotSink(registry, code_version()), registry)
        self._learner = OnlineLearner(
            settings.online_layer,
            base_version=base.version,
            embedding_dim=base.embedding_dim,
            snapshot_sink=sink,
            clock=clock,
            # Users the base was trained on are established: the manipulation guard never
            # counts them as new, so a restart does not make every real user a stranger.
            established_users=base.users.__contains__,
        )
        resumed = champion_snapshot(registry, base.version)
        covered = None
        if resumed is not None:
            self._learner.model.restore(resumed[1], base.version)
            online = registry.champion("online")
            covered = online.lineage.get("durability") if online is not None else None
            logger.info("learner resumed from online snapshot %s", resumed[0])
        self._durability = LearnerDurability(settings.workspace, self._learner, clock)
        self._durability.start(covered)
        sink.durability = self._durability
        self._counters = _CounterPushLoop(
            FreshCounterPusher(settings.feature_store), settings.serving.fresh_push_seconds
        )
        self._background = _LearnerBackground(self._durability, settings)
        self._learner.start_ticker()
        from serving.admin import Controls, audit_path

        self._settings = settings
        self._controls = Controls(audit_path(settings.workspace), settings.serving.online_enabled)
        self._hub = metrics_hub.MetricsHub(
            self._learner.report,
            settings.feature_store,
            online_ttl_s=settings.serving.online_ttl_seconds,
        )
        self._metrics_server = metrics_hub.serve_metrics(
            self._hub, settings.serving.host, settings.serving.metrics_port
        )

    def observe_replica(self, snapshot: dict[str, Any]) -> None:
        """A Ranker replica's metrics (``RankerMetrics.snapshot``), sent with its weight poll."""
        self._hub.update(snapshot)

    def metrics_address(self) -> str:
        """``host:port`` of the Prometheus endpoint, "" while it is not bound."""
        return self._metrics_server.address

    def record_served(self, records: list[ServedRecord]) -> int:
        return self._learner.record_served(records)

    def feedback(self, events: pa.Table) -> dict[str, Any]:
        # Joined, learned, and (if accepted) fsynced to the feedback log before the reply.
        result = self._durability.feedback(events)
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
        from dataclasses import replace

        report = self._learner.report()
        from serving.durability import COUNTERS_MAX_AGE_S

        counters = self._durability.counters(max_age_s=COUNTERS_MAX_AGE_S)
        durable = {f"durable_{k}": float(v) for k, v in counters.items()}
        return replace(report, extra={**report.extra, **durable})

    def durability(self) -> dict[str, int]:
        """accepted == learned + pending (over restarts), replayed, replay_lost, sequences."""
        return self._durability.counters()

    def flush(self) -> int:
        return self._learner.flush()

    # -- operator actions (serving.admin): in place, audited, followed by every Ranker ------

    def admin_controls(self, known_serial: str | None) -> dict[str, Any] | None:
        """The operator controls, or None when the caller already has ``known_serial``."""
        return self._controls.view(known_serial)

    def admin_set_online_enabled(self, enabled: bool, reason: str, actor: str) -> dict[str, Any]:
        return self._controls.set_enabled(enabled, reason, actor)

    def admin_rollback(self, to_version: str, reason: str, actor: str) -> dict[str, Any]:
        """Restore the last ready snapshot (``to_version`` empty) or a registry online
        version of this base, publish it, and pin it for every Ranker replica."""
        from protos.registry import ModelRegistry, UnknownVersionError
        from serving.snapshots import SNAPSHOT_FILE

        learner = self._learner
        pinned = self._controls.pinned
        previous = learner.latest_version() or (pinned.version if pinned is not None else "")
        extra: dict[str, Any] = {}
        if not to_version:
            restored = learner.rollback()
            if restored is None:
                raise FailedPrecondition(
                    "the learner has no ready snapshot to roll back to: name a registry "
                    "online version (to_version)"
                )
            current = restored
        else:
            registry = ModelRegistry(self._settings.registry_dir)
            try:
                version = registry.get("online", to_version)
            except UnknownVersionError as error:
                raise NotFound(str(error)) from None
            base = version.lineage.get("base_version")
            if base != learner.base_version:
                raise FailedPrecondition(
                    f"{to_version} corrects base {base!r}, the serving base is "
                    f"{learner.base_version!r}: a mismatched pair is never served"
                )
            blob = (Path(version.path) / SNAPSHOT_FILE).read_bytes()
            # The learner's lock: its ticker must not learn into a half-restored model.
            with learner._lock:
                learner.model.restore(blob, learner.base_version)
            registry.promote("online", to_version, reason=f"rollback by {actor}: {reason}")
            current = to_version
        snapshot = learner.publish()  # the restored weights, as replicas install them
        extra["published_as"] = snapshot.version
        return self._controls.rolled_back(previous, current, snapshot, reason, actor, **extra)

    def __del__(self) -> None:
        background = getattr(self, "_background", None)
        if background is not None:
            background.stop()
        learner = getattr(self, "_learner", None)
        if learner is not None:
            learner.stop_ticker()
        counters = getattr(self, "_counters", None)
        if counters is not None:
            counters.stop()
        metrics_server = getattr(self, "_metrics_server", None)
        if metrics_server is not None:
            metrics_server.stop()


class _LearnerBackground:
    """Follows the replicas' served logs every ``INGEST_SECONDS`` and compacts the logs
    into the event log every ``COMPACT_SECONDS`` (daemon threads)."""

    def __init__(self, durability: Any, settings: Settings) -> None:
        from serving.served_log import COMPACT_SECONDS, INGEST_SECONDS

        self._durability = durability
        self._settings = settings
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._every, args=(INGEST_SECONDS, self._ingest),
                             name="served-ingest", daemon=True),
            threading.Thread(target=self._every, args=(COMPACT_SECONDS, self._compact),
                             name="served-compact", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def _every(self, interval: float, job: Any) -> None:
        while not self._stop.wait(interval):
            try:
                job()
            except Exception:
                logger.exception("%s failed; retrying", threading.current_thread().name)

    def _ingest(self) -> None:
        self._durability.ingest_served()

    def _compact(self) -> None:
        from serving.served_events import compact_served_log

        compact_served_log(
            self._settings.workspace,
            self._settings.feature_store.events_dir,
            self._settings.online_layer.join_window_s,
        )

    def stop(self) -> None:
        self._stop.set()


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
    cfg = ranker._settings.serving
    return parse_rank_request(request, cfg.max_candidates, limits=ranker._limits)


def _feedback_events(ranker: Ranker, request: pb.FeedbackRequest) -> pa.Table:
    cfg = ranker._settings.serving
    return parse_feedback_request(
        request, cfg.max_feedback_events, limits=ranker._limits, max_position=cfg.max_candidates
    )


def _admin_action(ranker: Ranker, request: Any) -> AdminAction:
    return parse_admin_request(request, ranker._limits)


@serve.deployment(name="Ranker")
class Ranker:
    """gRPC ingress implementing ``freshrank.v1.Ranker`` (every rpc through ``ingress.rpc``)."""

    def __init__(
        self, settings: Settings, learner: DeploymentHandle, token: Secret | None = None
    ) -> None:
        from base_model.artifact import BaseScorer
        from protos.registry import ModelRegistry
        from feature_store.online import OnlineFeatureReader
        from online_layer.features import OnlineFeaturizer
        from serving.snapshots import champion_snapshot

        observability.configure_replica_logging()
        self._metrics = observability.RankerMetrics()
        self._settings = settings
        self._learner = learner
        cfg_serving = settings.serving
        unknown_rpcs = sorted(set(cfg_serving.open_rpcs) - set(RPCS))
        if unknown_rpcs:
            raise ValueError(f"serving.open_rpcs names no rpc: {', '.join(unknown_rpcs)}")
        self._access = AccessPolicy(
            token.value if token is not None else load_token(cfg_serving.token_file),
            open_rpcs=frozenset(cfg_serving.open_rpcs),
        )
        self._peers = PeerPolicy.for_host(cfg_serving.host)
        self._limits = Limits.of(cfg_serving)
        logger.info("ingress access: %s", self._access.describe())
        self._online_enabled = bool(cfg_serving.online_enabled)
        self._control_serial: str | None = None
        self._control_detail = ""
        self._last_control_poll = 0.0
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
        # What Rank served goes to this replica's own write-ahead log before the reply;
        # the learner follows it (serving.served_log).
        from serving.served_log import ServedLogWriter

        self._served_log = ServedLogWriter(settings.workspace)
        self._background: asyncio.Task[None] | None = None
        self._last_poll = 0.0
        self._requests = 0
        self._fallbacks = 0
        self._health = HealthState(lambda: bool(self._ranker.base_version))

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Live operator switches (Serve's ``user_config``), applied without a restart:
        ``online_enabled`` (False serves the base alone)."""
        unknown = sorted(set(user_config) - {"online_enabled"})
        if unknown:
            raise ValueError(f"unknown Ranker user_config key(s): {', '.join(unknown)}")
        if "online_enabled" in user_config:
            self._online_enabled = bool(user_config["online_enabled"])
            self._ranker.set_enabled(self._online_enabled)
            logger.info("online layer %s by operator", "enabled" if user_config["online_enabled"] else "disabled")

    # ----------------------------------------------------------------- background work

    def _ensure_background(self) -> None:
        if self._background is None or self._background.done():
            self._background = asyncio.get_running_loop().create_task(self._poll_forever())

    async def _poll_forever(self) -> None:
        period = self._settings.serving.weight_poll_seconds
        while True:
            try:
                await self._poll_controls()
                await self._poll_weights()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("background weight poll failed; keeping current weights")
            await asyncio.sleep(period)

    async def _poll_controls(self) -> None:
        """Follow the learner's operator controls (``serving.admin``): in place, no restart."""
        now = time.monotonic()
        if now - self._last_control_poll < self._settings.serving.weight_poll_seconds:
            return
        self._last_control_poll = now
        view = await self._learner.admin_controls.remote(self._control_serial)
        if view is not None:
            self._apply_controls(view)

    def _apply_controls(self, view: dict[str, Any]) -> None:
        snapshot = view.get("snapshot")
        if snapshot is not None and (
            self._ranker.online is None or self._ranker.online.version != snapshot.version
        ):
            self._install(snapshot.version, snapshot.blob, snapshot.published_at)
        enabled = bool(view["online_enabled"])
        if enabled != self._online_enabled:
            logger.info("online layer %s by operator", "enabled" if enabled else "disabled")
        self._online_enabled = enabled
        self._ranker.set_enabled(enabled)
        self._control_serial = str(view["serial"])
        self._control_detail = str(view.get("detail", ""))

    def _authorize(self, rpc_name: str, grpc_context: Any) -> None:
        """The door's first step: callers from other hosts (while serving.host is loopback)
        get PERMISSION_DENIED, callers without the token UNAUTHENTICATED (``serving.auth``)."""
        self._peers.check(rpc_name, caller_peer(grpc_context))
        self._access.check(rpc_name, caller_metadata(grpc_context))

    async def _poll_weights(self) -> None:
        slot = self._ranker.online
        now = time.monotonic()
        if now - self._last_poll < self._settings.serving.weight_poll_seconds:
            return
        self._last_poll = now
        view = await self._learner.serving_view.remote(slot.version if slot is not None else None)
        if view.withhold:  # the learner's circuit breaker is not closed: base alone
            self._ranker.apply_breaker(view.detail)
        else:
            if view.snapshot is not None:
                snapshot = view.snapshot
                self._install(snapshot.version, snapshot.blob, snapshot.published_at)
            self._ranker.apply_breaker(None)
        await self._learner.observe_replica.remote(self._metrics.snapshot(self._ranker.online))

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
        """Make every served record of this replica durable (fsync; a timer does it too).
        Feedback calls it first, so an acknowledged click is never durable while its
        impression is not. The learner reads the records from the log itself."""
        await asyncio.to_thread(self._served_log.sync)

    def _remember(self, outcome: RankOutcome) -> None:
        """Log what was shown (to the OS before the reply: it survives this replica's death)."""
        from online_layer.join import ServedRecord
        from serving.served_log import ServedEntry

        query = outcome.query
        shown = outcome.order
        record = ServedRecord(
            request_id=query.request_id,
            user_id=query.user_id,
            request_time=query.request_time,
            base_version=outcome.base_version,
            item_ids=tuple(query.item_ids[i] for i in shown.tolist()),
            inputs=outcome.inputs.take(shown),
            online_version=outcome.online_version if outcome.fallback is None else "",
        )
        fallback = "" if outcome.fallback is None else pb.FallbackReason.Name(outcome.fallback.reason)
        categories = outcome.item_categories
        self._served_log.append(
            ServedEntry(
                record,
                outcome.final_logits[shown],
                tuple(str(categories[i]) if categories[i] is not None else "" for i in shown.tolist())
                if len(categories) == len(query.item_ids) else (),
                fallback,
                time.time(),
            )
        )

    # ----------------------------------------------------------------------- the rpcs
    # Each goes through the door (``serving.ingress.rpc``): it decodes the request, maps bad
    # input to INVALID_ARGUMENT, a ``FreshrankError`` to its status, anything else to INTERNAL.

    @observed
    @rpc(parse=_rank_query)
    async def Rank(self, query: RankQuery, grpc_context: RayServegRPCContext) -> pb.RankResponse:
        observability.bind_request_id(query.request_id)
        self._ensure_background()
        outcome = self._ranker.rank(query)
        self._metrics.observe_rank(outcome)
        self._requests += 1
        self._fallbacks += outcome.fallback is not None
        self._remember(outcome)
        return outcome.to_response()

    @rpc(parse=_feedback_events)
    async def Feedback(
        self, events: pa.Table, grpc_context: RayServegRPCContext
    ) -> pb.FeedbackReply:
        self._ensure_background()
        await self._flush_served()  # impressions are durable before their clicks
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
        reply.online_enabled = self._online_enabled
        reply.control_serial = self._control_serial or ""
        reply.control_detail = self._control_detail[:500]
        return reply

    # ------------------------------------------------------------ admin rpcs (token only)

    @rpc(parse=_admin_action)
    async def SetOnlineEnabled(
        self, action: AdminAction, grpc_context: RayServegRPCContext
    ) -> pb.AdminReply:
        self._ensure_background()
        record = await self._learner.admin_set_online_enabled.remote(
            bool(action.enabled), action.reason, action.actor
        )
        return await self._after_admin(record)

    @rpc(parse=_admin_action)
    async def RollbackOnline(
        self, action: AdminAction, grpc_context: RayServegRPCContext
    ) -> pb.AdminReply:
        self._ensure_background()
        record = await self._learner.admin_rollback.remote(
            action.to_version, action.reason, action.actor
        )
        return await self._after_admin(record)

    async def _after_admin(self, record: dict[str, Any]) -> pb.AdminReply:
        """Apply the new controls here at once (other replicas follow on their poll)."""
        view = await self._learner.admin_controls.remote(None)
        if view is not None:
            self._apply_controls(view)
        return pb.AdminReply(
            action=str(record["action"]),
            previous=str(record["previous"]),
            current=str(record["current"]),
            control_serial=str(record["serial"]),
            detail=str(record.get("published_as", "")),
        )

    # ------------------------------------------------ grpc.health.v1.Health (serving.health)
    # Serve routes these by method name from the Health servicer registered beside Ranker.

    async def Check(self, request: Any, grpc_context: RayServegRPCContext) -> Any:
        return self._health.check(request, grpc_context)

    async def List(self, request: Any, grpc_context: RayServegRPCContext) -> Any:
        return self._health.list(request, grpc_context)

    async def Watch(self, request: Any, grpc_context: RayServegRPCContext) -> AsyncIterator[Any]:
        async for reply in self._health.watch(request, grpc_context):
            yield reply
