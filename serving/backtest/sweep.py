"""Sweep the online layer's settings on a finished backtest's bases: the hybrid alone.

A backtest spends its time on base fits; the online layer on top of them replays in seconds.
This module reuses a finished run (``report.json``, ``scores.parquet`` and the base
artifacts under ``<run>/workspace/registry``) and replays ``hybrid`` once per grid point
through exactly the backtest's code path (``replay.replay_hybrid``: same features, same
bases, same segments, same test-then-train order), then compares each point with the run's
own ``base_only`` and ``daily_retrain`` scores. The run's own online settings are replayed
first and must reproduce its ``hybrid_ungated`` column (the layer's own score; ``hybrid`` in
runs from before issue 18) bit for bit, or the sweep stops. Points are judged on the layer's
own score; production's readiness-gated score of each replay is ``HybridSweep.last_served``.
The chain replayed is the one ``base_only`` served (bases rejected by their gate left out).

::

    python -m serving.backtest.sweep --run bt/sim-s1 \\
        --grid alpha=0.05,0.1,0.2 --grid l1=0,0.5 --grid batch_size=64,256 --out sweep.jsonl

Grid keys: any ``OnlineLayerConfig`` field, plus ``warm_start`` (the backtest's
``online_warm_start``) and ``online_batch`` (replay in mini-batches of N events instead of
the learner's event-time delay; ``null`` for the delay). Tuning is meant to happen on one
log and be confirmed on others: the output names the run it was measured on.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from serving.backtest.config import BacktestConfig
from serving.backtest.errors import BacktestSettingsError
from serving.backtest.metrics import auc, days_worse, gap_closed, log_loss, paired_delta
from serving.backtest.policies import Fit, PolicyRun, retrain_times

if TYPE_CHECKING:
    from base_model.artifact import BaseScorer, BaseScores
    from online_layer.config import OnlineLayerConfig
    from serving.backtest.data import ReplayData
    from serving.backtest.online import OnlineSession
    from serving.backtest.tiers import TierContext

__all__ = ["parse_grid", "grid_points", "HybridSweep", "main"]

WARM_START = "warm_start"
ONLINE_BATCH = "online_batch"


def parse_grid(items: Sequence[str]) -> dict[str, list[Any]]:
    """``["alpha=0.05,0.1", "l1=0"]`` -> ``{"alpha": [0.05, 0.1], "l1": [0]}`` (JSON values).

    Raises:
        BacktestSettingsError: an item without ``=`` or without values.

    Examples
    --------
    >>> parse_grid(["alpha=0.05,0.1", "implementation=cython"])
    {'alpha': [0.05, 0.1], 'implementation': ['cython']}
    """
    grid: dict[str, list[Any]] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        values = [v.strip() for v in raw.split(",") if v.strip()]
        if not sep or not key.strip() or not values:
            raise BacktestSettingsError(f"--grid {item!r}: expected KEY=V1,V2,...")
        parsed = []
        for v in values:
            try:
                parsed.append(json.loads(v))
            except json.JSONDecodeError:
                parsed.append(v)
        grid[key.strip()] = parsed
    return grid


def grid_points(grid: Mapping[str, Sequence[Any]]) -> Iterator[dict[str, Any]]:
    """Every combination of the grid's values, in the grid's key order.

    Examples
    --------
    >>> list(grid_points({"a": [1, 2], "b": [0]}))
    [{'a': 1, 'b': 0}, {'a': 2, 'b': 0}]
    """
    keys = list(grid)
    for values in itertools.product(*(grid[k] for k in keys)):
        yield dict(zip(keys, values))


class _CachedScores:
    """The run's ``TierContext`` with base scores cached per (version, rows): every grid point
    replays the same bases over the same rows."""

    def __init__(self, context: TierContext) -> None:
        self._context = context
        self._cache: dict[tuple[str, int, int], BaseScores] = {}

    def score_base(self, scorer: BaseScorer, data: ReplayData, lo: int, hi: int) -> BaseScores:
        key = (scorer.version, lo, hi)
        if key not in self._cache:
            self._cache[key] = self._context.score_base(scorer, data, lo, hi)
        return self._cache[key]

    def online_session(
        self, fit: Fit, scorer: BaseScorer, online_cfg: OnlineLayerConfig | None = None
    ) -> OnlineSession:
        return self._context.online_session(fit, scorer, online_cfg)


class HybridSweep:
    """One finished backtest, ready to replay its hybrid under other online settings.

    Parameters
    ----------
    run_dir
        A ``freshrank backtest --out`` directory (report.json, scores.parquet, workspace/).
    events
        The events file, if not where ``report.json`` says it was.
    """

    def __init__(self, run_dir: Path, events: Path | None = None) -> None:
        import pyarrow.parquet as pq

        from base_model.artifact import BaseScorer
        from protos.registry import ModelRegistry
        from online_layer.config import OnlineLayerConfig
        from serving.backtest import data as replay_data
        from serving.backtest import tiers
        from serving.backtest.timeline import make_timeline, select_window

        self.run_dir = Path(run_dir)
        report = json.loads((self.run_dir / "report.json").read_text())
        self.report = report
        settings = dict(report["settings"])
        tier_json = settings.pop("tiers")
        settings.pop("online_learning", None)
        self.run_online = OnlineLayerConfig.from_dict(tier_json["online_layer"])
        self.cfg = BacktestConfig.from_dict(settings)
        events_path = Path(events or report["events_file"])
        table = select_window(replay_data.load_events(events_path), self.cfg)
        self._tmp = tempfile.TemporaryDirectory(prefix="freshrank-sweep-")
        workspace = Path(self._tmp.name)
        self.data = replay_data.prepare(table, workspace, self.cfg)
        self.context = _CachedScores(tiers.TierContext(workspace, self.cfg))

        scores = pq.read_table(self.run_dir / "scores.parquet").to_pandas()
        self.eval_lo = int(report["span"]["events_train_only"])
        if len(scores) != self.data.ts_us.size - self.eval_lo:
            raise BacktestSettingsError(
                f"{events_path} gives {self.data.ts_us.size - self.eval_lo} evaluated events, "
                f"the run scored {len(scores)}: not the run's events"
            )
        self.labels = scores["label"].to_numpy(np.float64)
        self.day_index = scores["day"].to_numpy(np.int64)
        self.users = scores["user_id"].to_numpy(object)
        self.reference = {p: scores[p].to_numpy(np.float64) for p in ("base_only", "hybrid", "daily_retrain")}
        # The layer's own score is what a sweep tunes (issue 18: a run's "hybrid" column is
        # production's readiness-gated score; runs from before it have only the ungated one).
        self.served_reference = self.reference["hybrid"]
        if "hybrid_ungated" in scores.columns:
            self.reference["hybrid"] = scores["hybrid_ungated"].to_numpy(np.float64)
        self.last_served: np.ndarray | None = None

        # base_only's chain as the replay built it: at each of its retrain times, the latest
        # of its fits (a blocked retrain kept the previous base for its segment).
        registry = ModelRegistry(self.run_dir / "workspace" / "registry")
        fits = {f["version"]: f for f in report["fits"]}
        rejected = {r["version"] for r in report.get("production", {}).get("rejected_fits", [])}
        own = [fits[v] for v in report["policies"]["base_only"]["base_versions"] if v not in rejected]
        loaded = {}
        for f in own:
            version = registry.get("base", f["version"])
            fit = Fit(
                cutoff=datetime.fromisoformat(f["cutoff"]), train_rows=f["train_rows"],
                train_max_ts=None, seconds=f["seconds"], artifact=str(version.path),
                version=f["version"], parent=f["parent"],
            )
            loaded[f["version"]] = (fit, BaseScorer.load(version.path))
        ts = self.data.ts_us
        first = datetime.fromtimestamp(int(ts[0]) / 1e6, tz=loaded[own[0]["version"]][0].cutoff.tzinfo)
        last = datetime.fromtimestamp(int(ts[-1]) / 1e6, tz=first.tzinfo)
        timeline = make_timeline(first, last, self.cfg.warmup, self.cfg.series_every)
        times = retrain_times(timeline.eval_start, timeline.eval_end, self.cfg.base_every)
        self.n_days = len(timeline.days)
        self.chain = []
        for t in times:
            latest = max((v for v in loaded.values() if v[0].cutoff <= t), key=lambda v: v[0].cutoff)
            self.chain.append(latest)
        edges = [int(np.searchsorted(ts, round(t.timestamp() * 1e6), side="left")) for t in times]
        edges.append(ts.size)
        self.spans = [(max(lo, self.eval_lo), hi) for lo, hi in zip(edges[:-1], edges[1:])]

    def close(self) -> None:
        self._tmp.cleanup()

    def replay(self, point: Mapping[str, Any]) -> tuple[PolicyRun, float]:
        """The layer's own (ungated) score under the run's online settings changed by
        ``point``; (run, seconds). Production's readiness-gated score of the same replay is
        ``last_served`` afterwards."""
        from serving.backtest.replay import replay_hybrid

        from serving.backtest.online import online_delay_us

        point = dict(point)
        warm = point.pop(WARM_START, self.cfg.online_warm_start)
        online_batch = point.pop(ONLINE_BATCH, self.cfg.online_batch)
        online_cfg = dataclasses.replace(self.run_online, **point)
        cfg = dataclasses.replace(
            self.cfg,
            online_warm_start=int(warm),
            online_batch=online_batch,
            online_delay=self.cfg.online_delay if online_batch is None else None,
        )
        served = PolicyRun("hybrid", np.full(self.labels.size, math.nan))
        run = PolicyRun("hybrid_ungated", np.full(self.labels.size, math.nan))
        t0 = time.perf_counter()
        replay_hybrid(
            served, self.data, cfg, self.context, self.chain, self.spans, self.eval_lo,
            lambda phase, message: None, batch=cfg.online_batch or online_cfg.batch_size,
            delay_us=online_delay_us(cfg, online_cfg), online_cfg=online_cfg, ungated=run,
        )
        self.last_served = served.probs
        return run, time.perf_counter() - t0

    def evaluate(self, probs: np.ndarray) -> dict[str, Any]:
        """The target's numbers for one hybrid: against the run's base_only and daily_retrain."""
        y, base, ceil = self.labels, self.reference["base_only"], self.reference["daily_retrain"]
        ll, ll_base, ll_ceil = log_loss(y, probs), log_loss(y, base), log_loss(y, ceil)
        worse, _ = days_worse(y, probs, base, self.day_index, self.n_days, self.users)
        delta = paired_delta(y, probs, base, self.users)
        return {
            "logloss": ll,
            "auc": auc(y, probs),
            "logloss_vs_base_only": (ll_base - ll) / ll_base,
            "auc_delta": auc(y, probs) - auc(y, base),
            "gap_closed": gap_closed(ll_base, ll, ll_ceil),
            "delta_ci95_high": delta.high,
            "days_worse": worse,
        }


def _row(point: Mapping[str, Any], result: Mapping[str, Any]) -> str:
    def f(x: Any, d: int = 4) -> str:
        return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.{d}f}"

    setting = " ".join(f"{k}={v}" for k, v in point.items()) or "(run's settings)"
    return (
        f"| {setting} | {f(result['logloss'])} | {f(result['auc'])} | "
        f"{100 * result['logloss_vs_base_only']:+.2f}% | {f(result['auc_delta'])} | "
        f"{f(result['gap_closed'], 2)} | {result['days_worse']} | {f(result['seconds'], 1)} |"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m serving.backtest.sweep``: print a markdown table, write JSON lines."""
    parser = argparse.ArgumentParser(prog="python -m serving.backtest.sweep", description=__doc__.split("\n")[0])
    parser.add_argument("--run", required=True, type=Path, help="a finished backtest's --out directory")
    parser.add_argument("--events", type=Path, help="the run's events file, if it moved")
    parser.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                        help="values to try for one setting (repeatable; every combination runs)")
    parser.add_argument("--point", action="append", default=[], metavar="JSON",
                        help='one extra point as a JSON object, e.g. \'{"alpha": 0.2, "l1": 0}\'')
    parser.add_argument("--out", type=Path, help="append one JSON line per point here")
    args = parser.parse_args(argv)
    try:
        points = list(grid_points(parse_grid(args.grid))) if args.grid else []
        points += [json.loads(p) for p in args.point]
    except (BacktestSettingsError, json.JSONDecodeError) as exc:
        print(f"sweep: {exc}", file=sys.stderr)
        return 2
    from serving.backtest.online import describe_online_learning

    sweep = HybridSweep(args.run, args.events)
    try:
        run, _ = sweep.replay({})
        if not np.array_equal(run.probs, sweep.reference["hybrid"]):
            print("sweep: the run's own settings did not reproduce its hybrid scores", file=sys.stderr)
            return 3
        base = sweep.evaluate(sweep.reference["base_only"])
        print(f"run {args.run}: base_only log loss {base['logloss']:.4f} AUC {base['auc']:.4f}; "
              f"daily_retrain {log_loss(sweep.labels, sweep.reference['daily_retrain']):.4f}; "
              f"online settings {sweep.run_online.ftrl_params()} hash_bits {sweep.run_online.hash_bits}; "
              f"{describe_online_learning(sweep.cfg, sweep.run_online)}; "
              f"warm_start {sweep.cfg.online_warm_start} (hybrid reproduced)")
        print("| setting | log loss | AUC | vs base_only | AUC delta | gap closed | days worse | s |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|")
        empty: dict[str, Any] = {}
        for point in [empty, *points]:
            run, seconds = sweep.replay(point)
            result = {**sweep.evaluate(run.probs), "seconds": seconds}
            print(_row(point, result), flush=True)
            if args.out is not None:
                with open(args.out, "a", encoding="utf-8") as handle:
                    line = {"run": str(args.run), "point": point, **result}
                    handle.write(json.dumps(line, default=float) + "\n")
    finally:
        sweep.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
