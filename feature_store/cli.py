"""``freshrank simulate``, ``freshrank data ...`` and ``freshrank features ...``.

``register(subparsers)`` adds the commands to the ``freshrank`` console command
(``serving/cli.py``), which owns ``--config``/``--workspace`` and hands every command the
``[feature_store]`` section it loaded (``args.settings.feature_store``). Each command prints
a short summary; an error in the input is raised, and ``freshrank`` prints it as one line
(exit status 2).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import TYPE_CHECKING

from protos.errors import FailedPrecondition
from protos.timeparse import parse_time

if TYPE_CHECKING:
    from feature_store.config import FeatureStoreConfig

__all__ = ["register"]


def _config(args: argparse.Namespace) -> FeatureStoreConfig:
    """The ``[feature_store]`` section of the settings the ``freshrank`` command loaded.

    Without them (``register`` used on its own parser, as some tests do) the section's
    defaults with ``--workspace`` (else ``$FRESHRANK_WORKSPACE``, else ``./.freshrank``).
    """
    from feature_store.config import FeatureStoreConfig

    settings = getattr(args, "settings", None)
    if settings is not None:
        return settings.feature_store
    workspace = getattr(args, "workspace", None)
    if workspace is not None:
        return FeatureStoreConfig(workspace=workspace)
    return FeatureStoreConfig.from_env()


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``simulate``, ``data`` and ``features`` to the ``freshrank`` command."""
    from feature_store.importers import DATASETS

    sim = subparsers.add_parser(
        "simulate", help="write a simulated impressions log (drifting news feed)",
        description="Simulate a time-ordered impressions log with new items, bursts, taste "
        "drift and position bias; every row keeps its true click probability (true_ctr).",
    )
    sim.add_argument(
        "--out", type=Path,
        help="Parquet file to write (default: none; the events go into the workspace's event log)",
    )
    sim.add_argument(
        "--into-workspace", action="store_true",
        help="with --out: also write them into the workspace's event log",
    )
    sim.add_argument("--seed", type=int, default=7)
    sim.add_argument("--days", type=float, default=21.0)
    sim.add_argument("--impressions-per-day", type=int, default=20_000)
    sim.add_argument("--users", type=int, default=4_000)
    sim.add_argument("--items-per-day", type=int, default=300)
    sim.add_argument("--slate-size", type=int, default=10)
    sim.add_argument("--start", type=parse_time, default=None,
                     help="first instant, ISO 8601 or unix seconds (default 2026-01-05T00:00Z)")
    sim.set_defaults(func=_cmd_simulate)

    data = subparsers.add_parser("data", help="import public datasets, load events files")
    data_sub = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    imp = data_sub.add_parser(
        "import", help="convert a public dataset to the events format",
        description="Datasets: " + ", ".join(sorted(DATASETS)) + ". Ratings: label = rating >= 4.",
    )
    imp.add_argument("name", choices=sorted(DATASETS))
    imp.add_argument("src", type=Path, help="the dataset's folder as published")
    imp.add_argument("--out", type=Path, required=True, help="Parquet file to write")
    imp.set_defaults(func=_cmd_import)
    load = data_sub.add_parser(
        "load", help="validate an events file (Parquet/CSV) and add it to the workspace event log",
    )
    load.add_argument("path", type=Path)
    load.add_argument("--replace", action="store_true", help="replace the hours it covers instead of appending")
    load.set_defaults(func=_cmd_load)

    feats = subparsers.add_parser("features", help="Feast feature store: apply, compute, materialize")
    feats_sub = feats.add_subparsers(dest="features_command", required=True, metavar="ACTION")
    apply = feats_sub.add_parser("apply", help="register the Feast objects for the workspace")
    apply.set_defaults(func=_cmd_apply)
    compute = feats_sub.add_parser("compute", help="update the offline features from the event log (per hour)")
    compute.add_argument("--end", type=parse_time, default=None,
                         help="compute up to this hour (default: the hour after the last event)")
    compute.add_argument("--full", action="store_true", help="recompute everything")
    compute.set_defaults(func=_cmd_compute)
    mat = feats_sub.add_parser("materialize", help="load features into the online store (incremental)")
    mat.add_argument("--end", type=parse_time, default=None,
                     help="event-time end (default: the end of the computed features, else now)")
    mat.add_argument("--start", type=parse_time, default=None,
                     help="reload from here (default: each view's last materialization)")
    mat.add_argument("--views", nargs="+", default=None, help="only these feature views")
    mat.set_defaults(func=_cmd_materialize)


def _cmd_simulate(args: argparse.Namespace) -> int:
    from feature_store.simulate import SimulatorConfig, iter_simulation, write_simulation

    into_workspace = args.out is None or args.into_workspace
    values = dict(
        seed=args.seed, days=args.days, impressions_per_day=args.impressions_per_day,
        n_users=args.users, items_per_day=args.items_per_day, slate_size=args.slate_size,
    )
    if args.start is not None:
        values["start"] = args.start
    cfg = SimulatorConfig(**values)
    started = time.perf_counter()
    rows = 0
    if args.out is not None:
        rows = write_simulation(cfg, args.out)
        print(f"wrote {rows:,} events to {args.out}")
    if into_workspace:
        from feature_store.event_log import write_event_log

        store_cfg = _config(args)
        rows = 0
        for chunk in iter_simulation(cfg):
            write_event_log(chunk, store_cfg.events_dir, mode="replace")
            rows += chunk.num_rows
        print(f"wrote {rows:,} events to {store_cfg.events_dir}")
    print(f"simulated {cfg.start.isoformat()} .. {cfg.end.isoformat()} in {time.perf_counter() - started:.1f}s")
    return 0


def _cmd_import(args: argparse.Namespace) -> int:
    import pyarrow.parquet as pq

    from feature_store.importers import import_dataset

    table = import_dataset(args.name, args.src)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, args.out, compression="zstd")
    ts = table.column("ts")
    print(
        f"{args.name}: {table.num_rows:,} events, {ts[0].as_py().isoformat()} .. "
        f"{ts[-1].as_py().isoformat()}, positive rate "
        f"{sum(table.column('label').to_pylist()) / max(table.num_rows, 1):.3f} -> {args.out}"
    )
    return 0


def _cmd_load(args: argparse.Namespace) -> int:
    from feature_store.event_log import write_event_log
    from feature_store.events_file import load_events

    cfg = _config(args)
    table = load_events(args.path)
    parts = write_event_log(table, cfg.events_dir, mode="replace" if args.replace else "append")
    print(f"loaded {table.num_rows:,} events into {len(parts)} hour partition(s) of {cfg.events_dir}")
    return 0


def _cmd_apply(args: argparse.Namespace) -> int:
    from feature_store import repo

    cfg = _config(args)
    names = repo.apply(cfg)
    print(f"applied {len(names)} Feast objects ({', '.join(names)}) to {cfg.registry_path}")
    return 0


def _cmd_compute(args: argparse.Namespace) -> int:
    from feature_store.compute import compute_features
    from feature_store.errors import WorkspaceError

    cfg = _config(args)
    try:
        summary = compute_features(cfg, end=args.end, full=args.full)
    except WorkspaceError as exc:
        raise FailedPrecondition(str(exc)) from exc
    rows = ", ".join(f"{k} {v:,}" for k, v in summary.rows_written.items())
    print(
        f"computed features up to {summary.end.isoformat()}: {summary.changed_hours} changed hour(s), "
        f"{summary.days_written} day file(s) per view, rows: {rows} ({summary.seconds:.1f}s)"
    )
    return 0


def _cmd_materialize(args: argparse.Namespace) -> int:
    import json

    from feature_store import repo
    from feature_store.errors import WorkspaceError

    cfg = _config(args)
    end = args.end
    if end is None:
        state = cfg.features_dir / "_state.json"
        end = parse_time(json.loads(state.read_text())["end"] if state.exists() else "now")

    def progress(view: str, i: int, n: int) -> None:
        print(f"[{i + 1}/{n}] {view} ...", flush=True)

    if cfg.engine == "ray":
        print(f"engine: Feast's Ray compute engine on {cfg.ray_address or '$RAY_ADDRESS (else a local cluster)'}")
    try:
        summary = repo.materialize(cfg, end, start=args.start, views=args.views, progress=progress)
    except WorkspaceError as exc:
        raise FailedPrecondition(str(exc)) from exc
    print(summary.format())
    return 0
