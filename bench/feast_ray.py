"""Feast's own Ray engine against freshrank's local path, on one and on two Ray nodes.

    PYTHONPATH=$PWD .venv/bin/python bench/feast_ray.py --workspace /tmp/frk-feastray \\
        [--pit-rows 300,1000] [--views user_stats] [--repeats 3] [--nodes 1,2]

One simulated workspace (bench/features.py's shape: ~1.2 M events over 7 days, ~110 k items,
20 k users, 2.7 M feature rows; its events end a day before the wall clock, because Feast's
Ray engine skips rows older than ``now - ttl``) and 1 M events sampled once as training rows.
For each cluster (``--nodes``: a head alone, or a head and a joined node,
tests/infra/ray_cluster_kit.py: ``ray start`` on loopback, 2 CPUs each, Ray's token auth) a
driver process joins it by address, builds the DuckDB training set of all 1 M rows once
(the local reference at scale), then:

1. for each ``--pit-rows`` size (the first ``--repeats`` times, the others once),
   alternating, the training set of that many rows x 16 features with ``build_training_set``
   on DuckDB (``engine = "duckdb"``) and through Feast's Ray offline store
   (``engine = "ray"``); the first Ray answer of each size is checked equal to DuckDB's,
   every row and column (Feast's Ray join is a per-row loop: 1 M rows is out of reach, see
   ``feature_store.ray_engine``);
2. ``--repeats`` times, alternating, materializes ``--views`` (every row from the first event
   on) into emptied online tables with Feast's local engine and with its Ray compute engine;
   every Ray run's tables are checked equal to the local run's (keys, features, value bytes,
   event times).

Then two small checks of what ``feature_store.ray_engine`` works around, on ``--check-rows``
rows: Feast's Ray join given entity rows that share (user, time), and the Ray join with the
broadcast threshold at 0 MB (its windowed join). Prints one JSON object last.

Both nodes share this machine's 2 cores: a second node adds no CPU here, so the bench shows
what the Ray path costs, and whether spreading it costs more, never the capacity a real
second machine adds.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sqlite3
import subprocess
import sys
import time
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]  # bench/online_layer.py
_ROOT = _HERE.parent
if str(_ROOT) not in sys.path:
    sys.path.append(str(_ROOT))

from feature_store.config import FeatureStoreConfig  # noqa: E402

ROWS_FILE = "bench_feast_ray_rows.parquet"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def build(cfg: FeatureStoreConfig, args: argparse.Namespace) -> dict[str, Any]:
    """Simulate, compute and apply (no materialization: that is what is timed)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from feature_store import repo
    from feature_store.compute import compute_features
    from feature_store.event_log import read_event_log, write_event_log
    from feature_store.simulate import SimulatorConfig, iter_simulation

    today = datetime.now(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
    sim = SimulatorConfig(
        seed=args.seed, start=today - timedelta(days=args.days + 1), days=args.days,
        impressions_per_day=int(args.events / args.days), n_users=args.users, initial_items=0,
        items_per_day=int(args.items / args.days), slate_size=10, short_life_hours=24.0,
        evergreen_fraction=0.05,
    )
    timings: dict[str, float] = {}
    t = time.perf_counter()
    for chunk in iter_simulation(sim):
        write_event_log(chunk, cfg.events_dir, mode="replace")
    timings["simulate_s"] = time.perf_counter() - t
    t = time.perf_counter()
    summary = compute_features(cfg)
    timings["compute_s"] = time.perf_counter() - t
    t = time.perf_counter()
    repo.apply(cfg)
    timings["apply_s"] = time.perf_counter() - t
    events = read_event_log(cfg.events_dir)
    n = min(args.sample_rows, events.num_rows)
    pick = np.sort(np.random.default_rng(1).choice(events.num_rows, n, replace=False))
    pq.write_table(events.select(["user_id", "item_id", "ts", "label"]).take(pa.array(pick)),
                   cfg.workspace / ROWS_FILE)
    log(f"built {events.num_rows:,} events, {summary.rows_written} feature rows: {timings}")
    return {"events": events.num_rows, "end": summary.end.isoformat(), "feature_rows": summary.rows_written,
            "timings": {k: round(v, 1) for k, v in timings.items()}}


# ----------------------------------------------------------------------------- the driver

def online_rows(cfg: FeatureStoreConfig, views: list[str]) -> dict[tuple[str, bytes, str], tuple[bytes, str]]:
    with sqlite3.connect(cfg.online_store_path) as con:
        return {(view, key, feature): (value, str(ts)) for view in views for key, feature, value, ts in
                con.execute(f'SELECT entity_key, feature_name, value, event_ts FROM "{cfg.project}_{view}"')}


def wipe(cfg: FeatureStoreConfig, views: list[str]) -> None:
    with sqlite3.connect(cfg.online_store_path) as con:
        for view in views:
            con.execute(f'DELETE FROM "{cfg.project}_{view}"')


def summary(samples: list[float]) -> dict[str, float]:
    import numpy as np

    return {"median_s": round(float(np.median(samples)), 2), "min_s": round(min(samples), 2),
            "max_s": round(max(samples), 2), "n": len(samples)}


def checks(cfg: FeatureStoreConfig, ray_cfg: FeatureStoreConfig, rows: Any) -> dict[str, Any]:
    """What feature_store.ray_engine works around, measured on a few rows."""
    import numpy as np
    import pandas as pd

    from feature_store import ray_engine
    from feature_store.catalog import USER_FEATURES
    from feature_store.repo import open_store
    from feature_store.training_set import build_training_set

    out: dict[str, Any] = {"rows": rows.num_rows}
    entity_df = pd.DataFrame({"user_id": rows.column("user_id").to_pylist(),
                              "event_timestamp": rows.column("ts").to_pandas()})
    with ray_engine.feast_scope():
        got = open_store(ray_cfg).get_historical_features(
            entity_df=entity_df, features=[f"user_stats:{f}" for f in USER_FEATURES]).to_df()
    out["plain_feast_ray_rows_given"] = len(entity_df)
    out["plain_feast_ray_rows_returned"] = len(got)
    out["rows_sharing_user_ts"] = int(entity_df.duplicated().sum())
    reference = build_training_set(cfg, rows)
    saved = ray_engine.BROADCAST_MB
    ray_engine.BROADCAST_MB = 0  # every view over the threshold: Feast's windowed join
    try:
        windowed = build_training_set(ray_cfg, rows)
        differ = np.zeros(rows.num_rows, dtype=bool)
        for name in reference.column_names[rows.num_columns:]:
            differ |= reference.column(name).to_numpy() != windowed.column(name).to_numpy()
        out["windowed_join_rows_differing_from_duckdb"] = int(differ.sum())
    except Exception as exc:  # noqa: BLE001 - reported, not hidden
        out["windowed_join_error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
    finally:
        ray_engine.BROADCAST_MB = saved
    return out


def driver(args: argparse.Namespace) -> dict[str, Any]:
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from feature_store import repo
    from feature_store.event_log import read_event_log
    from feature_store.ray_engine import connect
    from feature_store.training_set import build_training_set

    cfg = FeatureStoreConfig(workspace=args.workspace)
    ray_cfg = replace(cfg, engine="ray", ray_address=args.address)
    t = time.perf_counter()
    connect(ray_cfg)
    import ray

    out: dict[str, Any] = {"connect_s": round(time.perf_counter() - t, 2), "nodes": len(ray.nodes()),
                           "cluster_cpus": ray.cluster_resources().get("CPU")}
    all_rows = pq.read_table(args.workspace / ROWS_FILE)
    t = time.perf_counter()
    build_training_set(cfg, all_rows)
    out["duckdb_all_rows"] = {"rows": all_rows.num_rows, "s": round(time.perf_counter() - t, 2)}
    events_ts = read_event_log(cfg.events_dir).column("ts")
    start, end = pc.min(events_ts).as_py(), datetime.fromisoformat(args.end)
    views = [v for v in args.views.split(",") if v]
    loads: list[float] = []
    out["pit"] = {}
    for i, n in enumerate(int(x) for x in args.pit_rows.split(",") if x):
        rows = all_rows.slice(0, n)
        samples: dict[str, list[float]] = {"duckdb": [], "ray": []}
        for r in range(args.repeats if i == 0 else 1):
            loads.append(round(os.getloadavg()[0], 2))
            t = time.perf_counter()
            duck = build_training_set(cfg, rows)
            samples["duckdb"].append(time.perf_counter() - t)
            t = time.perf_counter()
            on_ray = build_training_set(ray_cfg, rows)
            samples["ray"].append(time.perf_counter() - t)
            if r == 0:
                equal = on_ray.equals(duck)
                out["pit"][f"{n}_equal"] = equal
                if not equal:
                    out["pit"][f"{n}_columns_differing"] = [
                        c for c in duck.column_names if not on_ray.column(c).equals(duck.column(c))]
            log(f"PIT {n} rows, run {r}: duckdb {samples['duckdb'][-1]:.2f}s ray {samples['ray'][-1]:.1f}s")
        out["pit"][str(n)] = {k: summary(v) for k, v in samples.items()}
        out["pit"][f"{n}_samples"] = {k: [round(x, 2) for x in v] for k, v in samples.items()}
    if views:
        mat: dict[str, list[float]] = {"local": [], "ray": []}
        reference_rows = None
        for r in range(args.repeats):
            loads.append(round(os.getloadavg()[0], 2))
            wipe(cfg, views)
            t = time.perf_counter()
            repo.materialize(cfg, end, start=start, views=views)
            mat["local"].append(time.perf_counter() - t)
            if reference_rows is None:
                reference_rows = online_rows(cfg, views)
                out["materialized_rows"] = len(reference_rows)
                out["materialized_entities"] = {v: len({k for (w, k, _) in reference_rows if w == v}) for v in views}
            wipe(cfg, views)
            t = time.perf_counter()
            repo.materialize(ray_cfg, end, start=start, views=views)
            mat["ray"].append(time.perf_counter() - t)
            same = online_rows(cfg, views) == reference_rows
            out["materialize_ray_equals_local"] = out.get("materialize_ray_equals_local", True) and same
            log(f"materialize run {r}: local {mat['local'][-1]:.1f}s ray {mat['ray'][-1]:.1f}s equal={same}")
        out["materialize"] = {k: summary(v) for k, v in mat.items()}
        out["materialize_samples"] = {k: [round(x, 2) for x in v] for k, v in mat.items()}
    if args.check_rows:
        out["checks"] = checks(cfg, ray_cfg, all_rows.slice(0, args.check_rows))
    loads.append(round(os.getloadavg()[0], 2))
    out["load_1min"] = loads
    return out


# ----------------------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workspace", type=Path, required=True, help="built once, reused afterwards")
    parser.add_argument("--items", type=int, default=110_000)
    parser.add_argument("--events", type=int, default=1_200_000)
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--days", type=float, default=7.0)
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--pit-rows", default="300,1000",
                        help="entity rows of the Ray training sets, comma-separated (repeats: the first only; '' skips)")
    parser.add_argument("--sample-rows", type=int, default=1_000_000, help="rows sampled once; DuckDB joins all")
    parser.add_argument("--views", default="user_stats", help="views to materialize, comma-separated ('' skips)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--nodes", default="1,2", help="cluster sizes to run on, e.g. 1,2")
    parser.add_argument("--check-rows", type=int, default=300, help="0 skips the checks")
    parser.add_argument("--driver-timeout", type=float, default=3000)
    parser.add_argument("--driver", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--address", default="", help=argparse.SUPPRESS)
    parser.add_argument("--end", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.workspace = args.workspace.absolute()
    if args.driver:
        print(json.dumps(driver(args)))
        return 0

    from tests.infra.ray_cluster_kit import two_node_cluster

    cfg = FeatureStoreConfig(workspace=args.workspace)
    result: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
                    "load_start": [round(x, 2) for x in os.getloadavg()]},
        "args": {k: str(v) for k, v in vars(args).items() if k not in ("driver", "address", "end")},
    }
    state = cfg.features_dir / "_state.json"
    if state.exists() and cfg.registry_path.exists() and (cfg.workspace / ROWS_FILE).exists():
        result["build"] = {"reused": True, "end": json.loads(state.read_text())["end"]}
    else:
        result["build"] = build(cfg, args)
    result["runs"] = {}
    for nodes in [int(n) for n in args.nodes.split(",") if n]:
        with two_node_cluster(nodes=nodes) as cluster:
            command = [sys.executable, __file__, "--driver", "--workspace", str(args.workspace),
                       "--address", cluster.gcs, "--end", result["build"]["end"], "--views", args.views,
                       "--repeats", str(args.repeats), "--check-rows", str(args.check_rows),
                       "--pit-rows", args.pit_rows]
            env = {**cluster.env, "PYTHONPATH": str(_ROOT)}
            log(f"--- {nodes} node(s): {cluster.gcs}, joined in {cluster.timings}")
            done = subprocess.run(command, env=env, stdout=subprocess.PIPE, text=True, timeout=args.driver_timeout)
            lines = done.stdout.strip().splitlines()
            run = json.loads(lines[-1]) if done.returncode == 0 and lines else {"error": f"driver exit {done.returncode}"}
            run["cluster_start_s"] = {k: round(v, 1) for k, v in cluster.timings.items()}
            result["runs"][f"{nodes}_node"] = run
            log(json.dumps(run))
    result["machine"]["load_end"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
