"""Feature-store benchmark: online lookups and point-in-time joins, ours against Feast's.

One run, one workspace (simulated: ~100k items, ~1M events, 16 features):

1. Online: 1 user + 100 candidate items -> arrays. ``OnlineFeatureReader`` against Feast's
   ``get_online_features`` for the same rows (by the FeatureService, and stored features
   only, without the on-demand age). Answers are checked equal before timing.
2. Training set: point-in-time join of ``--pit-rows`` entity rows (events) with every
   feature: ``build_training_set`` (DuckDB ASOF) against ``pandas.merge_asof`` doing the same
   join (checked equal) and Feast's ``get_historical_features`` on ``--feast-pit-rows`` rows
   (Feast's file store materializes entity x feature rows, so its row count is capped).

Usage::

    .venv/bin/python bench/features.py                       # full run (several minutes)
    .venv/bin/python bench/features.py --items 5000 --events 50000 --lookups 200  # quick

Human-readable progress goes to stderr; the last line on stdout is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import tempfile
import time
import warnings
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from feature_store import repo  # noqa: E402
from feature_store.catalog import FEATURE_SERVICE_NAME, ITEM_FEATURES, USER_FEATURES  # noqa: E402
from feature_store.compute import compute_features  # noqa: E402
from feature_store.sources import source_dir  # noqa: E402
from feature_store.config import FeatureStoreConfig  # noqa: E402
from feature_store.event_log import read_event_log, write_event_log  # noqa: E402
from feature_store.online import OnlineFeatureReader  # noqa: E402
from feature_store.simulate import SimulatorConfig, iter_simulation  # noqa: E402
from feature_store.training_set import FEATURE_COLUMNS, build_training_set, feast_training_set  # noqa: E402
from feature_store.views import (  # noqa: E402
    AGE_FEATURE,
    FIRST_SEEN_FEATURE,
    ITEM_PROFILE,
    REQUEST_TIME_FIELD,
    WINDOW_VIEWS,
    default_value,
)

warnings.filterwarnings("ignore")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def percentiles(samples_s: list[float]) -> dict[str, float]:
    ms = np.array(samples_s) * 1000
    return {"p50_ms": round(float(np.percentile(ms, 50)), 3), "p99_ms": round(float(np.percentile(ms, 99)), 3),
            "mean_ms": round(float(ms.mean()), 3), "n": len(ms)}


def build(cfg: FeatureStoreConfig, args: argparse.Namespace) -> dict:
    timings: dict[str, float] = {}
    sim = SimulatorConfig(
        seed=args.seed, days=args.days, impressions_per_day=int(args.events / args.days),
        n_users=args.users, initial_items=0, items_per_day=int(args.items / args.days),
        slate_size=10, short_life_hours=24.0, evergreen_fraction=0.05,
    )
    t = time.perf_counter()
    rows = 0
    for chunk in iter_simulation(sim):
        write_event_log(chunk, cfg.events_dir, mode="replace")
        rows += chunk.num_rows
    timings["simulate_and_log_s"] = time.perf_counter() - t
    log(f"simulated {rows:,} events in {timings['simulate_and_log_s']:.1f}s")
    t = time.perf_counter()
    summary = compute_features(cfg)
    timings["compute_s"] = time.perf_counter() - t
    log(f"computed features in {timings['compute_s']:.1f}s: {summary.rows_written}")
    t = time.perf_counter()
    repo.apply(cfg)
    timings["apply_s"] = time.perf_counter() - t
    t = time.perf_counter()
    mat = repo.materialize(cfg, summary.end)
    timings["materialize_s"] = time.perf_counter() - t
    log(mat.format())
    return {"events": rows, "end": summary.end.isoformat(), "timings": timings,
            "feature_rows": summary.rows_written,
            "materialized_entities": {v.name: v.entities for v in mat.views}}


def feast_rows(store, service, user: str, items: list[str], now: float, with_age: bool):
    if with_age:
        rows = [{"user_id": user, "item_id": i, REQUEST_TIME_FIELD: now} for i in items]
        return store.get_online_features(features=service, entity_rows=rows)
    refs = [f"{v.name}:{f}" for v in WINDOW_VIEWS for f in v.features if f in (*USER_FEATURES, *ITEM_FEATURES)]
    refs.append(f"{ITEM_PROFILE}:{FIRST_SEEN_FEATURE}")
    rows = [{"user_id": user, "item_id": i} for i in items]
    return store.get_online_features(features=refs, entity_rows=rows)


def bench_online(cfg: FeatureStoreConfig, args: argparse.Namespace, now: float) -> dict:
    import sqlite3

    con = sqlite3.connect(cfg.online_store_path)
    n_items = con.execute(f'SELECT count(DISTINCT entity_key) FROM "{cfg.project}_item_profile"').fetchone()[0]
    con.close()
    events = read_event_log(cfg.events_dir).select(["user_id", "item_id"]).to_pandas()
    items = events["item_id"].unique()
    users = events["user_id"].value_counts().index[:200].to_numpy()
    rng = np.random.default_rng(0)
    requests = [(str(users[i % len(users)]), [str(x) for x in rng.choice(items, 100, replace=False)])
                for i in range(max(args.lookups, args.feast_lookups))]
    reader = OnlineFeatureReader(cfg)
    store = repo.open_store(cfg)
    service = store.get_feature_service(FEATURE_SERVICE_NAME)

    # Same answers first (the tests prove it; the benchmark re-checks on its own data).
    for user, cands in requests[:20]:
        ours = reader.get(user, cands, now=now)
        got = feast_rows(store, service, user, cands, now, with_age=True).to_dict()
        for j, name in enumerate(ITEM_FEATURES):
            col = np.array([default_value(name, cfg.ctr_prior) if v is None else v for v in got[name]], np.float32)
            if not np.array_equal(col, ours.items[:, j]):
                raise SystemExit(f"online answers differ for {name}")
    log(f"online answers equal to Feast's on 20 requests ({n_items:,} items in the online store)")

    for user, cands in requests[:50]:  # warm-up
        reader.get(user, cands, now=now)
    # Interleaved, so both sides see the same machine load (the box is shared).
    ours_s, feast_s, feast_plain_s = [], [], []
    every = max(1, args.lookups // max(args.feast_lookups, 1))
    for i, (user, cands) in enumerate(requests[: args.lookups]):
        t = time.perf_counter()
        reader.get(user, cands, now=now)
        ours_s.append(time.perf_counter() - t)
        if i % every == 0 and len(feast_s) < args.feast_lookups:
            t = time.perf_counter()
            feast_rows(store, service, user, cands, now, with_age=True).to_dict()
            feast_s.append(time.perf_counter() - t)
            t = time.perf_counter()
            feast_rows(store, service, user, cands, now, with_age=False).to_dict()
            feast_plain_s.append(time.perf_counter() - t)
    result = {
        "items_in_store": int(n_items),
        "reader": percentiles(ours_s),
        "feast_get_online_features_service": percentiles(feast_s),
        "feast_get_online_features_stored_only": percentiles(feast_plain_s),
    }
    result["speedup_p50_vs_service"] = round(result["feast_get_online_features_service"]["p50_ms"] / result["reader"]["p50_ms"], 1)
    result["speedup_p50_vs_stored_only"] = round(
        result["feast_get_online_features_stored_only"]["p50_ms"] / result["reader"]["p50_ms"], 1)
    log(json.dumps(result))
    return result


def merge_asof_training_set(cfg: FeatureStoreConfig, rows: pa.Table) -> pd.DataFrame:
    """The same point-in-time join with pandas.merge_asof (an independent implementation)."""
    import pyarrow.parquet as pq

    left = rows.select(["user_id", "item_id", "ts"]).to_pandas()
    left["__row"] = np.arange(len(left))
    left = left.sort_values("ts", kind="stable")
    out = {}
    for spec in WINDOW_VIEWS:
        right = pa.concat_tables([pq.read_table(p) for p in sorted(source_dir(cfg, spec.name).glob("*.parquet"))])
        right = right.select([spec.join_key, "event_timestamp", *spec.features]).to_pandas().sort_values("event_timestamp")
        merged = pd.merge_asof(left, right, left_on="ts", right_on="event_timestamp", by=spec.join_key,
                               direction="backward", allow_exact_matches=True)
        fresh = merged["event_timestamp"] >= merged["ts"] - pd.Timedelta(days=spec.ttl_days)
        for name in spec.features:
            if name in FEATURE_COLUMNS:
                out[name] = pd.Series(np.where(fresh, merged[name], default_value(name, cfg.ctr_prior)),
                                      index=merged["__row"]).astype(np.float32)
    right = pa.concat_tables([pq.read_table(p) for p in sorted(source_dir(cfg, ITEM_PROFILE).glob("*.parquet"))])
    right = right.select(["item_id", "event_timestamp", FIRST_SEEN_FEATURE]).to_pandas().sort_values("event_timestamp")
    merged = pd.merge_asof(left, right, left_on="ts", right_on="event_timestamp", by="item_id", direction="backward")
    t_s = merged["ts"].astype("datetime64[us, UTC]").astype("int64").to_numpy() / 1e6
    age = (t_s - merged[FIRST_SEEN_FEATURE].to_numpy()) / 3600.0
    out[AGE_FEATURE] = pd.Series(np.where(np.isnan(age), 0.0, age), index=merged["__row"]).astype(np.float32)
    return pd.DataFrame({name: out[name].sort_index().to_numpy() for name in FEATURE_COLUMNS})


def bench_pit(cfg: FeatureStoreConfig, args: argparse.Namespace) -> dict:
    events = read_event_log(cfg.events_dir)
    rng = np.random.default_rng(1)
    n = min(args.pit_rows, events.num_rows)
    rows = events.select(["user_id", "item_id", "ts", "label"]).take(
        pa.array(np.sort(rng.choice(events.num_rows, n, replace=False))))
    result: dict = {"rows": n}

    duck, pand = [], []
    for _ in range(args.repeats):  # alternate engines; report the best and the median
        t = time.perf_counter()
        ours = build_training_set(cfg, rows)
        duck.append(time.perf_counter() - t)
        t = time.perf_counter()
        reference = merge_asof_training_set(cfg, rows)
        pand.append(time.perf_counter() - t)
    result["duckdb_build_training_set_s"] = round(min(duck), 2)
    result["duckdb_build_training_set_median_s"] = round(float(np.median(duck)), 2)
    result["pandas_merge_asof_s"] = round(min(pand), 2)
    result["pandas_merge_asof_median_s"] = round(float(np.median(pand)), 2)
    for name in FEATURE_COLUMNS:
        if not np.array_equal(ours.column(name).to_numpy(), reference[name].to_numpy()):
            raise SystemExit(f"merge_asof and DuckDB differ on {name}")
    result["duckdb_equals_merge_asof"] = True
    log(f"PIT {n:,} rows: DuckDB {result['duckdb_build_training_set_s']}s, "
        f"merge_asof {result['pandas_merge_asof_s']}s (equal)")

    if args.feast_pit_rows:
        m = min(args.feast_pit_rows, n)
        sub = rows.slice(0, m)
        dup = sub.select(["item_id", "ts"]).to_pandas().duplicated().sum()
        t = time.perf_counter()
        try:
            feast = feast_training_set(cfg, sub)
            result["feast_get_historical_features_s"] = round(time.perf_counter() - t, 2)
            result["feast_rows"] = m
            ok = all(np.array_equal(feast.column(c).to_numpy(), ours.column(c).to_numpy()[:m]) for c in FEATURE_COLUMNS)
            result["feast_equals_duckdb"] = ok
        except Exception as exc:  # Feast's file store drops/duplicates rows or runs out of memory
            result["feast_get_historical_features_s"] = round(time.perf_counter() - t, 2)
            result["feast_rows"] = m
            result["feast_error"] = str(exc)[:300]
        result["feast_input_duplicate_item_ts"] = int(dup)
        same = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            build_training_set(cfg, sub)
            same.append(time.perf_counter() - t)
        result["duckdb_same_rows_as_feast_s"] = round(min(same), 2)
        log(f"Feast get_historical_features on {m:,} rows: {result}")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workspace", type=Path, default=None, help="reuse/keep this workspace")
    parser.add_argument("--items", type=int, default=110_000)
    parser.add_argument("--events", type=int, default=1_100_000)
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--days", type=float, default=7.0)
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--lookups", type=int, default=3_000)
    parser.add_argument("--feast-lookups", type=int, default=300)
    parser.add_argument("--pit-rows", type=int, default=1_000_000)
    parser.add_argument("--feast-pit-rows", type=int, default=100_000, help="0 skips Feast's offline store")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each training-set engine")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    tmp = None
    if args.workspace is None:
        tmp = tempfile.TemporaryDirectory(prefix="freshrank-bench-")
        args.workspace = Path(tmp.name)
    cfg = FeatureStoreConfig(workspace=args.workspace)
    result: dict = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
                    "loadavg_at_start": [round(x, 2) for x in os.getloadavg()]},
        "args": {k: str(v) for k, v in vars(args).items()},
    }
    if (cfg.features_dir / "_state.json").exists() and cfg.registry_path.exists():
        state = json.loads((cfg.features_dir / "_state.json").read_text())
        result["build"] = {"reused": True, "end": state["end"]}
    else:
        result["build"] = build(cfg, args)
    end = pd.Timestamp(result["build"]["end"])
    result["online"] = bench_online(cfg, args, now=(end + timedelta(minutes=30)).timestamp())
    result["point_in_time"] = bench_pit(cfg, args)
    n_features = len(USER_FEATURES) + len(ITEM_FEATURES)
    result["features"] = n_features
    result["targets"] = {
        "lookup_5x_faster_than_feast": result["online"]["speedup_p50_vs_service"] >= 5,
        "lookup_p99_under_5ms": result["online"]["reader"]["p99_ms"] < 5,
        # Feast's own get_historical_features within 2x of an ASOF join on the same rows?
        "feast_historical_within_2x": bool(
            "feast_error" not in result["point_in_time"]
            and result["point_in_time"].get("feast_get_historical_features_s", float("inf"))
            <= 2 * result["point_in_time"].get("duckdb_same_rows_as_feast_s", 0)
        ),
        # If not: training sets are built on the faster engine (DuckDB), proven equal.
        "training_sets_on_duckdb_equal_to_merge_asof": result["point_in_time"]["duckdb_equals_merge_asof"],
        "duckdb_faster_than_merge_asof": result["point_in_time"]["duckdb_build_training_set_s"]
        < result["point_in_time"]["pandas_merge_asof_s"],
    }
    result["machine"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    if tmp is not None:
        tmp.cleanup()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
