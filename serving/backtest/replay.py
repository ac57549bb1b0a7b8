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
from dataclasses import dataclass, field
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
from serving.backtest.scoring import replay_hybrid, score_into, unique_fits
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
    extra: dict[str, PolicyRun] = field(default_factory=dict)  # beyond POLICIES (issue 18)
    production: dict[str, Any] = field(default_factory=dict)  # what production's policy did


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
    rejected: list[dict[str, str]] = []
    paid: dict[str, list[Fit]] = {"base_only": [], "daily_retrain": []}

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
        paid.setdefault(policy, []).append(f)
        progress("fit", f"{done}/{total_fits} done: {f.version} in {f.seconds:.1f} s wall, "
                 f"{f.fit_seconds:.1f} s training, {f.samples:,} samples in {f.epochs} epoch(s) "
                 f"(gate: {f.status})")
        if policy == "base_only" and cfg.obey_gate and f.status == "rejected" and previous:
            # Production never serves a rejected base: the previous one keeps serving, and
            # the next weekly fit warm-starts from it. The rejected fit's compute was paid.
            rejected.append({"policy": policy, "cutoff": cutoff.isoformat(), "version": f.version,
                             "kept": previous[0].version})
            progress("fit", f"{done}/{total_fits} rejected by its gate: {previous[0].version} keeps serving")
            return previous
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
    runs["base_only"].fits = unique_fits([shared[0], *paid["base_only"]])
    runs["hybrid"].fits = list(runs["base_only"].fits)
    runs["daily_retrain"].fits = unique_fits([shared[0], *paid["daily_retrain"]])
    extra: dict[str, PolicyRun] = {}
    production: dict[str, Any] = {"rejected_fits": rejected, "obey_gate": cfg.obey_gate}

    def segments(times: list[datetime]) -> list[tuple[int, int]]:
        edges = [bound(t) for t in times] + [ts.size]
        return [(max(lo, eval_lo), hi) for lo, hi in zip(edges[:-1], edges[1:])]

    # static and daily_retrain: the base alone.
    progress("score", "static")
    score_into(runs["static"], tiers, data, [shared], [(eval_lo, ts.size)], eval_lo)
    progress("score", f"daily_retrain ({len(runs['daily_retrain'].fits)} bases)")
    score_into(runs["daily_retrain"], tiers, data, daily_chain, segments(daily_times), eval_lo)

    # base_only and hybrid: same bases; hybrid adds the online layer, test-then-train.
    score_into(runs["base_only"], tiers, data, base_chain, segments(base_times), eval_lo)
    runs["hybrid"].base_version = runs["base_only"].base_version
    ungated = extra["hybrid_ungated"] = PolicyRun("hybrid_ungated", np.full(n_eval, math.nan))
    ungated.fits, ungated.base_version = list(runs["hybrid"].fits), runs["hybrid"].base_version
    production["online_sessions"] = replay_hybrid(
        runs["hybrid"], data, cfg, tiers, base_chain, segments(base_times), eval_lo, progress,
        batch=tiers.online_batch, delay_us=tiers.online_delay_us, ungated=ungated,
    )
    production["hybrid_online_share"] = runs["hybrid"].online_share

    if cfg.fresh_ceiling:
        from serving.backtest.ceiling import fresh_chain

        for window, name in (("all", "daily_fresh"), ("new", "daily_fresh_new")):
            ceiling = fresh_chain(data, tiers, shared, daily_times, bound, progress, window)
            fresh = extra[name] = PolicyRun(name, np.full(n_eval, math.nan))
            fresh.fits = unique_fits(ceiling.paid)
            progress("score", f"{name} ({len(fresh.fits)} bases)")
            score_into(fresh, tiers, data, ceiling.chain, segments(daily_times), eval_lo)
            blocked.extend(ceiling.blocked)
            production[f"{name}_epochs"] = ceiling.epochs
            production[f"{name}_calibration_fit"] = (
                ceiling.calibration.version if ceiling.calibration else None
            )
    extra.update(baseline_runs(data, eval_lo, tiers.online_delay_us or 0))
    from serving.backtest.online_baselines import online_baseline_runs

    extra.update(online_baseline_runs(data, eval_lo, tiers.online_cfg, tiers.online_batch,
                                      tiers.online_delay_us, progress))
    for name, run in {**runs, **extra}.items():
        if np.isnan(run.probs).any():
            raise RuntimeError(f"policy {name} left {int(np.isnan(run.probs).sum())} events unscored")
    return ReplayOutcome(timeline, labels, day_index, runs, int(ts.size), eval_lo, blocked,
                         extra, production)


def add_evidence(report: dict[str, Any], outcome: ReplayOutcome, users: np.ndarray) -> dict[str, Any]:
    """``report`` plus ``evidence`` (``serving.backtest.evidence``: NE with intervals for every
    policy and baseline, every pair, gap closed where estimable) and ``production`` (what
    production's policy did: rejected bases, the layer's served share, the sessions)."""
    from serving.backtest.evidence import evidence
    from serving.backtest.summary import clean, span_compute_seconds

    runs = {**outcome.runs, **outcome.extra}
    fits = list(report["fits"])
    seen = {f["version"] for f in fits}
    for name, run in outcome.extra.items():
        for f in run.fits:
            if f.version not in seen:
                seen.add(f.version)
                fits.append(clean({"policy": name, "cutoff": f.cutoff, "train_rows": f.train_rows,
                                   "train_max_ts": f.train_max_ts, "seconds": f.seconds,
                                   "fit_seconds": f.fit_seconds, "samples": f.samples,
                                   "epochs": f.epochs, "version": f.version, "parent": f.parent,
                                   "gate": f.status}))
    start = report["span"].get("eval_start")
    extra: dict[str, dict[str, Any]] = {}
    for name, run in runs.items():
        entry = {"compute_seconds": run.compute_seconds, "train_samples": run.train_samples,
                 "fits": len(run.fits), "base_versions": [f.version for f in run.fits]}
        # No fits: its online learning only (ftrl_alone, counter_ftrl: warm-up included).
        spent = run.fits or run.online_seconds
        entry["compute_seconds_span"] = span_compute_seconds(entry, fits, start) if spent else 0.0
        if run.online_share is not None:
            entry["online_share"] = run.online_share
        extra[name] = entry
    ev = evidence(outcome.labels, {k: r.probs for k, r in runs.items()}, users, extra=extra)
    hybrid = extra["hybrid"]["compute_seconds_span"]
    for name in ("daily_fresh", "daily_fresh_new"):
        ceiling = extra.get(name, {}).get("compute_seconds_span")
        ev[f"compute_ratio_span_vs_{name}"] = hybrid / ceiling if ceiling else None
    return clean({**report, "fits": fits, "evidence": ev, "production": outcome.production})


def baseline_runs(data: ReplayData, eval_lo: int, delay_us: int) -> dict[str, PolicyRun]:
    """``constant``, ``item_rate`` and (simulated logs) ``oracle`` (``serving.backtest.baselines``);
    the online ones, ``ftrl_alone`` and ``counter_ftrl``, are ``serving.backtest.online_baselines``'s."""
    from serving.backtest.baselines import constant_so_far, item_rate_so_far

    ts, y = data.ts_us, data.labels
    out = {
        "constant": PolicyRun("constant", constant_so_far(ts, y, delay_us)[eval_lo:]),
        "item_rate": PolicyRun("item_rate", item_rate_so_far(ts, y, data.item_ids, delay_us)[eval_lo:]),
    }
    if data.true_ctr is not None:
        out["oracle"] = PolicyRun("oracle", np.asarray(data.true_ctr[eval_lo:], dtype=np.float64))
    return out


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
    for name, run in {**outcome.runs, **outcome.extra}.items():
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
    table = replay_data.check_trainable(select_window(table, cfg), source)
    workspace = out / "workspace"
    if workspace.exists():  # the previous run's state (event log, features, fits): ours to replace
        import shutil

        shutil.rmtree(workspace)
    progress("features", f"point-in-time features for {table.num_rows:,} events")
    data = replay_data.prepare(table, out / "workspace", cfg)
    if cfg.fit_backend == "ray":
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
    report = add_evidence(report, outcome, data.user_ids[outcome.events_train_only :])
    write_report(out, report)
    write_plots(out, report)
    write_scores(out / "scores.parquet", data, outcome)
    progress("done", f"report in {out} ({time.monotonic() - started:.0f} s)")
    return report
