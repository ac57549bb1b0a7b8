"""The Ranker deployment: the gRPC ingress implementing ``freshrank.v1.Ranker``.

Method names equal the rpc names. Rank: validate -> ``HybridRanker`` (features, base, online
correction, sort) -> reply; what was shown is appended to the replica's served log before
the reply (``serving.served_log``), so the learner always knows an impression before its
click. A background task polls the learner for newer online weights, the breaker's verdict
and the operator controls, and applies them in place; a new replica takes them once before it
serves (``Ranker._catch_up``). Every rpc goes through one door
(``serving.ingress.rpc``): bad input is ``INVALID_ARGUMENT`` naming the field, a
``FreshrankError`` its own status, anything else ``INTERNAL`` with a short message. The
standard ``grpc.health.v1.Health`` methods are served here too (``serving.health``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import pyarrow as pa
from ray import serve
from ray.serve.grpc_util import RayServegRPCContext

from protos.freshrank.v1 import ranking_pb2 as pb
from serving import observability
from serving.auth import AccessPolicy, PeerPolicy, Secret, load_token
from serving.health import HealthState
from serving.ingress import RPCS, caller_metadata, caller_peer, rpc
from serving.observability import observed
from serving.replies import admin_reply, candidate_report_reply, fill_plan_status
from serving.ranking import HybridRanker, OnlineSlot, RankOutcome, fill_learner_status
from serving.learner_deployment import champion_base
from serving.requests import (AdminAction, Limits, RankQuery, parse_admin_request,
                              parse_feedback_request, parse_rank_request)
from serving.errors import InvalidRequest
from serving.exploration import ExplorationPolicy, fill_exploration_status
from serving.settings import Settings

if TYPE_CHECKING:
    import numpy as np
    from ray.serve.handle import DeploymentHandle

logger = logging.getLogger(__name__)

CATCH_UP_S = 10.0  # a new replica waits this long for the learner before serving (_catch_up)


def _rank_query(ranker: Ranker, request: pb.RankRequest) -> RankQuery:
    return parse_rank_request(request, ranker._settings.serving.max_candidates, limits=ranker._limits)


def _feedback_events(ranker: Ranker, request: pb.FeedbackRequest) -> pa.Table:
    cfg = ranker._settings.serving
    try:
        return parse_feedback_request(
            request, cfg.max_feedback_events, limits=ranker._limits, max_position=cfg.max_candidates
        )
    except InvalidRequest:  # refused at the door (INVALID_ARGUMENT): counted in Status too
        ranker._invalid_feedback += 1
        raise


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
        self._rolled_back_to: str | None = None  # the controls' rollback snapshot installed
        self._control_detail = ""
        self._last_control_poll = 0.0
        champion = champion_base(settings)
        base = BaseScorer.load(champion.path)
        cfg = settings.online_layer
        self._featurizer = OnlineFeaturizer(
            base.embedding_dim, hash_bits=cfg.hash_bits, position_buckets=cfg.position_buckets
        )
        features = OnlineFeatureReader(settings.feature_store)
        self._ranker = HybridRanker(features, base, self._featurizer, settings.serving)
        # The live loop's bases (serving.replica_bases): champion, candidate, kept ones.
        from serving.replica_bases import ReplicaBases

        self._bases = ReplicaBases(settings, features, self._ranker)
        self._plan_serial: str | None = None
        self._shadow_tasks: set[asyncio.Future[None]] = set()
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
        self._invalid_feedback = 0  # Feedback calls this replica refused as INVALID_ARGUMENT
        self._health = HealthState(lambda: bool(self._ranker.base_version))
        self._explored = 0  # Rank calls ranked by a Thompson sample (serving.exploration)

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Live operator switches (Serve's ``user_config``), applied without a restart:
        ``online_enabled`` (False: the base alone). Serve's first call, before the replica takes
        traffic (``build_app`` always sets one), then catches up with the learner."""
        unknown = sorted(set(user_config) - {"online_enabled"})
        if unknown:
            raise ValueError(f"unknown Ranker user_config key(s): {', '.join(unknown)}")
        if "online_enabled" in user_config:
            self._online_enabled = bool(user_config["online_enabled"])
            self._bases.set_enabled(self._online_enabled)
            logger.info("online layer %s by operator", "enabled" if user_config["online_enabled"] else "disabled")
        if self._background is None:
            await self._catch_up()

    async def _catch_up(self) -> None:
        """A new replica (restart, scale-up) takes the plan, controls and online weights the
        others serve before its first request (the registry's champion it loaded may be older),
        then polls; a learner silent for ``CATCH_UP_S`` leaves that to the poll."""
        try:
            await asyncio.wait_for(self._poll_once(), CATCH_UP_S)
        except Exception:
            logger.warning("no learner answer before serving; following on the poll", exc_info=True)
        self._ensure_background()

    # ----------------------------------------------------------------- background work

    def _ensure_background(self) -> None:
        if self._background is None or self._background.done():
            self._background = asyncio.get_running_loop().create_task(self._poll_forever())

    async def _poll_forever(self) -> None:
        period = self._settings.serving.weight_poll_seconds
        while True:
            try:
                await self._poll_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("background weight poll failed; keeping current weights")
            await asyncio.sleep(period)

    async def _poll_once(self) -> None:
        await self._poll_plan()
        await self._poll_controls()
        await self._poll_weights()

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
        snapshot = view.get("snapshot")  # a rollback's weights: once, not at each later serial
        if snapshot is not None and snapshot.version != self._rolled_back_to:
            self._rolled_back_to = snapshot.version
            self._install(snapshot.version, snapshot.blob, snapshot.published_at)
        enabled = bool(view["online_enabled"])
        if enabled != self._online_enabled:
            logger.info("online layer %s by operator", "enabled" if enabled else "disabled")
        self._online_enabled = enabled
        self._bases.set_enabled(enabled)
        self._control_serial = str(view["serial"])
        self._control_detail = str(view.get("detail", ""))
        if view.get("exploration") is not None:  # serving.exploration, on every loaded base
            policy = ExplorationPolicy.from_dict(view["exploration"])
            if self._bases.set_exploration(policy):
                logger.info("exploration %s by operator", policy.describe())

    def _authorize(self, rpc_name: str, grpc_context: Any) -> None:
        """The door's first step: callers from other hosts (while serving.host is loopback)
        get PERMISSION_DENIED, callers without the token UNAUTHENTICATED (``serving.auth``)."""
        self._peers.check(rpc_name, caller_peer(grpc_context))
        self._access.check(rpc_name, caller_metadata(grpc_context))

    async def _poll_plan(self) -> None:
        """Follow the serving plan (``serving.base_switch``): load its bases in a thread,
        then switch by reference, so no request fails during a swap."""
        view = await self._learner.plan_view.remote(self._plan_serial)
        if view is not None:
            await self._apply_plan(view)

    async def _apply_plan(self, view: dict[str, Any]) -> None:
        plan = view["plan"]
        await asyncio.to_thread(self._bases.load, plan)
        changed = self._bases.apply(plan)
        self._ranker = self._bases.champion
        snapshot = view.get("snapshot")
        if snapshot is not None and snapshot.base_version == plan.champion:
            self._install(snapshot.version, snapshot.blob, snapshot.published_at)
        self._plan_serial = plan.serial
        if changed:
            self._last_poll = 0.0  # fetch the new roles' weights at once
            logger.info("serving plan %s: champion %s, candidate %s (%s)", plan.serial,
                        plan.champion, plan.candidate or "-", plan.phase or "none")

    async def _poll_weights(self) -> None:
        now = time.monotonic()
        if now - self._last_poll < self._settings.serving.weight_poll_seconds:
            return
        self._last_poll = now
        for ranker, is_champion in ((self._bases.champion, True), (self._bases.candidate, False)):
            if ranker is None:
                continue
            slot = ranker.online
            view = await self._learner.layer_view.remote(
                ranker.base_version, slot.version if slot is not None else None
            )
            if view is None:  # no layer corrects this base (yet): keep what is installed
                continue
            if view.withhold:  # that layer's circuit breaker is not closed: base alone
                ranker.apply_breaker(view.detail)
            else:
                if view.snapshot is not None:
                    snapshot = view.snapshot
                    self._install(snapshot.version, snapshot.blob, snapshot.published_at,
                                  ranker=ranker)
                ranker.apply_breaker(None)
        await self._learner.observe_replica.remote(self._metrics.snapshot(self._ranker.online))
        if self._bases.candidate is not None:
            from serving.served_log import replica_id

            await self._learner.observe_shadow.remote(replica_id(), self._bases.shadow_stats())

    def _install(self, version: str, blob: bytes, published_at: float,
                 ranker: HybridRanker | None = None) -> None:
        ranker = ranker or self._ranker
        base_version = ranker.base_version
        from online_layer.factory import load_snapshot

        model = load_snapshot(blob, base_version, expected_layout=ranker.featurizer.layout())
        ranker.install_online(
            OnlineSlot(model, version, base_version, published_at,
                       max_correction=self._settings.online_layer.guard.max_correction)
        )
        logger.info("installed online weights %s for base %s", version, base_version)

    async def _flush_served(self) -> None:
        """Make every served record of this replica durable (fsync; a timer does it too).
        Feedback calls it first, so an acknowledged click is never durable while its
        impression is not. The learner reads the records from the log itself."""
        await asyncio.to_thread(self._served_log.sync)

    def _remember(self, outcome: RankOutcome, team: np.ndarray | None = None) -> None:
        """Log what was shown, with its interleaving teams if any (to the OS before the
        reply: it survives this replica's death)."""
        from serving.served_log import served_entry

        self._served_log.append(served_entry(outcome, time.time(), team))

    # ----------------------------------------------------------------------- the rpcs
    # Each goes through the door (``serving.ingress.rpc``): it decodes the request, maps bad
    # input to INVALID_ARGUMENT, a ``FreshrankError`` to its status, anything else to INTERNAL.

    @observed
    @rpc(parse=_rank_query)
    async def Rank(self, query: RankQuery, grpc_context: RayServegRPCContext) -> pb.RankResponse:
        observability.bind_request_id(query.request_id)
        self._ensure_background()
        ranker, by_candidate = self._bases.route(query.user_id)
        outcome, team = ranker.rank(query), None
        mixed = self._bases.interleave(query, outcome, by_candidate)  # None outside a canary
        if mixed is not None:
            outcome, team = mixed
        candidate = self._bases.wants_shadow(by_candidate)
        if candidate is not None:  # after the reply is built, in a thread: never served
            task = asyncio.get_running_loop().run_in_executor(
                None, self._bases.shadow_score, query, ranker, candidate
            )
            self._shadow_tasks.add(task)
            task.add_done_callback(self._shadow_tasks.discard)
        self._metrics.observe_rank(outcome)
        self._requests += 1
        self._fallbacks += outcome.fallback is not None
        self._explored += outcome.propensity is not None
        self._remember(outcome, team)
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
        if self._invalid_feedback:  # refused before the learner saw them (this replica)
            reply.rejected_batches["invalid_argument"] = self._invalid_feedback
        fill_learner_status(reply, report)
        reply.online_enabled = self._online_enabled
        reply.control_serial = self._control_serial or ""
        reply.control_detail = self._control_detail[:500]
        fill_plan_status(reply, self._bases.plan, report)
        fill_exploration_status(reply, self._bases.exploration, self._explored)
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

    @rpc(parse=_admin_action)
    async def SetExploration(self, action: AdminAction, grpc_context: RayServegRPCContext) -> pb.AdminReply:
        self._ensure_background()
        record = await self._learner.admin_set_exploration.remote(action.exploration, action.reason, action.actor)
        return await self._after_admin(record)

    # -- the live loop (serving.base_switch; token only) -----------------------------------

    @rpc(parse=_admin_action)
    async def StageCandidate(self, action: AdminAction, grpc_context: RayServegRPCContext) -> pb.AdminReply:
        self._ensure_background()
        record = await self._learner.admin_stage.remote(
            action.base_version, action.phase, action.share, action.reason, action.actor
        )
        return await self._after_plan(record)

    @rpc(parse=_admin_action)
    async def PromoteBase(self, action: AdminAction, grpc_context: RayServegRPCContext) -> pb.AdminReply:
        self._ensure_background()
        record = await self._learner.admin_promote.remote(action.base_version, action.reason, action.actor)
        return await self._after_plan(record)

    @rpc(parse=_admin_action)
    async def RollbackBase(self, action: AdminAction, grpc_context: RayServegRPCContext) -> pb.AdminReply:
        self._ensure_background()
        record = await self._learner.admin_rollback_base.remote(action.to_version, action.reason, action.actor)
        return await self._after_plan(record)

    @rpc(parse=_admin_action)
    async def AbortCandidate(self, action: AdminAction, grpc_context: RayServegRPCContext) -> pb.AdminReply:
        self._ensure_background()
        record = await self._learner.admin_abort_candidate.remote(action.reason, action.actor)
        return await self._after_plan(record)

    @rpc()
    async def CandidateReport(
        self, request: pb.CandidateReportRequest, grpc_context: RayServegRPCContext
    ) -> pb.CandidateReportReply:
        self._ensure_background()
        return candidate_report_reply(dict(await self._learner.candidate_report.remote()))

    async def _after_plan(self, record: dict[str, Any]) -> pb.AdminReply:
        """Apply the new plan on this replica before answering (others follow on their poll)."""
        view = await self._learner.plan_view.remote(None)
        if view is not None:
            await self._apply_plan(view)
        return admin_reply(record, str(record.get("note", record.get("online", ""))))

    async def _after_admin(self, record: dict[str, Any]) -> pb.AdminReply:
        """Apply the new controls here at once (other replicas follow on their poll)."""
        view = await self._learner.admin_controls.remote(None)
        if view is not None:
            self._apply_controls(view)
        return admin_reply(record, str(record.get("published_as", "")))

    # ------------------------------------------------ grpc.health.v1.Health (serving.health)
    # Serve routes these by method name from the Health servicer registered beside Ranker.

    async def Check(self, request: Any, grpc_context: RayServegRPCContext) -> Any:
        return self._health.check(request, grpc_context)

    async def List(self, request: Any, grpc_context: RayServegRPCContext) -> Any:
        return self._health.list(request, grpc_context)

    async def Watch(self, request: Any, grpc_context: RayServegRPCContext) -> AsyncIterator[Any]:
        async for reply in self._health.watch(request, grpc_context):
            yield reply
