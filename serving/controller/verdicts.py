"""The controller's two judgements of a candidate base: shadow (from the app's report) and
canary (from the workspace's event log).

Each returns a ``Verdict``: ``decision`` is "wait" (not enough evidence yet), "pass" or
"fail", with a one-line ``reason`` and the ``figures`` it was decided on (recorded in the
controller's history).

Shadow rule. The report (``CandidateReport``) is judged once it counts at least
``shadow_min_requests`` shadowed requests; the candidate passes when every bound holds:
mean top-k overlap >= ``shadow_min_top_k_overlap``, mean Spearman rank correlation >=
``shadow_min_rank_correlation``, candidate/champion mean predicted CTR in
[``shadow_min_ctr_ratio``, ``shadow_max_ctr_ratio``], candidate/champion base scoring time
<= ``shadow_max_latency_ratio`` at p50 and <= ``shadow_max_latency_ratio_p99`` at p99. A
figure that cannot be formed (a champion CTR or latency of 0: not measured) fails its bound:
the shadow fails closed.

Canary rule (non-inferiority of progressive log loss, one look).
    Rows: the event log's impressions with ``label`` and ``final_score`` (what the served
    pair predicted, online correction included), shown from the moment the canary was
    staged, split by ``base_version`` into the candidate's group and the champion's. The
    groups are different users (the app assigns a stable hash share of users to the
    candidate) over the same period.
    Statistic: ``r = LL_candidate / LL_champion - 1``, where ``LL`` is a group's mean log
    loss of ``final_score`` against ``label`` (``protos.metrics``).
    Interval: a Poisson bootstrap over users (each user's rows resampled together, since
    one user's rows are correlated and the assignment is per user), in each group
    independently, ``canary_bootstrap_samples`` replicates, fixed ``seed``; ``upper`` is
    the ``canary_confidence`` quantile of the replicated ``r`` (a one-sided bound).
    Decision: made once, the first time both groups hold ``canary_min_events`` rows and
    ``canary_min_duration`` has passed (a single look, so repeated peeking cannot inflate
    the chance of promoting a worse base): promote ("pass") when ``upper <=
    canary_margin`` (the candidate is at most ``canary_margin`` worse, at that confidence);
    otherwise "fail" (abort). Never judged before ``canary_timeout``: the caller aborts.
    Interleaved requests (``interleave_team`` set) are not in either group.

Interleaving rule (``judge_interleaving``; only with ``interleave_min_users`` > 0).
    Rows: the champion's impressions since staging that were interleaved with the candidate
    (``serving.serving.interleave_share``; the team of each in ``interleave_team``). Each
    request's outcome is the sign of (candidate-team clicks - champion-team clicks), each
    user's the sign of their requests' sum (``serving.interleaving``). Test: the exact
    two-sided sign test over users at level ``interleave_alpha``, one look: made the first
    time ``interleave_min_users`` users have a non-tied outcome and ``canary_min_duration``
    has passed. Decision: "fail" when users significantly prefer the champion, "pass"
    otherwise (the candidate preferred, or no preference shown); the chance that an equally
    good candidate fails is at most ``interleave_alpha`` / 2.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from protos.metrics import log_losses

if TYPE_CHECKING:
    from protos.freshrank.v1 import ranking_pb2
    from serving.controller.config import ControllerConfig

__all__ = [
    "Verdict", "canary_groups", "judge_canary", "judge_interleaving", "judge_shadow", "ratio_bound",
    "user_ratio_bound",
]

_CHUNK = 64  # bootstrap replicates drawn at a time (bounds memory: chunk x users)


@dataclass(frozen=True)
class Verdict:
    decision: str  # "wait", "pass" or "fail"
    reason: str
    figures: dict[str, Any] = field(default_factory=dict)

    @property
    def final(self) -> bool:
        return self.decision != "wait"


def judge_shadow(
    report: ranking_pb2.CandidateReportReply, cfg: ControllerConfig
) -> Verdict:
    """The shadow rule (module docstring) on one report of the staged candidate."""
    figures: dict[str, Any] = {
        "champion": report.champion_base_version,
        "candidate": report.candidate_base_version,
        "shadow_requests": int(report.shadow_requests),
        "top_k_overlap": report.top_k_overlap,
        "rank_correlation": report.rank_correlation,
        "mean_abs_score_difference": report.mean_abs_score_difference,
        "champion_mean_ctr": report.champion_mean_ctr,
        "candidate_mean_ctr": report.candidate_mean_ctr,
    }
    if report.shadow_requests < cfg.shadow_min_requests:
        return Verdict(
            "wait", f"{report.shadow_requests} of {cfg.shadow_min_requests} shadowed requests", figures
        )
    ctr = _ratio(report.candidate_mean_ctr, report.champion_mean_ctr)
    p50 = _ratio(report.candidate_latency_ms_p50, report.champion_latency_ms_p50)
    p99 = _ratio(report.candidate_latency_ms_p99, report.champion_latency_ms_p99)
    figures.update(ctr_ratio=ctr, latency_ratio_p50=p50, latency_ratio_p99=p99)
    failed = []
    if not report.top_k_overlap >= cfg.shadow_min_top_k_overlap:
        failed.append(f"top-k overlap {report.top_k_overlap:.3f} < {cfg.shadow_min_top_k_overlap:g}")
    if not report.rank_correlation >= cfg.shadow_min_rank_correlation:
        failed.append(
            f"rank correlation {report.rank_correlation:.3f} < {cfg.shadow_min_rank_correlation:g}"
        )
    if ctr is None or not cfg.shadow_min_ctr_ratio <= ctr <= cfg.shadow_max_ctr_ratio:
        failed.append(
            f"predicted CTR ratio {_show(ctr)} outside [{cfg.shadow_min_ctr_ratio:g}, "
            f"{cfg.shadow_max_ctr_ratio:g}]"
        )
    if p50 is None or p50 > cfg.shadow_max_latency_ratio:
        failed.append(f"p50 latency ratio {_show(p50)} > {cfg.shadow_max_latency_ratio:g}")
    if p99 is None or p99 > cfg.shadow_max_latency_ratio_p99:
        failed.append(f"p99 latency ratio {_show(p99)} > {cfg.shadow_max_latency_ratio_p99:g}")
    if failed:
        return Verdict("fail", "shadow out of bounds: " + "; ".join(failed), figures)
    return Verdict(
        "pass",
        f"shadow within bounds on {report.shadow_requests} requests: overlap "
        f"{report.top_k_overlap:.3f}, rank correlation {report.rank_correlation:.3f}, CTR ratio "
        f"{ctr:.3f}, latency ratio p50 {p50:.2f} p99 {p99:.2f}",
        figures,
    )


def canary_groups(
    events: pa.Table, champion: str, candidate: str
) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per group ("candidate", "champion"): (user ids, labels, final scores) of the rows
    that can be judged (served by that base, with a label and a final score)."""
    out = {}
    judged = pc.and_(pc.is_valid(events.column("final_score")), pc.is_valid(events.column("label")))
    if "interleave_team" in events.column_names:  # interleaved requests are neither group
        judged = pc.and_(judged, pc.is_null(events.column("interleave_team")))
    for name, version in (("candidate", candidate), ("champion", champion)):
        rows = events.filter(pc.and_(judged, pc.equal(events.column("base_version"), version)))
        out[name] = (
            rows.column("user_id").to_numpy(zero_copy_only=False),
            rows.column("label").to_numpy(zero_copy_only=False).astype(np.float64),
            rows.column("final_score").to_numpy(zero_copy_only=False).astype(np.float64),
        )
    return out


def judge_canary(
    events: pa.Table,
    champion: str,
    candidate: str,
    cfg: ControllerConfig,
    elapsed: timedelta,
) -> Verdict:
    """The canary rule (module docstring) on the event-log rows since the canary began."""
    groups = canary_groups(events, champion, candidate)
    n_cand, n_champ = len(groups["candidate"][1]), len(groups["champion"][1])
    figures: dict[str, Any] = {
        "champion": champion, "candidate": candidate, "candidate_rows": n_cand,
        "champion_rows": n_champ, "elapsed_seconds": round(elapsed.total_seconds(), 1),
    }
    need = cfg.canary_min_events
    if elapsed < cfg.duration("canary_min_duration") or min(n_cand, n_champ) < need:
        return Verdict(
            "wait",
            f"canary rows {n_cand} (candidate) and {n_champ} (champion) of {need} each, "
            f"{elapsed.total_seconds():.0f}s of {cfg.duration('canary_min_duration').total_seconds():.0f}s",
            figures,
        )
    ll_cand = float(log_losses(groups["candidate"][1], groups["candidate"][2]).mean())
    ll_champ = float(log_losses(groups["champion"][1], groups["champion"][2]).mean())
    point = ll_cand / ll_champ - 1.0
    lower, upper = ratio_bound(groups, cfg.canary_confidence, cfg.canary_bootstrap_samples, cfg.seed)
    figures.update(
        candidate_logloss=ll_cand, champion_logloss=ll_champ, relative_difference=point,
        bound_lower=lower, bound_upper=upper, margin=cfg.canary_margin,
        confidence=cfg.canary_confidence,
    )
    text = (
        f"candidate log loss {ll_cand:.5f} vs champion {ll_champ:.5f} ({point:+.2%}; "
        f"{cfg.canary_confidence:.0%} bound {upper:+.2%}, margin +{cfg.canary_margin:.2%}) on "
        f"{n_cand} vs {n_champ} rows"
    )
    if upper <= cfg.canary_margin:
        return Verdict("pass", "canary non-inferior: " + text, figures)
    return Verdict("fail", "canary not shown non-inferior: " + text, figures)


def judge_interleaving(
    events: pa.Table, champion: str, candidate: str, cfg: ControllerConfig, elapsed: timedelta
) -> Verdict:
    """The interleaving rule (module docstring) on the event-log rows since the canary began."""
    from serving.interleaving import CANDIDATE, CHAMPION, preference_test, user_outcomes

    users, per_request = np.array([], dtype=object), np.array([], dtype=np.int8)
    if "interleave_team" in events.column_names:
        rows = events.filter(pc.and_(
            pc.and_(pc.is_valid(events.column("interleave_team")), pc.is_valid(events.column("label"))),
            pc.equal(events.column("base_version"), champion)))
        requests = rows.column("request_id").to_numpy(zero_copy_only=False).astype(str)
        _, first, index = np.unique(requests, return_index=True, return_inverse=True)
        team = rows.column("interleave_team").to_numpy(zero_copy_only=False)
        clicked = rows.column("label").to_numpy(zero_copy_only=False) > 0
        credited = clicked.astype(np.float64)
        net = (np.bincount(index, weights=credited * (team == CANDIDATE), minlength=len(first))
               - np.bincount(index, weights=credited * (team == CHAMPION), minlength=len(first)))
        per_request = np.sign(net).astype(np.int8)  # +1 candidate, -1 champion, 0 tie
        users = rows.column("user_id").to_numpy(zero_copy_only=False)[first].astype(str)
    test = preference_test(user_outcomes(users, per_request), alpha=cfg.interleave_alpha)
    low, high = test.share_interval()
    figures: dict[str, Any] = {
        "champion": champion, "candidate": candidate, "interleaved_requests": int(len(per_request)),
        "candidate_wins": test.candidate_wins, "champion_wins": test.champion_wins,
        "ties": test.ties, "candidate_share": test.candidate_share, "share_lower": low,
        "share_upper": high, "p_value": test.p_value, "alpha": cfg.interleave_alpha,
        "elapsed_seconds": round(elapsed.total_seconds(), 1),
    }
    need = cfg.interleave_min_users
    if elapsed < cfg.duration("canary_min_duration") or test.decided < need:
        return Verdict("wait", f"interleaving: {test.decided} of {need} users with a preference "
                       f"({len(per_request)} interleaved requests)", figures)
    text = (f"users preferring the candidate {test.candidate_wins}, the champion "
            f"{test.champion_wins} (share {test.candidate_share:.3f}, 95% [{low:.3f}, {high:.3f}], "
            f"sign test p = {test.p_value:.3g}) over {len(per_request)} interleaved requests")
    if test.preferred == "champion":
        return Verdict("fail", "interleaving prefers the champion: " + text, figures)
    return Verdict("pass", "interleaving shows no preference for the champion: " + text, figures)


def ratio_bound(
    groups: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]],
    confidence: float,
    samples: int,
    seed: int,
) -> tuple[float, float]:
    """The (1 - confidence) and confidence quantiles of ``LL_cand / LL_champ - 1`` under a
    Poisson bootstrap over each group's users."""
    per_user = {name: _per_user(*groups[name]) for name in ("candidate", "champion")}
    return user_ratio_bound(per_user, confidence, samples, seed)


def user_ratio_bound(
    per_user: dict[str, tuple[np.ndarray, np.ndarray]],
    confidence: float,
    samples: int,
    seed: int,
) -> tuple[float, float]:
    """The (1 - confidence) and confidence quantiles of ``mean_cand / mean_champ - 1``, a
    group's mean being ``sum(values) / sum(counts)`` over its users (``per_user[name]``:
    each user's value sum and row count), under a Poisson bootstrap over each group's users.
    The canary's log loss is one such mean; a click rate (clicks over impressions) another."""
    rng = np.random.default_rng(seed)
    replicated = []
    for start in range(0, samples, _CHUNK):
        size = min(_CHUNK, samples - start)
        means = {}
        for name in ("candidate", "champion"):  # this order: the draws stay the same per seed
            sums, counts = per_user[name]
            weights = rng.poisson(1.0, size=(size, len(counts))).astype(np.float64)
            means[name] = (weights @ sums) / np.maximum(weights @ counts, 1.0)
        replicated.append(means["candidate"] / np.maximum(means["champion"], 1e-12) - 1.0)
    r = np.concatenate(replicated)
    return float(np.quantile(r, 1.0 - confidence)), float(np.quantile(r, confidence))


def _per_user(users: np.ndarray, labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sum of log losses and row count per user (users in sorted order)."""
    _, index = np.unique(users.astype(str), return_inverse=True)
    losses = log_losses(labels, scores)
    return np.bincount(index, weights=losses), np.bincount(index).astype(np.float64)


def _ratio(numerator: float, denominator: float) -> float | None:
    return float(numerator / denominator) if denominator > 0 else None


def _show(value: float | None) -> str:
    return "n/a (not measured)" if value is None else f"{value:.3f}"
