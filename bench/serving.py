"""Rank through Ray Serve against its floors: p50/p99/QPS by concurrency, issue 17's table.

    .venv/bin/python bench/serving.py [--workspace DIR] [--seconds 8] [--repeats 3]
        [--rows transport,same-code,proxy,direct] [--candidates 100,1000] [--concurrency 1,16]

Builds (or reuses) a workspace the way ``tests/serve_system.py`` does (simulated log, Feast
applied and materialized, a base trained in-process and promoted), then measures, per row,
``Rank`` of N candidates (one user, N distinct items known to the store) with a load
generator in its own process (``--load``: one asyncio gRPC channel, C calls in flight, a
warm-up, then a fixed duration), loopback only:

- ``transport``: a bare ``grpc.aio`` server answering a constant reply (``--floor``);
- ``same-code``: a bare ``grpc.aio`` server running freshrank's parse -> ``HybridRanker.rank``
  -> response, the same code the ingress runs minus Serve (``--floor``);
- ``proxy``: the freshrank Serve app (``serving.app.start``) through Serve's gRPC proxy;
- ``proxy-2``: the same with two Ranker replicas (``serving.ranker_replicas = 2``); the JSON
  says how many bytes each replica's served log grew by (both must have served);
- ``proxy-tuned`` (not in the default rows): the proxy path with Serve's request-path
  switches ``TUNED_SERVE_ENV``; on 2026-12-01 it failed to start: with the router on the
  main loop, ``serving.app.metrics_address``'s sync ``DeploymentHandle.result()`` raises;
- ``direct``: the same app with Serve's direct ingress (``start(direct_ingress=True)``), the
  client dialing the replica's own gRPC port (run in a child process: the flag is read when
  Ray starts).

Also the scoring alone in this process (``HybridRanker.rank``, and parse + rank + response)
for comparison. Every row runs ``--repeats`` times interleaved (row order rotated), so each
figure comes with its min-max over repeats. Prints a table, then one JSON object last.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

# One BLAS thread, as Ray sets for the app's num_cpus=0 replicas (OMP_NUM_THREADS=1): on a
# loaded 2-core box OpenBLAS's threads make a (100, 112) @ (112, 64) product 100x slower.
# Set before numpy is imported; the child processes inherit it.
os.environ.setdefault("OMP_NUM_THREADS", "1")

# Run as a script, bench/ comes first on sys.path and its online_layer.py would shadow the
# online_layer package.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
_ROOT = _HERE.parent
if str(_ROOT) not in sys.path:
    sys.path.append(str(_ROOT))  # after $PYTHONPATH: the bench can time another checkout

APP = "freshrank"
SERVING = {"grpc_port": 0, "http_port": 0, "metrics_port": 0, "access_log": False}
OVERRIDES: dict[str, Any] = {
    "serving": SERVING,
    "base_model": {"train_days": 2, "epochs": 1, "min_gain_vs_constant": -1.0},
}
# Serve 2.60's own request-path switches (ray/serve/_private/constants.py; what its
# RAY_SERVE_THROUGHPUT_OPTIMIZED=1 sets, minus direct ingress): the replica runs user code on
# its main event loop, the proxy's router on its own loop, proxy -> replica over gRPC.
TUNED_SERVE_ENV = {
    "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0",
    "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0",
    "RAY_SERVE_USE_GRPC_BY_DEFAULT": "1",
}
TOKEN = "bench-serving-token-0123456789abcdef"  # the ingress token both sides use


# ------------------------------------------------------------------------------ workspace

def build_workspace(workspace: Path) -> dict[str, Any]:
    """Workspace with a promoted base (reused if ``bench.json`` is there); returns the user
    and item ids to query."""
    marker = workspace / "bench.json"
    if marker.exists():
        return dict(json.loads(marker.read_text()))
    from feature_store.simulate import SimulatorConfig, simulate
    from serving.pipeline import prepare_base, slice_events
    from serving.settings import load_settings

    import pyarrow.compute as pc

    settings = load_settings(workspace=workspace, overrides=OVERRIDES)
    events = simulate(SimulatorConfig(seed=3, days=5, impressions_per_day=5_000, n_users=500))
    start = pc.min(events.column("ts")).as_py()
    as_of = (start + timedelta(days=4)).replace(hour=0, minute=0, second=0, microsecond=0)
    base = prepare_base(settings, events, as_of, backend="local")
    history = slice_events(events, None, as_of)
    items = list(dict.fromkeys(history.column("item_id").to_pylist()[::-1]))  # newest first
    users = list(dict.fromkeys(history.column("user_id").to_pylist()))[:50]
    info = {"base_version": base.version, "items": items, "users": users, "as_of": as_of.isoformat()}
    marker.write_text(json.dumps(info))
    return info


def _settings(workspace: Path, replicas: int = 1) -> Any:
    from serving.settings import load_settings

    overrides = {**OVERRIDES, "serving": {**SERVING, "ranker_replicas": replicas}}
    return load_settings(workspace=workspace, overrides=overrides)


def _ranker(workspace: Path) -> Any:
    """The ingress's HybridRanker, built as ``serving.ranker_deployment.Ranker`` does."""
    from base_model.artifact import BaseScorer
    from feature_store.online import OnlineFeatureReader
    from online_layer.features import OnlineFeaturizer
    from protos.registry import ModelRegistry
    from serving.ranking import HybridRanker

    settings = _settings(workspace)
    champion = ModelRegistry(settings.registry_dir).champion("base")
    assert champion is not None, "the workspace has no champion base"
    base = BaseScorer.load(champion.path)
    cfg = settings.online_layer
    featurizer = OnlineFeaturizer(base.embedding_dim, hash_bits=cfg.hash_bits, position_buckets=cfg.position_buckets)
    return settings, HybridRanker(OnlineFeatureReader(settings.feature_store), base, featurizer, settings.serving)


def request_bytes(info: dict[str, Any], n: int, serial: int) -> bytes:
    from protos.freshrank.v1 import ranking_pb2

    items = info["items"]
    users = info["users"]
    start = (serial * 37) % len(items)
    picked = [items[(start + k) % len(items)] for k in range(n)]
    return ranking_pb2.RankRequest(
        request_id=f"bench-{n}-{serial}", user_id=users[serial % len(users)], candidate_item_ids=picked
    ).SerializeToString()


# --------------------------------------------------------------------- scoring in-process

def scoring_only(workspace: Path, info: dict[str, Any], n: int, calls: int) -> dict[str, Any]:
    """``HybridRanker.rank`` alone, and parse + rank + to_response, in this process (ms)."""
    import numpy as np

    from protos.freshrank.v1 import ranking_pb2
    from serving.requests import Limits, parse_rank_request

    settings, ranker = _ranker(workspace)
    cfg = settings.serving
    limits = Limits.of(cfg)
    bodies = [request_bytes(info, n, i) for i in range(64)]
    queries = [parse_rank_request(ranking_pb2.RankRequest.FromString(b), cfg.max_candidates, limits=limits) for b in bodies]
    for q in queries:  # warm-up
        ranker.rank(q)
    rank_ms, full_ms = [], []
    for i in range(calls):
        q = queries[i % len(queries)]
        t0 = time.perf_counter()
        ranker.rank(q)
        rank_ms.append((time.perf_counter() - t0) * 1e3)
        body = bodies[i % len(bodies)]
        t0 = time.perf_counter()
        query = parse_rank_request(ranking_pb2.RankRequest.FromString(body), cfg.max_candidates, limits=limits)
        ranker.rank(query).to_response().SerializeToString()
        full_ms.append((time.perf_counter() - t0) * 1e3)
    return {
        "candidates": n,
        "rank_ms": {"p50": float(np.percentile(rank_ms, 50)), "p99": float(np.percentile(rank_ms, 99))},
        "parse_rank_reply_ms": {"p50": float(np.percentile(full_ms, 50)), "p99": float(np.percentile(full_ms, 99))},
    }


def scoring_explore(workspace: Path, info: dict[str, Any], n: int, calls: int, share: float,
                    samples: tuple[int, ...] = (), focus: tuple[str, ...] = (),
                    draws: tuple[int, ...] = ()) -> dict[str, Any]:
    """``HybridRanker.rank`` with an online layer installed (zero weights, prior-only
    posterior: every coordinate at its widest), exploration off vs on at ``share`` of
    requests (``serving.exploration``, the default policy: ``on``; the Monte Carlo propensity
    with each of ``samples`` as ``on_s<k>``; the Rao-Blackwellised one with each of ``draws``
    as ``on_d<k>``; each of ``focus`` as ``on_<focus>``), interleaved call by call (ms); each on arm's p99 increment over off with
    a bootstrap interval (calls resampled, 1,000 times, seed 0, percentile 95%)."""
    import numpy as np

    from online_layer.ftrl import FTRLProximal
    from protos.freshrank.v1 import ranking_pb2
    from serving.exploration import ExplorationPolicy
    from serving.ranking import OnlineSlot
    from serving.requests import Limits, parse_rank_request

    settings, ranker = _ranker(workspace)
    cfg = settings.serving
    model = FTRLProximal(ranker.featurizer.n_dense, settings.online_layer.hash_bits, ranker.base_version)
    ranker.install_online(OnlineSlot(model, "bench", ranker.base_version, time.time()))
    limits = Limits.of(cfg)
    queries = [parse_rank_request(ranking_pb2.RankRequest.FromString(request_bytes(info, n, i)),
                                  cfg.max_candidates, limits=limits) for i in range(64)]
    policies = {"off": ExplorationPolicy(), "on": ExplorationPolicy(enabled=True, share=share)}
    policies.update({f"on_s{k}": ExplorationPolicy(enabled=True, share=share, samples=k, propensity_draws=0)
                     for k in samples})
    policies.update({f"on_d{k}": ExplorationPolicy(enabled=True, share=share, propensity_draws=k) for k in draws})
    policies.update({f"on_{f}": ExplorationPolicy(enabled=True, share=share, focus=f) for f in focus})
    times: dict[str, list[float]] = {name: [] for name in policies}
    explored = 0
    for i in range(calls + 64):
        for name, policy in policies.items():
            ranker.exploration = policy
            t0 = time.perf_counter()
            outcome = ranker.rank(queries[i % len(queries)])
            if i >= 64:  # the first 64 calls of each are the warm-up
                times[name].append((time.perf_counter() - t0) * 1e3)
                explored += name == "on" and outcome.propensity is not None
    assert ranker.current_fallback() is None, ranker.current_fallback()
    boot = np.random.default_rng(0).integers(0, calls, (1000, calls))
    off = np.asarray(times["off"])
    increments = {}
    for name in policies:
        if name != "off":
            on = np.asarray(times[name])
            diffs = np.percentile(on[boot], 99, axis=1) - np.percentile(off[boot], 99, axis=1)
            increments[name] = {"p99": float(np.percentile(on, 99) - np.percentile(off, 99)),
                                "ci95": [float(np.percentile(diffs, 2.5)), float(np.percentile(diffs, 97.5))]}
    return {"candidates": n, "share": share, "explored_calls": explored, "load_after": os.getloadavg(),
            "p99_increment_ms": increments, **{
        f"rank_ms_explore_{name}": {"p50": float(np.percentile(t, 50)), "p99": float(np.percentile(t, 99))}
        for name, t in times.items()}}


# ---------------------------------------------------------------------- floor servers

def serve_floor(kind: str, workspace: Path, port: int) -> None:
    """A bare grpc.aio server for ``freshrank.v1.Ranker/Rank`` (runs until killed)."""
    import grpc

    from protos.freshrank.v1 import ranking_pb2
    from serving.requests import Limits, parse_rank_request

    if kind == "same-code":
        settings, ranker = _ranker(workspace)
        cfg = settings.serving
        limits = Limits.of(cfg)

        async def rank(body: bytes, context: Any) -> bytes:
            query = parse_rank_request(ranking_pb2.RankRequest.FromString(body), cfg.max_candidates, limits=limits)
            return bytes(ranker.rank(query).to_response().SerializeToString())
    else:
        constant = ranking_pb2.RankResponse(request_id="c", base_version="b").SerializeToString()

        async def rank(body: bytes, context: Any) -> bytes:
            return constant

    async def main() -> None:
        server = grpc.aio.server()
        handler = grpc.unary_unary_rpc_method_handler(rank)
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("freshrank.v1.Ranker", {"Rank": handler}),))
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        print("ready", flush=True)
        await server.wait_for_termination()

    asyncio.run(main())


# ---------------------------------------------------------------------- load generator

def load(address: str, info_path: Path, n: int, concurrency: int, seconds: float, warmup: float) -> dict[str, Any]:
    """C calls in flight on one asyncio channel for ``seconds`` after ``warmup``."""
    from bench.grpc_load import rank_load

    info = json.loads(info_path.read_text())
    bodies = [request_bytes(info, n, i) for i in range(256)]
    metadata = (("application", APP), ("authorization", f"Bearer {TOKEN}"))

    return asyncio.run(rank_load(address, bodies, metadata, concurrency, seconds, warmup))


def run_load(address: str, info_path: Path, n: int, c: int, seconds: float, warmup: float) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, __file__, "--load", address, "--info", str(info_path), "--n", str(n),
         "--c", str(c), "--seconds", str(seconds), "--warmup", str(warmup)],
        capture_output=True, text=True, timeout=seconds + warmup + 120,
    )
    if out.returncode != 0:
        raise RuntimeError(f"load generator failed: {out.stderr[-2000:]}")
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_floor(kind: str, workspace: Path) -> tuple[subprocess.Popen[str], str]:
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, __file__, "--floor", kind, "--workspace", str(workspace), "--port", str(port)],
        stdout=subprocess.PIPE, text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if "ready" not in line:
        proc.kill()
        raise RuntimeError(f"floor server {kind} did not start")
    return proc, f"127.0.0.1:{port}"


# ------------------------------------------------------------------------ the Serve rows

def _served_bytes(workspace: Path) -> dict[str, int]:
    """Bytes in each Ranker replica's served log (``wal/served/<replica>/``)."""
    root = workspace / "wal" / "served"
    if not root.exists():
        return {}
    return {d.name: sum(f.stat().st_size for f in d.rglob("*") if f.is_file()) for d in root.iterdir() if d.is_dir()}


def serve_rows(args: argparse.Namespace, kind: str) -> dict[str, Any]:
    """Start the app (proxy, 2 replicas behind the proxy, or direct ingress), measure every
    (n, c) ``repeats`` times; for 2 replicas also what each replica's served log grew by."""
    from serving import app

    os.environ["FRESHRANK_INGRESS_TOKEN"] = TOKEN
    direct = kind == "direct"
    replicas = 2 if kind == "proxy-2" else 1
    settings = _settings(args.workspace, replicas)
    # (direct_ingress only when asked: the bench also runs against older code without it)
    running = app.start(settings, direct_ingress=True) if direct else app.start(settings)
    address = running.direct_grpc_address if direct else running.grpc_address
    results: dict[str, Any] = {"address": address, "runs": [], "direct": list(getattr(running, "direct_grpc_addresses", ()))}
    before = _served_bytes(args.workspace)
    try:
        if direct and not address:
            raise RuntimeError("direct ingress: no replica port listed")
        for _ in range(args.repeats):
            for n in args.candidates:
                for c in args.concurrency:
                    result = run_load(address, args.workspace / "bench.json", n, c, args.seconds, args.warmup)
                    results["runs"].append({"n": n, "c": c, **result})
    finally:
        after = _served_bytes(args.workspace)
        results["served_bytes_by_replica"] = {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}
        app.stop()
    return results


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per (n, c): median and min-max over repeats of QPS, p50, p99."""
    import numpy as np

    out: dict[str, Any] = {}
    for key in sorted({(r["n"], r["c"]) for r in runs}):
        chosen = [r for r in runs if (r["n"], r["c"]) == key and r["p50_ms"] is not None]
        entry: dict[str, Any] = {"repeats": len(chosen), "errors": sum(sum(r["errors"].values()) for r in runs if (r["n"], r["c"]) == key)}
        for field in ("qps", "p50_ms", "p99_ms"):
            values = [r[field] for r in chosen]
            entry[field] = {"median": float(np.median(values)), "min": min(values), "max": max(values)} if values else None
        out[f"n={key[0]},c={key[1]}"] = entry
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workspace", type=Path, default=Path(tempfile.gettempdir()) / "freshrank-bench-serving")
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rows", default="transport,same-code,proxy,proxy-2,direct")
    parser.add_argument("--candidates", default="100,1000")
    parser.add_argument("--concurrency", default="1,16")
    parser.add_argument("--scoring-calls", type=int, default=2000)
    parser.add_argument("--explore-share", type=float, default=None,
                        help="also time HybridRanker.rank with an online layer, exploration off vs on")
    parser.add_argument("--explore-samples", default="",
                        help="with --explore-share: also time the Monte Carlo propensity at these sample counts (comma list)")
    parser.add_argument("--explore-draws", default="",
                        help="with --explore-share: also time the Rao-Blackwellised propensity at these draw counts (comma list)")
    parser.add_argument("--explore-focus", default="",
                        help="with --explore-share: also time these exploration focuses (comma list: item)")
    # internal entry points (the child processes)
    parser.add_argument("--load", help=argparse.SUPPRESS)
    parser.add_argument("--info", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--c", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--floor", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--serve-row", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.candidates = [int(x) for x in str(args.candidates).split(",")]
    args.concurrency = [int(x) for x in str(args.concurrency).split(",")]

    if args.load:
        print(json.dumps(load(args.load, args.info, args.n, args.c, args.seconds, args.warmup)))
        return 0
    if args.floor:
        serve_floor(args.floor, args.workspace, args.port)
        return 0
    if args.serve_row:
        print(json.dumps(serve_rows(args, args.serve_row)))
        return 0

    from protos.ray_local import apply_loopback_environment

    apply_loopback_environment()
    args.workspace.mkdir(parents=True, exist_ok=True)
    info = build_workspace(args.workspace)
    rows = [r for r in str(args.rows).split(",") if r]
    result: dict[str, Any] = {
        "machine": platform.platform(), "cpus": os.cpu_count(), "python": sys.version.split()[0],
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "seconds": args.seconds, "warmup": args.warmup, "repeats": args.repeats,
        "load_before": os.getloadavg(), "items_in_store": len(info["items"]),
        "scoring": [scoring_only(args.workspace, info, n, args.scoring_calls) for n in args.candidates],
        "rows": {},
    }
    if args.explore_share is not None:
        result["scoring_explore"] = [scoring_explore(args.workspace, info, n, args.scoring_calls, args.explore_share,
                                                     tuple(int(k) for k in args.explore_samples.split(",") if k),
                                                     tuple(f for f in args.explore_focus.split(",") if f),
                                                     tuple(int(k) for k in args.explore_draws.split(",") if k))
                                     for n in args.candidates]
    for kind in ("transport", "same-code"):
        if kind not in rows:
            continue
        proc, address = start_floor(kind, args.workspace)
        try:
            runs = [
                {"n": n, "c": c, **run_load(address, args.workspace / "bench.json", n, c, args.seconds, args.warmup)}
                for _ in range(args.repeats) for n in args.candidates for c in args.concurrency
            ]
        finally:
            proc.kill()
            proc.wait()
        result["rows"][kind] = summarise(runs)
    for kind in ("proxy", "proxy-tuned", "proxy-2", "direct"):
        if kind not in rows:
            continue
        # Each Serve row in its own process: its own Ray cluster, started with its flags.
        child = [sys.executable, __file__, "--serve-row", kind, "--workspace", str(args.workspace),
                 "--seconds", str(args.seconds), "--warmup", str(args.warmup), "--repeats", str(args.repeats),
                 "--candidates", ",".join(map(str, args.candidates)),
                 "--concurrency", ",".join(map(str, args.concurrency))]
        env = {**os.environ, **(TUNED_SERVE_ENV if kind == "proxy-tuned" else {})}
        for _attempt in range(2):  # a loaded box can time Ray's node start-up out: once more
            out = subprocess.run(child, capture_output=True, text=True, timeout=1800, env=env)
            if out.returncode == 0 or "timed out during startup" not in out.stderr:
                break
        if out.returncode != 0:
            result["rows"][kind] = {"error": out.stderr[-3000:]}
            continue
        served = json.loads(out.stdout.strip().splitlines()[-1])
        result["rows"][kind] = summarise(served["runs"])
        result.setdefault("served_bytes_by_replica", {})[kind] = served["served_bytes_by_replica"]
    result["load_after"] = os.getloadavg()

    print(f"{'row':10} {'n,c':12} {'QPS med [min-max]':>24} {'p50 ms':>20} {'p99 ms':>20}")
    for kind, table in result["rows"].items():
        if "error" in table:
            print(f"{kind:10} error: {table['error'][-300:]}")
            continue
        for key, e in table.items():
            if e["qps"] is None:
                print(f"{kind:10} {key:12} no successful calls ({e['errors']} errors)")
                continue
            fmt = lambda d: f"{d['median']:.2f} [{d['min']:.2f}-{d['max']:.2f}]"  # noqa: E731
            print(f"{kind:10} {key:12} {fmt(e['qps']):>24} {fmt(e['p50_ms']):>20} {fmt(e['p99_ms']):>20}"
                  + (f"  errors {e['errors']}" if e["errors"] else ""))
    for s in result["scoring"]:
        print(f"in-process n={s['candidates']}: rank p50/p99 {s['rank_ms']['p50']:.2f}/{s['rank_ms']['p99']:.2f} ms, "
              f"parse+rank+reply {s['parse_rank_reply_ms']['p50']:.2f}/{s['parse_rank_reply_ms']['p99']:.2f} ms")
    for s in result.get("scoring_explore", []):
        print(f"in-process n={s['candidates']}, online layer: rank p50/p99 exploration off "
              f"{s['rank_ms_explore_off']['p50']:.2f}/{s['rank_ms_explore_off']['p99']:.2f} ms, on (share "
              f"{s['share']:g}) {s['rank_ms_explore_on']['p50']:.2f}/{s['rank_ms_explore_on']['p99']:.2f} ms")
        for name, inc in s["p99_increment_ms"].items():
            print(f"    {name}: p99 {s[f'rank_ms_explore_{name}']['p99']:.2f} ms, increment {inc['p99']:+.2f} ms "
                  f"[{inc['ci95'][0]:+.2f}, {inc['ci95'][1]:+.2f}]")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
