"""Rank through Serve with the Ranker replicas on one node against one on each of two nodes.

    PYTHONPATH=$PWD .venv/bin/python bench/two_nodes.py [--seconds 4] [--warmup 1]
        [--repeats 2] [--concurrency 1,8] [--candidates 100] [--workspace DIR]

One real two-node Ray cluster on loopback (tests/infra/ray_cluster_kit.py: ``ray start
--head`` + a joined node, 2 CPUs each, Ray's token auth) and one ``serve deploy`` of
infra/serve/config.yaml holding two applications of the same app on copies of one
workspace (bench/serving.py's: a simulated log, Feast materialized, a base trained and
promoted), behind the head's one gRPC proxy:

- ``one-node``: 2 Ranker replicas, both pinned to the head (``node_a``);
- ``two-node``: 2 Ranker replicas, at most one a node (``max_replicas_per_node: 1``).

Both run side by side, so every (layout, c) level is measured ``--repeats`` times
interleaved (layout order rotated), under the same load: a figure is the median of the
repeats with their min-max. Also what the second node costs: the seconds to join it, the
seconds from ``serve deploy`` to every replica running, and the resident memory of each
node's processes (raylet, agents, workers, replicas) with the apps running. Prints a table,
then one JSON object last.

Both nodes share this machine's cores: a second node adds no CPU here, so the bench can only
show what spreading costs (the extra hop of a proxy on the head calling a replica on the
other node's raylet, start-up, memory), never the capacity a real second machine adds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")  # as Ray sets for the app's num_cpus=0 replicas

_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]  # bench/online_layer.py
_ROOT = _HERE.parent
if str(_ROOT) not in sys.path:
    sys.path.append(str(_ROOT))

LAYOUTS = ("one-node", "two-node")


def write_app_config(root: Path, workspace: Path, app: str) -> Path:
    """The app's TOML: bench/serving.py's settings under the application name ``app``."""
    from bench.serving import OVERRIDES

    sections = {**OVERRIDES, "serving": {**OVERRIDES["serving"], "app_name": app, "ranker_replicas": 2}}
    path = root / f"{app}.toml"
    path.write_text("".join(f"[{name}]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items())
                            for name, values in sections.items()))
    return path


def deploy_document(root: Path, source: Path, grpc_port: int, http_port: int) -> dict[str, Any]:
    """One Serve config, the two layouts as two applications (own workspace copy each)."""
    from serving.settings import load_settings
    from tests.infra.ray_cluster_kit import serve_config
    from tests.serve_system import copy_workspace

    document: dict[str, Any] = {}
    for layout in LAYOUTS:
        workspace = root / f"ws-{layout}"
        config = write_app_config(root, workspace, layout)
        copy_workspace(source, load_settings(config, workspace=workspace))
        made = serve_config(workspace, config, grpc_port=grpc_port, http_port=http_port, replicas=2,
                            max_per_node=1 if layout == "two-node" else None)
        (application,) = made["applications"]
        application.update(name=layout, route_prefix=f"/{layout}")
        if layout == "one-node":
            application["deployments"][0]["ray_actor_options"] = {"num_cpus": 0, "resources": {"node_a": 0.01}}
        document = {**made, "applications": document.get("applications", []) + [application]}
    return document


def placements(cluster: Any) -> dict[str, list[str]]:
    """Application -> the node names of its RUNNING Ranker replicas."""
    from tests.infra.ray_cluster_kit import node_states, running_rankers

    names = node_states(cluster)
    return {layout: sorted(names.get(n, ("?", False))[0] for n in running_rankers(cluster, layout))
            for layout in LAYOUTS}


async def load(address: str, app: str, bodies: list[bytes], concurrency: int, seconds: float,
               warmup: float) -> dict[str, Any]:
    """C calls in flight on one asyncio channel for ``seconds`` after ``warmup``."""
    from bench.grpc_load import rank_load

    return await rank_load(address, bodies, (("application", app),), concurrency, seconds, warmup)


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    import numpy as np

    out: dict[str, Any] = {}
    for layout, c in sorted({(r["layout"], r["c"]) for r in runs}):
        chosen = [r for r in runs if (r["layout"], r["c"]) == (layout, c) and r["p50_ms"] is not None]
        entry: dict[str, Any] = {"repeats": len(chosen), "errors": sum(sum(r["errors"].values()) for r in chosen)}
        for name in ("qps", "p50_ms", "p99_ms"):
            values = [r[name] for r in chosen]
            entry[name] = {"median": float(np.median(values)), "min": min(values), "max": max(values)} if values else None
        out[f"{layout},c={c}"] = entry
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workspace", type=Path, default=Path(tempfile.gettempdir()) / "freshrank-bench-two-nodes",
                        help="a workspace bench/serving.py built (built here if absent); copied, never served from")
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--candidates", type=int, default=100)
    parser.add_argument("--concurrency", default="1,8")
    args = parser.parse_args(argv)
    levels = [int(x) for x in args.concurrency.split(",")]

    from protos.ray_local import apply_loopback_environment

    apply_loopback_environment()
    import yaml

    from bench.serving import build_workspace, request_bytes
    from tests.infra.ray_cluster_kit import serve_cli, two_node_cluster, wait_for
    from tests.infra.redis_kit import free_port

    args.workspace.mkdir(parents=True, exist_ok=True)
    info = build_workspace(args.workspace)
    bodies = [request_bytes(info, args.candidates, i) for i in range(256)]
    root = Path(tempfile.mkdtemp(prefix="frk-2n-bench-"))
    out: dict[str, Any] = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                       "load_start": os.getloadavg()[0]}, "runs": []}
    try:
        with two_node_cluster() as cluster:
            out["cluster"] = {**{k: round(v, 1) for k, v in cluster.timings.items()},
                              "rss_mib_idle": {n: round(cluster.rss_mib(n)) for n in ("node_a", "node_b")}}
            grpc_port = free_port()
            (root / "serve.yaml").write_text(yaml.safe_dump(deploy_document(root, args.workspace, grpc_port, free_port())))
            started = time.monotonic()
            deployed = serve_cli(cluster, "deploy", str(root / "serve.yaml"))
            assert deployed.returncode == 0, deployed.stderr[-2000:]
            wanted = {"one-node": ["node_a", "node_a"], "two-node": ["node_a", "node_b"]}
            wait_for(lambda: placements(cluster) == wanted, "every replica in place", cluster, 300)
            out["cluster"]["deploy_to_running_s"] = round(time.monotonic() - started, 1)
            out["cluster"]["rss_mib_serving"] = {n: round(cluster.rss_mib(n)) for n in ("node_a", "node_b")}
            address = f"127.0.0.1:{grpc_port}"
            for repeat in range(args.repeats):
                order = LAYOUTS if repeat % 2 == 0 else LAYOUTS[::-1]
                for c in levels:
                    for layout in order:
                        result = asyncio.run(load(address, layout, bodies, c, args.seconds, args.warmup))
                        out["runs"].append({"layout": layout, "c": c, **result})
                        print(layout, c, json.dumps(result), flush=True)
            serve_cli(cluster, "shutdown", "-y")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    out["machine"]["load_end"] = os.getloadavg()[0]
    out["summary"] = summarise(out["runs"])
    print(f"{'layout,c':<16} {'QPS':>22} {'p50 ms':>22} {'p99 ms':>22}")
    for key, entry in out["summary"].items():
        cells = [f"{e['median']:.1f} [{e['min']:.1f}-{e['max']:.1f}]" if e else "-"
                 for e in (entry["qps"], entry["p50_ms"], entry["p99_ms"])]
        print(f"{key:<16} {cells[0]:>22} {cells[1]:>22} {cells[2]:>22}  errors={entry['errors']}")
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
