"""Scoring the policies' events: base-alone scores, and the online layer replayed on a
chain of bases (production's readiness-gated score and the layer's own, ungated one)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING

import numpy as np

from serving.backtest.policies import Fit, PolicyRun
from serving.backtest.progress import ProgressSink

if TYPE_CHECKING:
    from base_model.artifact import BaseScorer
    from online_layer.config import OnlineLayerConfig
    from serving.backtest.config import BacktestConfig
    from serving.backtest.data import ReplayData
    from serving.backtest.online import OnlineSession
    from serving.backtest.replay import Scoring

__all__ = ["replay_hybrid", "score_into", "unique_fits"]

_US = 1_000_000


def _to_us(t: datetime) -> int:
    return int(round(t.timestamp() * _US))


def _from_us(us: int) -> datetime:
    return datetime.fromtimestamp(us / _US, tz=UTC)


def replay_hybrid(
    run: PolicyRun,
    data: ReplayData,
    cfg: BacktestConfig,
    tiers: Scoring,
    base_chain: list[tuple[Fit, BaseScorer]],
    spans: list[tuple[int, int]],
    eval_lo: int,
    progress: ProgressSink,
    *,
    batch: int,
    delay_us: int | None = None,
    online_cfg: OnlineLayerConfig | None = None,
    ungated: PolicyRun | None = None,
) -> list[dict[str, object]]:
    """The online layer on ``base_chain``, test-then-train: what production served into
    ``run.probs`` (the layer once its readiness check passed, else the base), the layer's
    own progressive score into ``ungated.probs`` (when given; else it is not kept).
    Returns one record per layer session (base version, events, readiness outcome), and
    sets ``run.online_share``.

    ``base_chain[i]`` scores rows ``spans[i]``; a new base version re-binds the layer (zero
    weights, or warm-started from the ``cfg.online_warm_start`` events before its cut-off).
    Consecutive spans of one version (a retrain the data gates blocked) are one session.
    ``delay_us`` None: mini-batches of ``batch`` events; else feedback is learned
    ``delay_us`` of event time after its event (``OnlineSession.test_then_train``).
    ``online_cfg`` overrides the run's online settings (``serving.backtest.sweep`` replays
    many on the same bases). Learning time and counts go into ``run``.
    """
    ts = data.ts_us
    merged: list[tuple[tuple[Fit, BaseScorer], int, int]] = []
    for entry, (lo, hi) in zip(base_chain, spans):
        if hi <= lo:
            continue
        if merged and merged[-1][0][0].version == entry[0].version and merged[-1][2] == lo:
            merged[-1] = (merged[-1][0], merged[-1][1], hi)
        else:
            merged.append((entry, lo, hi))
    session: OnlineSession | None = None
    sessions: list[dict[str, object]] = []
    served_online = 0
    for (fit_k, scorer), lo, hi in merged:
        scores = tiers.score_base(scorer, data, lo, hi)
        before = (session.learn_seconds, session.batches, session.examples) if session else (0.0, 0, 0)
        if session is None or session.base_version != fit_k.version:
            # A new base: weights learned for the old one mean nothing here. Its warm-start
            # learning (if any) counts as online compute.
            session = tiers.online_session(fit_k, scorer, online_cfg)
            before = (0.0, 0, 0)
            if cfg.online_warm_start:
                w_hi = int(np.searchsorted(ts, _to_us(fit_k.cutoff), side="left"))
                w_lo = max(0, w_hi - cfg.online_warm_start)
                if w_hi > w_lo:
                    w_scores = tiers.score_base(scorer, data, w_lo, w_hi)
                    session.learn_only(data, w_lo, w_hi, w_scores, batch)
        how = f"batches of {batch}" if delay_us is None else f"feedback learned {delay_us / 1e6:g} s later"
        progress("online", f"{fit_k.version}: {hi - lo:,} events from {_from_us(int(ts[lo])):%Y-%m-%d}, {how}")
        out = session.run(data, lo, hi, scores, batch, delay_us)
        run.probs[lo - eval_lo : hi - eval_lo] = out.served
        if ungated is not None:
            ungated.probs[lo - eval_lo : hi - eval_lo] = out.ungated
        served_online += int(out.online.sum())
        sessions.append({
            "base_version": fit_k.version, "events": hi - lo,
            "served_by_layer": int(out.online.sum()),
            "examples_learned": session.examples,
            "first_ready_after_examples": session.first_ready_after,
            "readiness_checks": session.readiness_checks,
            "ready_checks": session.ready_checks,
        })
        run.online_seconds += session.learn_seconds - before[0]
        run.online_batches += session.batches - before[1]
        run.online_examples += session.examples - before[2]
    total = sum(hi - lo for _, lo, hi in merged)
    run.online_share = served_online / total if total else None
    if ungated is not None:
        ungated.online_seconds, ungated.online_batches = run.online_seconds, run.online_batches
        ungated.online_examples, ungated.online_share = run.online_examples, 1.0
    progress("online", f"learned {run.online_batches} batches ({run.online_examples:,} examples) "
             f"in {run.online_seconds:.2f} s; the layer served {served_online:,} of {total:,} "
             f"events (readiness-gated)")
    return sessions


def unique_fits(fits: list[Fit]) -> list[Fit]:
    """Fits in order, each once (a blocked retrain repeats the base it kept)."""
    seen: set[str] = set()
    unique = []
    for fit in fits:
        if fit.version not in seen:
            seen.add(fit.version)
            unique.append(fit)
    return unique


def score_into(
    run: PolicyRun,
    tiers: Scoring,
    data: ReplayData,
    chain: list[tuple[Fit, BaseScorer]],
    spans: list[tuple[int, int]],
    eval_lo: int,
) -> None:
    """Base-alone probabilities: ``chain[i]`` scores rows ``spans[i]``.

    ``protos.metrics.sigmoid`` turns logits into the probabilities serving reports.
    """
    from protos.metrics import sigmoid

    versions = np.full(run.probs.size, "", dtype=object)
    for (fit_i, scorer), (lo, hi) in zip(chain, spans):
        if hi <= lo:
            continue
        logits = tiers.score_base(scorer, data, lo, hi).logits.astype(np.float64)
        run.probs[lo - eval_lo : hi - eval_lo] = sigmoid(logits)
        versions[lo - eval_lo : hi - eval_lo] = fit_i.version
    run.base_version = versions
