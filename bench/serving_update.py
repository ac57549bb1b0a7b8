"""One online update's effect on serving, end to end, and Rank latency through Serve.

    .venv/bin/python bench/serving_update.py [--trials 40]

Builds a small workspace (simulated log, Feast, a base trained in-process), starts the real
Serve application (gRPC proxy on localhost, learner deployment), warms the online layer up
until it serves, then measures, per trial: a ``Feedback`` call with a request's clicks is sent,
and a probe request is ranked every 10 ms until any of its scores changes; the time
from sending the feedback to the changed score is the update latency (learner mini-batch +
publish + the ranker's weight poll + the swap); the feedback carries a click and the probe is
the same user and slate under a new request id. Also Rank p50/p99 at concurrency 1 for the
logged slates (10 candidates) and for 100 candidates. Prints one JSON object last.

Freshness settings used (documented in the output): ``max_batch_delay_s``, ``publish_every_s``
and ``weight_poll_seconds`` at 0.2 s, ``emit = on_arrival``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

# Run as a script, bench/ comes first on sys.path and its online_layer.py would shadow the
# online_layer package.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]

FRESH = {
    "online_layer": {
        "emit": "on_arrival",
        "batch_size": 64,
        "max_batch_delay_s": 0.2,
        "publish_every_batches": 1,
        "publish_every_s": 0.2,
        "readiness_min_examples": 200,
        "readiness_tolerance": 1.0,
        "readiness_auc_tolerance": 1.0,
    },
    "serving": {"grpc_port": 0, "http_port": 0, "metrics_port": 0, "weight_poll_seconds": 0.2},
    # This measures serving, not model quality: a small base is promoted even if it only
    # ties a constant.
    "base_model": {"min_gain_vs_constant": -0.5},
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--rank-calls", type=int, default=500)
    args = parser.parse_args(argv)

    from protos.ray_local import init_local_ray

    init_local_ray(num_cpus=4, log_to_driver=False)
    from feature_store.simulate import SimulatorConfig, simulate
    from serving import app
    from serving.client import RankerClient
    from serving.pipeline import prepare_base, slice_events
    from serving.settings import load_settings

    workspace = Path(tempfile.mkdtemp(prefix="freshrank-bench-serving-"))
    settings = load_settings(workspace=workspace, overrides=FRESH)
    events = simulate(SimulatorConfig(seed=5, days=5, impressions_per_day=6_000, n_users=600))
    start = pc.min(events.column("ts")).as_py()
    as_of = (start + timedelta(days=4)).replace(hour=0, minute=0, second=0, microsecond=0)
    prepare_base(settings, events, as_of, backend="local")
    replay = slice_events(events, as_of, None)
    request_ids = replay.column("request_id").unique().to_pylist()
    by_request = {
        rid: replay.filter(pc.equal(replay.column("request_id"), rid)) for rid in request_ids[:1500]
    }
    # Feedback needs the ingress token: the app gets this process's (random unless set) one,
    # and RankerClient sends it.
    from serving.auth import TOKEN_ENV
    import os, secrets

    os.environ.setdefault(TOKEN_ENV, secrets.token_urlsafe(32))
    running = app.start(settings)
    result: dict = {"machine": platform.platform(), "python": sys.version.split()[0],
                    "settings": FRESH}
    try:
        with RankerClient(running.grpc_address, running.app_name) as client:
            client.wait_ready()
            rids = list(by_request)

            def rank(rid: str, tag: str):
                t = by_request[rid]
                return client.rank(
                    f"{tag}-{rid}", t.column("user_id")[0].as_py(), t.column("item_id").to_pylist(),
                    request_time=t.column("ts")[0].as_py(),
                )

            def feedback(rid: str, tag: str) -> None:
                t = by_request[rid]
                rank(rid, tag)
                index = t.schema.get_field_index("request_id")
                client.feedback(t.set_column(index, "request_id", pa.array([f"{tag}-{rid}"] * t.num_rows)))

            # Warm up until serving applies the online layer.
            n = 0
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                feedback(rids[n % len(rids)], "warm")
                n += 1
                if n % 20 == 0 and not rank(rids[0], f"probe{n}").fallback:
                    break
            result["warmup_requests"] = n

            # Rank latency at concurrency 1: logged slates, then 100 candidates.
            lat_slate = []
            for i in range(args.rank_calls):
                t0 = time.perf_counter()
                rank(rids[i % len(rids)], f"lat{i}")
                lat_slate.append((time.perf_counter() - t0) * 1e3)
            items = replay.column("item_id").unique().to_pylist()[:100]
            lat_100 = []
            for i in range(args.rank_calls):
                t0 = time.perf_counter()
                client.rank(f"lat100-{i}", "u-bench", items)
                lat_100.append((time.perf_counter() - t0) * 1e3)

            # Update latency: feedback with a click is sent, and the same user and slate
            # (a new request id each time) is ranked until a score changes.
            clicked = [r for r in rids[n:] if pc.max(by_request[r].column("label")).as_py() > 0]
            latencies = []
            for trial, source in enumerate(clicked[: args.trials]):
                before = [it.score for it in rank(source, f"before{trial}").items]
                t0 = time.perf_counter()
                feedback(source, f"upd{trial}")
                changed = None
                while time.perf_counter() - t0 < 10:
                    after = rank(source, f"after{trial}-{time.perf_counter()}")
                    if [it.score for it in after.items] != before:
                        changed = time.perf_counter() - t0
                        break
                    time.sleep(0.01)
                if changed is not None:
                    latencies.append(changed)
            status = client.status()
    finally:
        app.stop()
    lat = np.array(latencies)
    result.update(
        {
            "rank_slate_ms": {"p50": float(np.percentile(lat_slate, 50)), "p99": float(np.percentile(lat_slate, 99))},
            "rank_100_ms": {"p50": float(np.percentile(lat_100, 50)), "p99": float(np.percentile(lat_100, 99))},
            "update_trials": args.trials,
            "update_changed": int(lat.size),
            "update_latency_s": {
                "p50": float(np.percentile(lat, 50)) if lat.size else None,
                "p95": float(np.percentile(lat, 95)) if lat.size else None,
                "max": float(lat.max()) if lat.size else None,
            },
            "online_updates": int(status.online_updates),
        }
    )
    print(f"Rank (logged slate, c=1): p50 {result['rank_slate_ms']['p50']:.2f} ms, p99 {result['rank_slate_ms']['p99']:.2f} ms")
    print(f"Rank (100 candidates, c=1): p50 {result['rank_100_ms']['p50']:.2f} ms, p99 {result['rank_100_ms']['p99']:.2f} ms")
    print(f"feedback -> changed score: {lat.size}/{args.trials} changed; p50 {result['update_latency_s']['p50']}, p95 {result['update_latency_s']['p95']} s")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
