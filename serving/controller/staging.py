"""The shadow and canary steps: stage the candidate, judge it, pass it on or abort it.

``state.staged`` carries what the step has done, so a restarted controller knows:
``{"phase", "requested_at"}`` before the stage call, ``"confirmed_at"`` and ``"serial"``
once the app acknowledged it, ``"abort": {"reason", "figures"}`` once an abort is decided
(re-issued until the app acknowledges it or answers that nothing is staged). The resume
rules are in ``machine``'s docstring; the judgements in ``verdicts``.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import grpc
import pyarrow as pa
import pyarrow.compute as pc

from protos.freshrank.v1 import ranking_pb2
from serving.controller.moves import End, Move, Next, Wait
from serving.controller.port import rpc_failure
from serving.controller.verdicts import Verdict, judge_canary, judge_interleaving, judge_shadow

if TYPE_CHECKING:
    from serving.controller.machine import Controller
    from serving.controller.store import CycleState

__all__ = ["abort", "begin_abort", "canary", "combine", "shadow"]

PHASES = {"shadow": ranking_pb2.CANDIDATE_PHASE_SHADOW, "canary": ranking_pb2.CANDIDATE_PHASE_CANARY}
NEXT = {"shadow": "canary", "canary": "promote"}
#: After a stage call, how long a report that does not show the candidate yet is waited for.
REPORT_GRACE = timedelta(seconds=30)


def shadow(ctl: Controller, state: CycleState) -> Move:
    return _staged(ctl, state, "shadow")


def canary(ctl: Controller, state: CycleState) -> Move:
    return _staged(ctl, state, "canary")


def _staged(ctl: Controller, state: CycleState, phase: str) -> Move:
    version = str(state.version)
    staged = state.staged
    if staged and staged.get("abort"):
        return abort(ctl, state)
    if staged is None or staged.get("phase") != phase:
        staged = state.staged = {"phase": phase, "requested_at": ctl.now_iso()}
        ctl.save(state)
    timeout = ctl.cfg.duration(f"{phase}_timeout")
    if not staged.get("confirmed_at"):
        if _since(ctl, staged["requested_at"]) > timeout:
            return End("aborted", f"{phase}: the app did not take the candidate within {timeout}")
        share = ctl.cfg.canary_share if phase == "canary" else 0.0
        reason = f"cycle {state.cycle}: {phase} of {version} ({(state.decision or {}).get('summary', '')})"
        reply = ctl.port.stage_candidate(version, phase, reason[:500], ctl.cfg.actor, canary_share=share)
        staged.update(confirmed_at=ctl.now_iso(), serial=reply.control_serial)
        ctl.save(state)
        ctl.record(state, "staged", f"{version} staged for {phase}: {reply.detail}",
                   serial=reply.control_serial, canary_share=share)
    report = ctl.port.candidate_report()
    elapsed = _since(ctl, staged["confirmed_at"])
    if report.candidate_base_version != version or report.phase != PHASES[phase]:
        seen = f"{report.candidate_base_version or 'none'} ({ranking_pb2.CandidatePhase.Name(report.phase)})"
        if elapsed < max(REPORT_GRACE, 3 * ctl.cfg.duration("poll_every")):
            return Wait(f"the app reports candidate {seen}, not yet {version} in {phase}")
        return End("aborted", f"the app no longer stages {version} for {phase} (it reports {seen}): "
                   "aborted by on-call or lost in a restart")
    state.champion = report.champion_base_version or state.champion
    verdict = _judge(ctl, state, phase, report, elapsed)
    if not verdict.final:
        if elapsed > timeout:
            return begin_abort(ctl, state, f"{phase} timed out after {timeout}: {verdict.reason}",
                               verdict.figures)
        return Wait(verdict.reason)
    state.verdicts[phase] = {"decision": verdict.decision, "reason": verdict.reason,
                             "figures": verdict.figures}
    ctl.save(state)
    ctl.record(state, "verdict", verdict.reason, decision=verdict.decision, figures=verdict.figures)
    if verdict.decision == "fail":
        return begin_abort(ctl, state, verdict.reason, verdict.figures)
    return Next(NEXT[phase])


def _judge(
    ctl: Controller,
    state: CycleState,
    phase: str,
    report: ranking_pb2.CandidateReportReply,
    elapsed: timedelta,
) -> Verdict:
    if phase == "shadow":
        return judge_shadow(report, ctl.cfg)
    champion = report.champion_base_version or str(state.champion)
    rows = canary_rows(ctl.events(ctl.as_of(state) - timedelta(hours=1)), champion, str(state.version))
    ab = judge_canary(rows, champion, str(state.version), ctl.cfg, elapsed)
    if ctl.cfg.interleave_min_users <= 0:
        return ab
    # Two single-look tests: each one's first final verdict is kept (in ``state.staged``)
    # and never judged again while the other waits.
    looks = (state.staged or {}).setdefault("looks", {})
    if "ab" in looks:
        ab = Verdict(**looks["ab"])
    elif ab.final:
        looks["ab"] = {"decision": ab.decision, "reason": ab.reason, "figures": ab.figures}
    il = Verdict(**looks["interleaving"]) if "interleaving" in looks else judge_interleaving(
        rows, champion, str(state.version), ctl.cfg, elapsed)
    if il.final and "interleaving" not in looks:
        looks["interleaving"] = {"decision": il.decision, "reason": il.reason, "figures": il.figures}
    ctl.save(state)
    return combine(ab, il)


def combine(ab: Verdict, interleaving: Verdict) -> Verdict:
    """The canary's verdict when it is judged twice: a fail as soon as either fails, a
    pass when both pass, else wait; the A/B figures with the interleaving's beside them."""
    figures = {**ab.figures, "interleaving": interleaving.figures}
    failed = [v for v in (ab, interleaving) if v.decision == "fail"]
    if failed:
        return Verdict("fail", "; ".join(v.reason for v in failed), figures)
    decision = "pass" if ab.decision == interleaving.decision == "pass" else "wait"
    return Verdict(decision, f"{ab.reason}; {interleaving.reason}", figures)


def canary_rows(events: pa.Table, champion: str, candidate: str) -> pa.Table:
    """The rows of both bases over the same period: the event-time span of the candidate's
    served rows (its first to its last), since it serves only while staged."""
    versions = events.column("base_version")
    mine = events.filter(pc.equal(versions, candidate))
    if mine.num_rows == 0:
        return mine
    bounds = pc.min_max(mine.column("ts"))
    ts = events.column("ts")
    inside = pc.and_(pc.greater_equal(ts, bounds["min"]), pc.less_equal(ts, bounds["max"]))
    both = pc.or_(pc.equal(versions, candidate), pc.equal(versions, champion))
    return events.filter(pc.and_(inside, both))


def begin_abort(ctl: Controller, state: CycleState, reason: str, figures: dict[str, Any]) -> Move:
    staged: dict[str, Any] = state.staged if state.staged is not None else {"phase": state.step}
    staged["abort"] = {"reason": reason, "figures": figures}
    state.staged = staged
    ctl.save(state)
    return abort(ctl, state)


def abort(ctl: Controller, state: CycleState) -> Move:
    """``AbortCandidate``; an unreachable app raises (the step waits and re-issues it)."""
    decided = dict((state.staged or {}).get("abort") or {})
    reason = str(decided.get("reason", "aborted"))
    try:
        reply = ctl.port.abort_candidate(f"cycle {state.cycle}: {reason}"[:500], ctl.cfg.actor)
        detail = reply.detail
    except grpc.RpcError as error:
        failure = rpc_failure(error)
        if failure.retryable:
            raise
        detail = f"the app answered {failure} (nothing left staged)"
    ctl.record(state, "aborted", f"AbortCandidate: {detail}")
    return End("aborted", reason, dict(decided.get("figures") or {}))


def _since(ctl: Controller, iso: str) -> timedelta:
    return ctl.clock() - datetime.fromisoformat(iso)
