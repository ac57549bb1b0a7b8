"""Issue 20: does Thompson-sampling exploration pay on the simulator? Prints one JSON object.

    PYTHONPATH=$PWD .venv/bin/python bench/exploration.py [--out bench/backtest/explore]
        [--seed N] [--share F] [--slots N] [--scale F] [--focus all|item] [--logging-policy hidden|blind] [--name report.json]

A simulated log (``feature_store.simulate``, the sizes below), point-in-time features
through the backtest's own pipeline (``serving.backtest.data.prepare``), one base fitted on
the warm-up days (``fit_backend = "local"``), its scores on the evaluation days; then the
two arms of ``serving.backtest.exploration`` (greedy vs exploring, each with a fresh online
layer warm-started on the same logged warm-up rows) and their comparison with intervals and
the verdict (the rule: ``serving.backtest.exploration.JUDGEMENT``, in bench/RESULTS.md).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

# Run as a script, bench/ comes first on sys.path and its online_layer.py would shadow the
# online_layer package (as in bench/serving.py).
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
ROOT = _HERE.parent
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))

START = datetime(2026, 1, 5, tzinfo=UTC)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "bench" / "backtest" / "explore"))
    parser.add_argument("--days", type=int, default=4, help="log length (2 warm-up days)")
    parser.add_argument("--impressions-per-day", type=int, default=10_000)
    parser.add_argument("--share", type=float, default=None, help="override the pre-registered share")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--slots", type=int, default=None, help="override the pre-registered slots")
    parser.add_argument("--scale", type=float, default=None, help="override the pre-registered scale")
    parser.add_argument("--focus", default=None, choices=("all", "item"), help="override the pre-registered focus")
    parser.add_argument("--logging-policy", default="hidden", choices=("hidden", "blind"),
                        help="the simulator's logging policy (blind: traffic does not leak bursts)")
    parser.add_argument("--name", default="report.json", help="report file name under --out")
    args = parser.parse_args(argv)

    import numpy as np

    from feature_store.simulate import SimulatorConfig, simulate
    from serving.backtest import data as replay_data
    from serving.backtest.config import BacktestConfig
    from serving.backtest.exploration import ExploreSettings, compare, run_arm
    from serving.backtest.exploration_ope import ope_of_greedy
    from serving.backtest.tiers import TierContext

    t0 = time.monotonic()
    sim = SimulatorConfig(seed=11 + args.seed, start=START, days=float(args.days),
                          impressions_per_day=args.impressions_per_day, n_users=1_000,
                          initial_items=150, items_per_day=120, base_ctr=0.1,
                          logging_policy=args.logging_policy)
    out = Path(args.out)
    workspace = out / "workspace"
    if workspace.exists():
        shutil.rmtree(workspace)
    out.mkdir(parents=True, exist_ok=True)
    cfg = BacktestConfig.from_dict({
        "warmup": "2d", "base_every": "2d", "fit_backend": "local", "seed": args.seed,
        "tier_settings": {"base_model": {"epochs": 3, "batch_size": 256, "embedding_dim": 8,
                                         "hidden_layers": [16], "min_train_rows": 200,
                                         "bootstrap_samples": 20, "min_hour_fraction": 0.0}},
    })
    table = replay_data.conform_events(simulate(sim))
    data = replay_data.prepare(table, workspace, cfg)
    t_features = time.monotonic() - t0
    context = TierContext(workspace, cfg)
    cutoff = START + timedelta(days=2)
    eval_lo = int(np.searchsorted(data.ts_us, int(cutoff.timestamp() * 1_000_000)))
    hi = len(data.ts_us)
    fitted = context.fit_base(data, eval_lo, cutoff, None)
    if fitted is None:
        raise SystemExit(f"the base fit was blocked: {context.last_block}")
    fit, scorer = fitted
    warm_lo = max(0, eval_lo - 5_000)
    warm_scores = context.score_base(scorer, data, warm_lo, eval_lo)
    scores = context.score_base(scorer, data, eval_lo, hi)
    t_fit = time.monotonic() - t0 - t_features

    settings = ExploreSettings(position_decay=sim.position_decay, seed=args.seed)
    if args.share is not None:
        settings = replace(settings, share=args.share)
    if args.slots is not None:
        settings = replace(settings, slots=args.slots)
    if args.scale is not None:
        settings = replace(settings, scale=args.scale)
    if args.focus is not None:
        settings = replace(settings, focus=args.focus)
    arms = {}
    seconds = {}
    for name, policy in (("greedy", None), ("explore", settings.policy())):
        session = context.online_session(fit, scorer)
        session.learn_only(data, warm_lo, eval_lo, warm_scores, 512)
        t1 = time.monotonic()
        arms[name] = run_arm(data, eval_lo, hi, scores, session, settings, policy)
        seconds[name] = round(time.monotonic() - t1, 2)
    report = compare(arms["greedy"], arms["explore"], settings)
    report["ope"] = ope_of_greedy(arms["explore"], arms["greedy"], settings.resamples)
    report["run"] = {
        "at": datetime.now(UTC).isoformat(timespec="seconds"), "machine": platform.node(),
        "cpus": os.cpu_count(), "load_average": os.getloadavg(),
        "simulator": {k: str(v) for k, v in sim.__dict__.items()},
        "events": int(hi), "evaluated_rows": int(hi - eval_lo), "base": fit.version,
        "seconds": {"features": round(t_features, 1), "fit_and_score": round(t_fit, 1), **seconds},
    }
    (out / args.name).write_text(json.dumps(report, indent=2, default=str) + "\n")
    shutil.rmtree(workspace, ignore_errors=True)
    print(json.dumps(report, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
