"""A real two-node Ray cluster on this machine: ``ray start --head`` and a second node joined
with ``ray start --address`` (through ray_join_loopback.py: Ray's CLI refuses a second node
under the loopback switch), both on 127.0.0.1 with their own free ports, resources and Ray's
token auth (2 CPUs each); a task pinned to each node runs there; ``serve deploy`` runs the
app with a Ranker replica on each node, node_b is killed under Rank load and comes back. Only the
processes this module started are stopped, by pid (never ``ray stop``: it ends every Ray
process on the machine). The cluster: tests/infra/ray_cluster_kit.py.
"""

from __future__ import annotations

import json
import pathlib
import secrets
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import yaml

from tests.infra.ray_cluster_kit import (
    FAST_NODE_DEATH, RAY, Cluster, dashboard_status, node_states, running_rankers, serve_applications,
    serve_cli, serve_config, two_node_cluster, wait_for,
)
from tests.infra.redis_kit import free_port

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]


PINNED_TASKS = """
    import json, os, sys, ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
    ray.init(address=sys.argv[1] if len(sys.argv) > 1 else None, logging_level="ERROR", log_to_driver=False)

    @ray.remote(num_cpus=1)
    def where(x):
        return {"node": ray.get_runtime_context().get_node_id(), "pid": os.getpid(), "square": x * x}

    out = {}
    for node in ray.nodes():
        if not node["Alive"]:
            continue
        name = "node_a" if "node_a" in node["Resources"] else "node_b"
        strategy = NodeAffinitySchedulingStrategy(node_id=node["NodeID"], soft=False)
        got = ray.get(where.options(scheduling_strategy=strategy).remote(7), timeout=60)
        by_resource = ray.get(where.options(resources={name: 1}).remote(3), timeout=60)
        out[name] = {"expected": node["NodeID"], "ran_on": got["node"], "by_resource": by_resource["node"],
                     "square": got["square"], "address": node["NodeManagerAddress"]}
    print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with two_node_cluster(extra_env=FAST_NODE_DEATH) as made:
        yield made


def test_a_task_pinned_to_each_node_runs_on_that_node(cluster: Cluster) -> None:
    done = cluster.driver(PINNED_TASKS)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert set(out) == {"node_a", "node_b"}
    for node in out.values():
        assert node["ran_on"] == node["expected"] == node["by_resource"]
        assert node["square"] == 49
        assert node["address"] == "127.0.0.1"  # every node on loopback
    assert out["node_a"]["expected"] != out["node_b"]["expected"]


def test_the_cluster_refuses_callers_without_the_token(cluster: Cluster) -> None:
    assert dashboard_status(cluster.dashboard, cluster.env["RAY_AUTH_TOKEN"]) == 200
    assert dashboard_status(cluster.dashboard, None) == 401
    assert dashboard_status(cluster.dashboard, "0" * 64) in {401, 403}


def test_ray_job_submit_with_the_token_runs_a_job_across_both_nodes(cluster: Cluster) -> None:
    submit = subprocess.run(
        [RAY, "job", "submit", "--address", cluster.dashboard, "--submission-id", f"mn-{cluster.marker}",
         "--", sys.executable, "-c", textwrap.dedent(PINNED_TASKS)],
        env=cluster.env, capture_output=True, text=True, timeout=120,
    )
    assert submit.returncode == 0, submit.stdout[-2000:] + submit.stderr[-2000:]
    line = next(x for x in reversed(submit.stdout.splitlines()) if x.startswith("{"))
    out = json.loads(line)
    assert set(out) == {"node_a", "node_b"}
    assert all(node["ran_on"] == node["expected"] for node in out.values())
    anonymous = {k: v for k, v in cluster.env.items() if k != "RAY_AUTH_TOKEN"}
    refused = subprocess.run([RAY, "job", "list", "--address", cluster.dashboard], env=anonymous,
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0


# ---------------------------------------------------------- Serve on both nodes, node_b lost

@dataclass
class CallLog:
    """What the client thread saw: (monotonic end time, status code name) of every Rank."""

    calls: list[tuple[float, str]] = field(default_factory=list)

    def between(self, start: float, end: float = float("inf")) -> list[str]:
        return [code for t, code in list(self.calls) if start <= t < end]

    def ok_run_since(self, start: float) -> tuple[int, float]:
        """The length of the current run of OK calls ended after ``start``, and its first end time."""
        run, first = 0, float("inf")
        for t, code in reversed(list(self.calls)):
            if t < start or code != "OK":
                break
            run, first = run + 1, t
        return run, first


def drive_rank(client: Any, requests: list[tuple[str, list[str]]], log: CallLog, stop: threading.Event) -> None:
    """Rank calls one after the other, 20 ms apart, until ``stop`` (no retries: every failure
    is counted). Paced: an unpaced loop, with its proxy and replica, takes both cores, and a
    rejoining node's raylet then misses ``ray start``'s 30 s registration limit."""
    import grpc

    serial = 0
    while not stop.is_set():
        user, items = requests[serial % len(requests)]
        try:
            client.rank(f"mn-{serial}", user, items, top_k=10)
            code = "OK"
        except grpc.RpcError as error:
            code = error.code().name
        log.calls.append((time.monotonic(), code))
        serial += 1
        stop.wait(0.02)


def served_bytes(workspace: pathlib.Path) -> dict[str, int]:
    """Bytes in each Ranker replica's served log (``wal/served/<replica id>/``)."""
    root = workspace / "wal" / "served"
    return {d.name: sum(f.stat().st_size for f in d.rglob("*") if f.is_file())
            for d in (root.iterdir() if root.exists() else []) if d.is_dir()}


def test_serve_deploy_puts_a_ranker_on_each_node_and_serving_outlives_the_loss_of_node_b(
    cluster: Cluster, tmp_path: pathlib.Path
) -> None:
    """``serve deploy`` of infra/serve/config.yaml (free ports, 2 Ranker replicas at most one
    a node) with Ray's token; Rank load from a client thread through the head's gRPC proxy
    with the ingress token; node_b's processes SIGKILLed: once Serve has dropped node_b's
    replica every call succeeds on the head's; node_b restarted: a replica runs there again
    and no call fails meanwhile. The calls failed at the kill are counted and reported (no
    client retries), not asserted to be zero: in-flight calls on the lost replica fail."""
    from serving.client import RankerClient
    from serving.settings import load_settings
    from tests.serve_system import FAST_BASE, FAST_ONLINE, TEST_SERVING, requests_of, serving_simulator, trained_workspace

    token = secrets.token_hex(16)
    (tmp_path / "ingress.token").write_text(token + "\n")
    config = tmp_path / "freshrank.toml"
    sections: dict[str, dict[str, Any]] = {"serving": {**TEST_SERVING, "ranker_replicas": 2, "token_file": str(tmp_path / "ingress.token")},
                "base_model": FAST_BASE, "online_layer": FAST_ONLINE}
    config.write_text("".join(f"[{name}]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items())
                              for name, values in sections.items()))
    workspace = tmp_path / "ws"
    trained = trained_workspace(load_settings(config, workspace=workspace), serving_simulator())
    requests = [(r.column("user_id")[0].as_py(), r.column("item_id").to_pylist()) for r in requests_of(trained.replay, 64)]
    grpc_port = free_port()
    document = serve_config(workspace, config, grpc_port=grpc_port, http_port=free_port(), replicas=2, max_per_node=1)
    (tmp_path / "serve.yaml").write_text(yaml.safe_dump(document))
    names = node_states(cluster)
    nodes = {name: node_id for node_id, (name, alive) in names.items() if alive}
    report: dict[str, Any] = {}
    log, stop = CallLog(), threading.Event()
    load = threading.Thread(target=lambda: None)
    started = time.monotonic()
    deployed = serve_cli(cluster, "deploy", str(tmp_path / "serve.yaml"))
    try:
        assert deployed.returncode == 0, deployed.stdout[-2000:] + deployed.stderr[-2000:]
        wait_for(lambda: running_rankers(cluster) == sorted(nodes.values()), "a Ranker on each node", cluster, 240)
        assert serve_applications(cluster)["freshrank"]["status"] == "RUNNING"
        report["deploy_to_two_replicas_s"] = round(time.monotonic() - started, 1)
        client = RankerClient(f"127.0.0.1:{grpc_port}", "freshrank", timeout_s=5.0, token=token)
        client.wait_ready(30)
        load = threading.Thread(target=drive_rank, args=(client, requests, log, stop), daemon=True)
        load.start()
        wait_for(lambda: log.ok_run_since(started)[0] >= 40, "40 Rank calls answered", cluster, 60)
        by_replica = {r["replica_id"]: r["node_id"] for r in
                      serve_applications(cluster)["freshrank"]["deployments"]["Ranker"]["replicas"]}
        served = served_bytes(workspace)
        assert {by_replica.get(replica) for replica, size in served.items() if size} == set(nodes.values())

        killed_at = time.monotonic()
        assert cluster.kill_node("node_b")
        before = log.between(started, killed_at)
        wait_for(lambda: running_rankers(cluster) == [nodes["node_a"]], "node_b's Ranker dropped", cluster, 60)
        dropped_at = time.monotonic()
        wait_for(lambda: log.ok_run_since(dropped_at)[0] >= 20, "20 Rank calls on the head alone", cluster, 60)
        steady_at = log.ok_run_since(dropped_at)[1]
        report.update(dropped_s=round(dropped_at - killed_at, 1), steady_s=round(steady_at - killed_at, 1))

        rejoined_at = time.monotonic()
        report["rejoin_attempts"] = cluster.rejoin("node_b")

        def back_on_a_new_node_b() -> bool:
            running = set(running_rankers(cluster))  # the head's replica and one on a node not seen before
            return len(running) == 2 and nodes["node_a"] in running and not (running - {nodes["node_a"]}) & set(names)

        wait_for(back_on_a_new_node_b, "a Ranker back on node_b", cluster, 150)
        report["rejoin_to_replica_s"] = round(time.monotonic() - rejoined_at, 1)
        back_at = time.monotonic()
        wait_for(lambda: log.ok_run_since(back_at)[0] >= 20, "20 Rank calls after the return", cluster, 60)
    finally:
        stop.set()
        load.join(timeout=10)
        shutdown = serve_cli(cluster, "shutdown", "-y")
    failed_at_kill = [code for code in log.between(killed_at, steady_at) if code != "OK"]
    report.update(calls=len(log.calls), before_kill=len(before), kill_to_drop=len(log.between(killed_at, dropped_at)),
                  failed_at_kill=len(failed_at_kill),
                  failed_codes=sorted(set(failed_at_kill)), after_steady=len(log.between(steady_at)))
    print("two-node serve:", json.dumps(report))
    assert before and set(before) == {"OK"}, report  # both replicas serving, nothing failed
    assert set(log.between(steady_at)) == {"OK"}, report  # the head alone, then node_b back
    assert shutdown.returncode == 0, shutdown.stderr[-2000:]
    assert not serve_applications(cluster)
