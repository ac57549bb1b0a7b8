"""The replay engine: walk an events log in time order and score four policies on it.

Why it is built this way:

- Features for every event come once, up front, from the feature store's point-in-time
  training set (each row gets features from events strictly before it), so every policy
  sees exactly the features serving would have had, and no policy can see the future
  through them.
- A base fitted at ``t`` gets only rows with ``ts < t`` and scores ``[t, next fit)``; each
  ``Fit`` records the latest timestamp it was actually given, so the report (and a test) can
  show that no score used its own event's label.
- The online layer learns test-then-train: each mini-batch is scored, then learned. It is
  re-bound to each new base (weights trained for one base mean nothing on another).
- The first fit (``[origin, eval_start)``, from scratch, same seed) is the same model for
  ``static``, ``base_only`` and ``daily_retrain``: it is trained once and its compute counted
  for each of them. ``hybrid`` shares ``base_only``'s bases and their compute.

Everything that calls another package lives in ``serving.backtest.data`` (events and
features), ``tiers`` (base fits and scoring) and ``online`` (the online layer); the calendar
is ``timeline``; this module is the schedule and the bookkeeping.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import pyarrow as pa

from protos.timeparse import format_duration
from serving.backtest import POLICIES
from serving.backtest.config import BacktestConfig
from serving.backtest.errors import BacktestDataError
from serving.backtest.policies import Fit, PolicyRun, retrain_times
from serving.backtest.progress import LogProgress, ProgressSink
from serving.backtest.timeline import Timeline, make_timeline, select_window

if TYPE_CHECKING:
    from base_model.artifact import BaseScorer, BaseScores
    from online_layer.config import OnlineLayerConfig
    from serving.backtest.data import ReplayData
    from serving.backtest.online import OnlineSession
    from serving.backtest.tiers import TierContext

__all__ = [
    "run_backtest",
    "replay",
    "replay_hybrid",
    "ReplayOutcome",
]

logger = logging.getLogger(__name__)

_US = 1_000_000


def _to_us(t: datetime) -> int:
    return int(round(t.timestamp() * _US))


def _from_us(us: int) -> datetime:
    return datetime.fromtimestamp(us / _US, tz=UTC)


@dataclass
class ReplayOutcome:
    """What the replay measured, before it is summarised into a report."""

    timeline: Timeline
    labels: np.ndarray  # (E,) float64, the evaluated events' labels
    day_index: np.ndarray  # (E,) int, evaluation day of each
    runs: dict[str, PolicyRun]
    events_total: int
    events_train_only: int
    blocked_fits: list[dict[str, str]]


class Scoring(Protocol):
    """What scoring and the online replay need of the tiers (``tiers.TierContext``, or the
    sweep's cached one)."""

    def score_base(self, scorer: BaseScorer, data: ReplayData, lo: int, hi: int) -> BaseScores: ...

    def online_session(
        self, fit: Fit, scorer: BaseScorer, online_cfg: OnlineLayerConfig | None = None
    ) -> OnlineSession: ...


def replay(
    data: ReplayData, cfg: BacktestConfig, tiers: TierContext, progress: ProgressSink
) -> ReplayOutcome:
    """Fit, score and learn: the four policies on ``data``.

    ``tiers`` (a ``serving.backtest.tiers.TierContext``) provides
    ``fit_base(data, n_rows, cutoff, parent) -> (Fit, scorer)`` (train on the first
    ``n_rows`` rows, all with ``ts < cutoff``), ``score_base(scorer, data, lo, hi) ->
    BaseScores``, ``online_session(fit, scorer, online_cfg=None) -> OnlineSession`` and
    ``online_batch`` (the online mini-batch size).
    """
    ts = data.ts_us
    first, last = _from_us(int(ts[0])), _from_us(int(ts[-1]))
    timeline = make_timeline(first, last, cfg.warmup, cfg.series_every)
    eval_lo = int(np.searchsorted(ts, _to_us(timeline.eval_start), side="left"))
    if eval_lo == 0:
        raise BacktestDataError("no training-only events before the evaluation start")
    n_eval = ts.size - eval_lo
    labels = data.labels[eval_lo:]
    step_us = int(timeline.step.total_seconds() * _US)
    day_index = ((ts[eval_lo:] - _to_us(timeline.eval_start)) // step_us).astype(np.int64)
    progress(
        "plan",
        f"{ts.size:,} events, {eval_lo:,} training-only, {n_eval:,} evaluated over "
        f"{len(timeline.days)} steps of {format_duration(timeline.step)} from {timeline.eval_start:%Y-%m-%d}",
    )

    def bound(t: datetime) -> int:
        return int(np.searchsorted(ts, _to_us(t), side="left"))

    base_times = retrain_times(timeline.eval_start, timeline.eval_end, cfg.base_every)
    daily_times = retrain_times(timeline.eval_start, timeline.eval_end, cfg.daily_every)
    total_fits = len(base_times) + len(daily_times) - 1
    done = 0

    blocked: list[dict[str, str]] = []

    def fit(
        cutoff: datetime, previous: tuple[Fit, BaseScorer] | None, warm: bool, policy: str
    ) -> tuple[Fit, BaseScorer]:
        """A new base at ``cutoff``; if the data gates block it, the previous base stays."""
        nonlocal done
        done += 1
        parent = previous[0] if (warm and previous is not None) else None
        progress("fit", f"{done}/{total_fits} {policy} cutoff {cutoff:%Y-%m-%d %H:%M} "
                 f"({bound(cutoff):,} rows{', warm from ' + parent.version if parent else ', from scratch'})")
        result = tiers.fit_base(data, bound(cutoff), cutoff, parent)
        if result is None:
            if previous is None:
                raise BacktestDataError(
                    f"the base tier's data gates blocked the first fit (cutoff {cutoff:%Y-%m-%d}): "
                    f"{tiers.last_block}. Relax them with --set base_model.<gate>=... or a longer --warmup"
                )
            blocked.append({"policy": policy, "cutoff": cutoff.isoformat(), "reason": tiers.last_block})
            progress("fit", f"{done}/{total_fits} blocked by data gates: keeping {previous[0].version}")
            return previous
        f = result[0]
        progress("fit", f"{done}/{total_fits} done: {f.version} in {f.seconds:.1f} s wall, "
                 f"{f.fit_seconds:.1f} s training, {f.samples:,} samples in {f.epochs} epoch(s) "
                 f"(gate: {f.status})")
        return result

    # One shared first fit: static == base_only[0] == daily_retrain[0].
    shared = fit(timeline.eval_start, None, False, "shared (static, base_only, daily_retrain)")
    base_chain = [shared]
    for t in base_times[1:]:
        base_chain.append(fit(t, base_chain[-1], True, "base_only"))
    daily_chain = [shared]
    for t in daily_times[1:]:
        daily_chain.append(fit(t, daily_chain[-1], False, "daily_retrain"))

    runs = {name: PolicyRun(name, np.full(n_eval, math.nan)) for name in POLICIES}
    runs["static"].fits = [shared[0]]
    runs["base_only"].fits = _unique([f for f, _ in base_chain])
    runs["hybrid"].fits = _unique([f for f, _ in base_chain])
    runs["daily_retrain"].fits = _unique([f for f, _ in daily_chain])

    def segments(times: list[datetime]) -> list[tuple[int, int]]:
        edges = [bound(t) for t in times] + [ts.size]
        return [(max(lo, eval_lo), hi) for lo, hi in zip(edges[:-1], edges[1:])]

    # static and daily_retrain: the base alone.
    progress("score", "static")
    _score_into(runs["static"], tiers, data, [shared], [(eval_lo, ts.size)], eval_lo)
    progress("score", f"daily_retrain ({len(runs['daily_retrain'].fits)} bases)")
    _score_into(runs["daily_retrain"], tiers, data, daily_chain, segments(daily_times), eval_lo)

    # base_only and hybrid: same bases; hybrid adds the online layer, test-then-train.
    _score_into(runs["base_only"], tiers, data, base_chain, segments(base_times), eval_lo)
    runs["hybrid"].base_version = runs["base_only"].base_version
    replay_hybrid(
        runs["hybrid"], data, cfg, tiers, base_chain, segments(base_times), eval_lo, progress,
        batch=tiers.online_batch, delay_us=tiers.online_delay_us,
    )
    for name, run in runs.items():
        if np.isnan(run.probs).any():
            raise RuntimeError(f"policy {name} left {int(np.isnan(run.probs).sum())} events unscored")
    return ReplayOutcome(timeline, labels, day_index, runs, int(ts.size), eval_lo, blocked)


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
) -> None:
    """The online layer on ``base_chain``, test-then-train, into ``run.probs``.

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
        run.probs[lo - eval_lo : hi - eval_lo] = session.test_then_train(
            data, lo, hi, scores, batch, delay_us
        )
        run.online_seconds += session.learn_seconds - before[0]
        run.online_batches += session.batches - before[1]
        run.online_examples += session.examples - before[2]
    progress("online", f"learned {run.online_batches} batches ({run.online_examples:,} examples) "
             f"in {run.online_seconds:.2f} s")


def _unique(fits: list[Fit]) -> list[Fit]:
    """Fits in order, each once (a blocked retrain repeats the base it kept)."""
    seen: set[str] = set()
    unique = []
    for fit in fits:
        if fit.version not in seen:
            seen.add(fit.version)
            unique.append(fit)
    return unique


def _score_into(
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


def write_scores(path: Path, data: ReplayData, outcome: ReplayOutcome) -> Path:
    """Every evaluated event with each policy's probability and the base that scored it.

    Columns: ``ts``, ``user_id``, ``item_id``, ``label``, ``day`` (index into the report's
    ``days``), then per policy ``<policy>`` (probability, scored before learning from the
    event) and, for base-only policies, ``<policy>_base`` (the version that scored it).
    """
    import pyarrow.parquet as pq

    lo = outcome.events_train_only
    columns: dict[str, Any] = {
        "ts": pa.array(data.ts_us[lo:], type=pa.int64()).cast(pa.timestamp("us", tz="UTC")),
        "user_id": pa.array(data.user_ids[lo:], type=pa.string()),
        "item_id": pa.array(data.item_ids[lo:], type=pa.string()),
        "label": pa.array(outcome.labels, type=pa.float32()),
        "day": pa.array(outcome.day_index, type=pa.int32()),
    }
    for name, run in outcome.runs.items():
        columns[name] = pa.array(run.probs, type=pa.float64())
        if run.base_version is not None:
            columns[f"{name}_base"] = pa.array(run.base_version, type=pa.string())
    pq.write_table(pa.table(columns), path)
    return path


def run_backtest(
    events: Path | str | pa.Table,
    out_dir: Path | str,
    cfg: BacktestConfig,
    *,
    progress: ProgressSink | None = None,
    ray_address: str | None = None,
    events_name: str | None = None,
) -> dict[str, Any]:
    """Run the whole backtest and write ``report.json``, ``report.md`` and the PNGs.

    Args:
        events: An events file (Parquet/CSV, the documented events format) or a table in
            ``protos.events.EVENTS_SCHEMA``.
        out_dir: Output directory; the replay's feature-store workspace and base artifacts
            go under ``out_dir/workspace`` (replaced at every run).
        cfg: Cadences, window and tier settings.
        progress: Where progress lines go (default: this package's logger).
        ray_address: An existing Ray cluster; default a local loopback one (or the one
            this process already joined).
        events_name: Name shown in the report for an in-memory table.

    Returns:
        The report as a dict (the content of ``report.json``).

    Raises:
        BacktestDataError / BacktestSettingsError: the log or the settings cannot be replayed.
    """
    from serving.backtest import data as replay_data
    from serving.backtest import tiers
    from serving.backtest.plots import write_plots
    from serving.backtest.render import write_report
    from serving.backtest.summary import build_report

    started = time.monotonic()
    progress = progress or LogProgress()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if isinstance(events, pa.Table):
        source = events_name or "<table>"
        table = replay_data.conform_events(events)
    else:
        source = str(events)
        progress("load", f"reading {events}")
        table = replay_data.load_events(Path(events))
    table = select_window(table, cfg)
    workspace = out / "workspace"
    if workspace.exists():  # the previous run's state (event log, features, fits): ours to replace
        import shutil

        shutil.rmtree(workspace)
    progress("features", f"point-in-time features for {table.num_rows:,} events")
    data = replay_data.prepare(table, out / "workspace", cfg)
    progress("ray", "starting or joining Ray")
    tiers.start_ray(ray_address)
    context = tiers.TierContext(out / "workspace", cfg, ray_address)
    outcome = replay(data, cfg, context, progress)
    t = outcome.timeline
    report = build_report(
        labels=outcome.labels,
        day_index=outcome.day_index,
        days=list(t.days),
        runs=outcome.runs,
        events_file=source,
        settings={
            **cfg.to_json(),
            "online_batch": cfg.online_batch,
            "online_learning": context.online_learning(),
            "tiers": context.tier_config_json(),
        },
        span={
            "first_event": _from_us(int(data.ts_us[0])),
            "last_event": _from_us(int(data.ts_us[-1])),
            "eval_start": t.eval_start,
            "eval_end": t.eval_end,
            "events_total": outcome.events_total,
            "events_train_only": outcome.events_train_only,
            "events_evaluated": int(outcome.labels.size),
        },
        wall_seconds=time.monotonic() - started,
        blocked_fits=outcome.blocked_fits,
        user_ids=data.user_ids[outcome.events_train_only :],
    )
    write_report(out, report)
    write_plots(out, report)
    write_scores(out / "scores.parquet", data, outcome)
    progress("done", f"report in {out} ({time.monotonic() - started:.0f} s)")
    return report
