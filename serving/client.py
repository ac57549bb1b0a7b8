"""A small synchronous client for the Ranker service (demo, tests, operators).

It is a thin layer over the generated stub: it dials loopback by default, passes the Serve
application name as metadata (and the ingress token, ``authorization: Bearer <token>``, from
``token=`` or ``$FRESHRANK_INGRESS_TOKEN``), and turns Python values into messages.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from datetime import datetime
from types import TracebackType

import grpc
import pyarrow as pa

from protos.freshrank.v1 import ranking_pb2, ranking_pb2_grpc


class RankerClient:
    """Calls ``freshrank.v1.Ranker`` over one gRPC channel; use as a context manager."""

    def __init__(
        self,
        address: str,
        app_name: str = "freshrank",
        timeout_s: float = 10.0,
        token: str | None = None,
    ):
        from serving.auth import TOKEN_ENV

        self._channel = grpc.insecure_channel(address)
        self._stub = ranking_pb2_grpc.RankerStub(self._channel)
        token = os.environ.get(TOKEN_ENV, "").strip() if token is None else token
        self._metadata: tuple[tuple[str, str], ...] = (("application", app_name),)
        if token:
            self._metadata += (("authorization", f"Bearer {token}"),)
        self._timeout = timeout_s

    def wait_ready(self, timeout_s: float = 30.0) -> None:
        """Block until the channel connects (raises ``grpc.FutureTimeoutError`` if not)."""
        grpc.channel_ready_future(self._channel).result(timeout=timeout_s)

    def rank(
        self,
        request_id: str,
        user_id: str,
        candidates: Sequence[str],
        top_k: int = 0,
        request_time: datetime | None = None,
    ) -> ranking_pb2.RankResponse:
        request = ranking_pb2.RankRequest(
            request_id=request_id,
            user_id=user_id,
            candidate_item_ids=list(candidates),
            top_k=top_k,
        )
        if request_time is not None:
            request.context.request_time.FromDatetime(request_time)
        return self._stub.Rank(request, metadata=self._metadata, timeout=self._timeout)

    def feedback(self, events: pa.Table) -> ranking_pb2.FeedbackReply:
        """Send events (events schema: request_id, user_id, item_id, ts, label, position)."""
        return self._stub.Feedback(
            feedback_request(events), metadata=self._metadata, timeout=self._timeout
        )

    def status(self) -> ranking_pb2.StatusReply:
        return self._stub.Status(
            ranking_pb2.StatusRequest(), metadata=self._metadata, timeout=self._timeout
        )

    def set_online_enabled(
        self, enabled: bool, reason: str, actor: str
    ) -> ranking_pb2.AdminReply:
        """The operator switch, in place on every replica (needs the token)."""
        return self._stub.SetOnlineEnabled(
            ranking_pb2.SetOnlineEnabledRequest(enabled=enabled, reason=reason, actor=actor),
            metadata=self._metadata,
            timeout=self._timeout,
        )

    def set_exploration(
        self,
        enabled: bool,
        reason: str,
        actor: str,
        share: float | None = None,
        slots: int | None = None,
        scale: float | None = None,
        samples: int | None = None,
        propensity_draws: int | None = None,
    ) -> ranking_pb2.AdminReply:
        """Exploration on or off in place (``serving.exploration``; needs the token); a
        setting left None keeps its current value. ``propensity_draws``: the
        Rao-Blackwellised propensity's draws, 0 for Monte Carlo with ``samples``."""
        return self._stub.SetExploration(
            ranking_pb2.SetExplorationRequest(
                enabled=enabled, reason=reason, actor=actor,
                share=share, slots=slots, scale=scale, samples=samples,
                propensity_draws=propensity_draws,
            ),
            metadata=self._metadata,
            timeout=self._timeout,
        )

    def rollback_online(
        self, reason: str, actor: str, to_version: str = ""
    ) -> ranking_pb2.AdminReply:
        """Roll the online layer back (last ready snapshot, or ``to_version``; needs the token)."""
        return self._stub.RollbackOnline(
            ranking_pb2.RollbackOnlineRequest(to_version=to_version, reason=reason, actor=actor),
            metadata=self._metadata,
            timeout=self._timeout,
        )

    # -- the live loop (token required; ``serving.plan``) --------------------------------

    def stage_candidate(
        self, base_version: str, phase: str, reason: str, actor: str, canary_share: float = 0.0
    ) -> ranking_pb2.AdminReply:
        """Stage ``base_version`` beside the champion: ``phase`` "shadow" or "canary"."""
        phases = {"shadow": ranking_pb2.CANDIDATE_PHASE_SHADOW,
                  "canary": ranking_pb2.CANDIDATE_PHASE_CANARY}
        if phase not in phases:
            raise ValueError(f"phase must be 'shadow' or 'canary', got {phase!r}")
        return self._stub.StageCandidate(
            ranking_pb2.StageCandidateRequest(
                base_version=base_version, phase=phases[phase], canary_share=canary_share,
                reason=reason, actor=actor,
            ),
            metadata=self._metadata,
            timeout=self._timeout,
        )

    def promote_base(self, reason: str, actor: str, base_version: str = "") -> ranking_pb2.AdminReply:
        """Promote the staged candidate (or ``base_version``) in place."""
        return self._stub.PromoteBase(
            ranking_pb2.PromoteBaseRequest(base_version=base_version, reason=reason, actor=actor),
            metadata=self._metadata,
            timeout=self._timeout,
        )

    def rollback_base(self, reason: str, actor: str, to_version: str = "") -> ranking_pb2.AdminReply:
        """Restore the previous champion base (or ``to_version``) and its online layer."""
        return self._stub.RollbackBase(
            ranking_pb2.RollbackBaseRequest(to_version=to_version, reason=reason, actor=actor),
            metadata=self._metadata,
            timeout=self._timeout,
        )

    def abort_candidate(self, reason: str, actor: str) -> ranking_pb2.AdminReply:
        """Stop the shadow or canary: the champion serves every user."""
        return self._stub.AbortCandidate(
            ranking_pb2.AbortCandidateRequest(reason=reason, actor=actor),
            metadata=self._metadata,
            timeout=self._timeout,
        )

    def candidate_report(self) -> ranking_pb2.CandidateReportReply:
        """The staged candidate's comparison with the champion (shadow and canary)."""
        return self._stub.CandidateReport(
            ranking_pb2.CandidateReportRequest(), metadata=self._metadata, timeout=self._timeout
        )

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> RankerClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def feedback_request(events: pa.Table) -> ranking_pb2.FeedbackRequest:
    """Build a ``FeedbackRequest`` from an events table (missing position counts as 0)."""
    columns = events.select(["request_id", "user_id", "item_id", "ts", "label", "position"])
    micros = columns.column("ts").cast(pa.timestamp("us", tz="UTC")).cast(pa.int64())
    micros_np = micros.to_numpy(zero_copy_only=False)
    positions = columns.column("position").fill_null(0).to_numpy(zero_copy_only=False)
    labels = columns.column("label").to_numpy(zero_copy_only=False)
    message = ranking_pb2.FeedbackRequest()
    for i, (request_id, user_id, item_id) in enumerate(
        zip(
            columns.column("request_id").to_pylist(),
            columns.column("user_id").to_pylist(),
            columns.column("item_id").to_pylist(),
            strict=True,
        )
    ):
        event = message.events.add(
            request_id=request_id or "",
            user_id=user_id,
            item_id=item_id,
            label=float(labels[i]),
            position=int(positions[i]),
        )
        event.event_time.FromMicroseconds(int(micros_np[i]))
    return message


__all__ = ["RankerClient", "feedback_request"]
