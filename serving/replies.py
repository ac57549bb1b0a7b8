"""Reply messages of the live-loop rpcs and the plan part of ``Status``, built from the
Learner's plain values (kept out of the deployment so it stays one job: the door)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from protos.freshrank.v1 import ranking_pb2 as pb

if TYPE_CHECKING:
    from online_layer.reports import LearnerReport
    from serving.plan import ServingPlan

__all__ = ["PHASE_ENUM", "admin_reply", "candidate_report_reply", "fill_plan_status"]

PHASE_ENUM = {"": pb.CANDIDATE_PHASE_UNSPECIFIED, "shadow": pb.CANDIDATE_PHASE_SHADOW,
              "canary": pb.CANDIDATE_PHASE_CANARY}
_REPORT = pb.CandidateReportReply.DESCRIPTOR.fields_by_name
_WHOLE = {f.name for f in _REPORT.values()
          if f.cpp_type in (f.CPPTYPE_UINT64, f.CPPTYPE_INT32, f.CPPTYPE_ENUM)}


def candidate_report_reply(figures: dict[str, Any]) -> pb.CandidateReportReply:
    """``BaseSwitch.report()`` as the reply (counts whole, the phase as its enum)."""
    values = {k: v for k, v in figures.items() if k in _REPORT}
    values["phase"] = PHASE_ENUM[str(values.get("phase", ""))]
    reply = pb.CandidateReportReply()
    for key, value in values.items():
        setattr(reply, key, int(value) if key in _WHOLE else value)
    return reply


def admin_reply(record: dict[str, Any], detail: str = "") -> pb.AdminReply:
    """An audit record as the admin rpcs' reply."""
    return pb.AdminReply(
        action=str(record["action"]),
        previous=str(record["previous"]),
        current=str(record["current"]),
        control_serial=str(record["serial"]),
        detail=detail,
    )


def fill_plan_status(reply: pb.StatusReply, plan: ServingPlan | None, report: LearnerReport) -> None:
    """The live loop's part of ``Status``: the plan, the champion layer's readiness (why
    not ready), and the event log's lag."""
    if plan is not None:
        reply.candidate_base_version = plan.candidate
        reply.candidate_phase = PHASE_ENUM[plan.phase]
        reply.canary_share = plan.share
        reply.plan_serial = plan.serial
        reply.plan_detail = plan.detail[:500]
    readiness = report.readiness
    reply.online_ready = bool(readiness.ready)
    reply.online_readiness_detail = str(readiness.reason)[:500]
    reply.event_log_lag_seconds = float(report.extra.get("event_log_lag_s", -1.0))
