"""``freshrank backtest``: replay an events file through the real tiers, compare four policies.

Registered into the ``freshrank`` console command by ``serving.cli`` through ``register``.
The tiers are tuned only through their own documented settings: the settings file the
``freshrank`` command reads (``--config``, else ``$FRESHRANK_CONFIG``; ``serving.settings``:
``[feature_store]`` ``[base_model]`` ``[online_layer]``) and/or ``--set section.key=value``
on top of it; the file is passed on to the tiers' own workspace (``BacktestConfig.
settings_file``). The backtest's own cadences are flags.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from protos.timeparse import parse_duration, parse_time
from serving.backtest.config import TIER_SECTIONS, BacktestConfig
from serving.backtest.errors import BacktestSettingsError

__all__ = ["register", "config_from_args", "run"]


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``backtest`` to the ``freshrank`` command."""
    p = subparsers.add_parser(
        "backtest",
        help="measure the value of freshness on an events file",
        description=(
            "Replay a time-ordered events file through the real pipeline (Feast features, Ray "
            "Train base fits, the Cython online layer, the serving scorer) and compare static, "
            "base_only, hybrid and daily_retrain on the same events, each scored before it "
            "learns from them. Writes report.json, report.md, logloss.png and auc.png."
        ),
    )
    p.add_argument("--events", required=True, type=Path, help="events file (Parquet or CSV)")
    p.add_argument("--out", type=Path, default=Path("backtest-out"), help="output directory")
    p.add_argument("--warmup", type=parse_duration, help="training-only span before evaluation (default 14d)")
    p.add_argument("--base-every", type=parse_duration, help="base_only/hybrid retrain cadence (default 7d)")
    p.add_argument("--daily-every", type=parse_duration, help="daily_retrain cadence (default 1d)")
    p.add_argument(
        "--series-every", type=parse_duration, help="step of the per-day series and plots (default 1d)"
    )
    p.add_argument("--start", type=parse_time, help="drop events before this UTC time (ISO)")
    p.add_argument("--end", type=parse_time, help="drop events at or after this UTC time (ISO)")
    p.add_argument("--max-events", type=int, help="keep only the first N events (after --start/--end)")
    p.add_argument(
        "--online-batch",
        type=int,
        help="replay the online layer in mini-batches of N events, each scored then learned "
        "(default: learn each event's feedback --online-delay after it, as serving's learner does)",
    )
    p.add_argument(
        "--online-delay",
        type=parse_duration,
        help="event time between an event and its feedback being learned and published "
        "(default: online_layer.join_window_s + max_batch_delay_s + publish_every_s)",
    )
    p.add_argument(
        "--online-warm-start",
        type=int,
        help="events replayed through the online layer when it is re-bound to a new base (default 0)",
    )
    p.add_argument("--seed", type=int, help="seed for every trainer (default 0)")
    p.add_argument("--workers", type=int, help="Ray Train workers per base fit (default 1)")
    p.add_argument(
        "--ray-address",
        help="Ray cluster to join (default: [freshrank] ray_address, else a local loopback one)",
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="a tier setting over --config, e.g. base_model.epochs=3 (JSON value; repeatable)",
    )
    p.add_argument(
        "--serve-rejected",
        action="store_true",
        help="let base_only/hybrid serve bases their evaluation gate rejected (default: the "
        "previous base keeps serving, as production does)",
    )
    p.add_argument(
        "--no-fresh-ceiling",
        action="store_true",
        help="skip daily_fresh (warm daily fits with no held-out day: one more fit a day)",
    )
    p.add_argument(
        "--fit-backend",
        choices=("ray", "local"),
        help="base fits on Ray Train (default) or in this process (no per-fit start-up)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    p.set_defaults(func=run)


def _parse_override(text: str) -> tuple[str, str, Any]:
    key, sep, raw = text.partition("=")
    section, dot, name = key.partition(".")
    if not sep or not dot or not name:
        raise BacktestSettingsError(f"--set {text!r}: expected SECTION.KEY=VALUE")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw  # a bare string
    return section.strip(), name.strip(), value


def config_from_args(args: argparse.Namespace) -> BacktestConfig:
    """Merge flags, ``--config`` and ``--set`` overrides into a ``BacktestConfig``.

    Raises:
        BacktestSettingsError: unknown section, malformed value or missing ``--config`` file.
    """
    from serving.settings import config_path

    values: dict[str, Any] = {}
    tiers: dict[str, dict[str, Any]] = {}
    settings = getattr(args, "settings", None)
    source = settings.source if settings is not None else config_path(getattr(args, "config", None))
    if source is not None:
        if not Path(source).is_file():
            raise BacktestSettingsError(f"--config {source}: no such file")
        values["settings_file"] = Path(source)
    for text in args.overrides:
        section, name, value = _parse_override(text)
        if section not in TIER_SECTIONS:
            raise BacktestSettingsError(
                f"--set {text!r}: unknown section {section!r}; known: {', '.join(TIER_SECTIONS)}"
            )
        tiers.setdefault(section, {})[name] = value
    flags = {
        "warmup": args.warmup,
        "base_every": args.base_every,
        "daily_every": args.daily_every,
        "start": args.start,
        "end": args.end,
        "max_events": args.max_events,
        "online_batch": args.online_batch,
        "online_delay": args.online_delay,
        "online_warm_start": args.online_warm_start,
        "seed": args.seed,
        "workers": args.workers,
        "series_every": args.series_every,
        "fit_backend": getattr(args, "fit_backend", None),
    }
    values.update({k: v for k, v in flags.items() if v is not None})
    if getattr(args, "serve_rejected", False):
        values["obey_gate"] = False
    if getattr(args, "no_fresh_ceiling", False):
        values["fresh_ceiling"] = False
    if tiers:
        values["tier_settings"] = tiers
    return BacktestConfig.from_dict(values)


def run(args: argparse.Namespace) -> int:
    """Run the backtest the flags describe; print where the report is and its headline."""
    from serving.backtest.progress import StderrProgress
    from serving.backtest.replay import run_backtest

    cfg = config_from_args(args)
    settings = getattr(args, "settings", None)
    ray_address = args.ray_address or (settings.ray_address if settings is not None else None)
    progress = None if args.quiet else StderrProgress()
    started = time.monotonic()
    report = run_backtest(args.events, args.out, cfg, progress=progress, ray_address=ray_address)
    c = report["comparison"]
    print(f"wrote {args.out}/report.md, report.json, logloss.png, auc.png ({time.monotonic() - started:.0f} s)")
    print(Path(args.out, "report.md").read_text().split("\n## Target")[0])
    print(f"target {'met' if c['target']['met'] else 'NOT met'}")
    return 0
