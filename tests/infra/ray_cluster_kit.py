"""A real Ray cluster of ``ray start`` nodes on 127.0.0.1, and the Serve app deployed on it.

``two_node_cluster`` starts a head (``node_a``) and, unless told otherwise, a second node
(``node_b``, joined through ray_join_loopback.py) with their own free ports, 2 CPUs each, a
custom resource named after the node, and Ray's token auth; every process it starts carries
a cluster marker and a node marker in its environment, so a node can be killed alone
(``Cluster.kill_node``: its ``ray start --block`` process and every child, by pid) and the
cluster stopped without touching any other Ray on the machine (never ``ray stop``).

``serve_config`` derives a ``serve deploy`` config from ``infra/serve/config.yaml``;
``serve_applications`` reads Serve's state from the dashboard (``/api/serve/applications/``).
Used by tests/infra/test_ray_multinode.py and bench/two_nodes.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import yaml

from protos.ray_local import loopback_environment
from tests.infra.redis_kit import free_port

RAY = str(pathlib.Path(sys.executable).with_name("ray"))
SERVE = str(pathlib.Path(sys.executable).with_name("serve"))
REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
SERVE_CONFIG = REPO_ROOT / "infra" / "serve" / "config.yaml"
JOIN = pathlib.Path(__file__).with_name("ray_join_loopback.py")  # `ray start --address` on loopback
MARKER = "FRESHRANK_TEST_RAY_MULTINODE"
NODE_MARKER = "FRESHRANK_TEST_RAY_NODE"
NODE_PORT_FLAGS = (
    "--node-manager-port", "--object-manager-port", "--dashboard-agent-listen-port",
    "--dashboard-agent-grpc-port", "--runtime-env-agent-port", "--metrics-export-port",
)
HEAD_PORT_FLAGS = ("--port", "--dashboard-port", "--ray-client-server-port")
# The GCS declares a node dead after 3 failed 1 s health checks (Ray's defaults: 5 x 3 s); a
# check only fails on an error or after its 10 s timeout, so a slow node is not declared dead.
FAST_NODE_DEATH = {"RAY_health_check_period_ms": "1000", "RAY_health_check_failure_threshold": "3"}


@dataclass
class Cluster:
    env: dict[str, str]
    marker: str
    temp_dir: pathlib.Path
    gcs: str = ""
    dashboard: str = ""
    nodes: list[subprocess.Popen] = field(default_factory=list)
    names: list[str] = field(default_factory=list)  # the node name of each of ``nodes``
    logs: list[pathlib.Path] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)  # start-up seconds (two_node_cluster)

    @property
    def token(self) -> str:
        return self.env["RAY_AUTH_TOKEN"]

    def processes(self, node: str | None = None) -> list[int]:
        """Pids of every live process this cluster's nodes (or the one named) started: they
        inherit the markers."""
        needles = {f"{MARKER}={self.marker}".encode()}
        if node is not None:
            needles.add(f"{NODE_MARKER}={node}".encode())
        found = []
        for entry in pathlib.Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    if needles <= set((entry / "environ").read_bytes().split(b"\0")):
                        if (entry / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                            found.append(int(entry.name))
                except OSError:
                    continue
        return found

    def start_node(self, name: str, *extra: str, launcher: list[str] | None = None) -> None:
        ports = {flag: free_port() for flag in NODE_PORT_FLAGS}
        low = free_port()
        log = self.temp_dir / f"{name}-{len(self.logs)}.log"
        self.logs.append(log)
        command = [
            *(launcher or [RAY]), "start", "--block", "--num-cpus=2", "--num-gpus=0", "--disable-usage-stats",
            f"--resources={json.dumps({name: 1})}", f"--temp-dir={self.temp_dir}",
            f"--min-worker-port={low}", f"--max-worker-port={low + 20}",
            *extra, *[f"{flag}={port}" for flag, port in ports.items()],
        ]
        with open(log, "wb") as out:
            self.nodes.append(subprocess.Popen(command, env={**self.env, NODE_MARKER: name}, stdout=out,
                                               stderr=subprocess.STDOUT, start_new_session=True))
        self.names.append(name)

    def join_node(self, name: str = "node_b") -> None:
        """A worker node joining the head (``ray start --address``, on loopback)."""
        self.start_node(name, f"--address={self.gcs}", launcher=[sys.executable, str(JOIN)])

    def rejoin(self, name: str = "node_b", attempts: int = 2) -> int:
        """Join the node again after ``kill_node``, until the head lists it alive; returns the
        attempts it took. ``ray start`` gives up when its raylet has not registered within
        30 s (hard-coded in Ray 2.60); on the loaded 2-core box that once happened, so a
        second attempt is made before failing."""
        for attempt in range(1, attempts + 1):
            self.join_node(name)
            try:
                wait_for(lambda: sorted(alive_nodes(self)) == [1, 2], f"{name} alive again", self, 90)
                return attempt
            except RuntimeError:  # its `ray start` exited
                if attempt == attempts:
                    raise
                self.kill_node(name)
        raise AssertionError("unreachable")

    def kill_node(self, name: str) -> list[int]:
        """SIGKILL every process of the node ``name`` (its ``ray start --block`` and all it
        started), as a machine failing would; returns the pids killed. The node's handle is
        dropped from ``nodes`` (its log stays in ``logs``)."""
        killed = sorted(set(self.processes(name)))
        for pid in killed:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for index in [i for i, n in enumerate(self.names) if n == name]:
            self.nodes[index].wait(timeout=30)
        keep = [i for i, n in enumerate(self.names) if n != name]
        self.nodes, self.names = [self.nodes[i] for i in keep], [self.names[i] for i in keep]
        deadline = time.monotonic() + 10
        while self.processes(name) and time.monotonic() < deadline:
            time.sleep(0.2)
        return killed

    def driver(self, code: str, *, token: bool = True, timeout: float = 90) -> subprocess.CompletedProcess[str]:
        env = dict(self.env)
        if not token:
            env.pop("RAY_AUTH_TOKEN")
        return subprocess.run([sys.executable, "-c", textwrap.dedent(code), self.gcs], env=env,
                              capture_output=True, text=True, timeout=timeout)

    def stop(self) -> None:
        for node in reversed(self.nodes):  # the worker node first, then the head
            if node.poll() is None:
                node.terminate()
                try:
                    node.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    node.kill()
                    node.wait(timeout=10)
        deadline = time.monotonic() + 15
        while (left := self.processes()) and time.monotonic() < deadline:
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM if time.monotonic() < deadline - 10 else signal.SIGKILL)
            time.sleep(0.5)

    def rss_mib(self, node: str) -> float:
        """Resident memory of every process of the node ``name``, summed (MiB)."""
        total = 0
        for pid in self.processes(node):
            with contextlib.suppress(OSError, ValueError, IndexError):
                status = pathlib.Path(f"/proc/{pid}/status").read_text()
                total += int(next(line for line in status.splitlines() if line.startswith("VmRSS:")).split()[1])
        return total / 1024

    def tail(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-1500:]}" for p in self.logs if p.exists())


def wait_for(check: Callable[[], Any], what: str, cluster: Cluster, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(node.poll() is not None for node in cluster.nodes):
            raise RuntimeError(f"a ray node exited while waiting for {what}:\n{cluster.tail()}")
        if check():
            return
        time.sleep(0.5)
    raise TimeoutError(f"{what} after {timeout} s:\n{cluster.tail()}")


def dashboard_get(url: str, path: str, token: str | None) -> tuple[int, Any]:
    """GET ``path`` from the dashboard: (status, parsed JSON or None); status 0 when down."""
    request = urllib.request.Request(f"{url}{path}")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=5) as reply:
            body = reply.read()
            return reply.status, json.loads(body) if body else None
    except urllib.error.HTTPError as error:
        return error.code, None
    except (OSError, ValueError):
        return 0, None


def dashboard_status(url: str, token: str | None) -> int:
    return dashboard_get(url, "/api/version", token)[0]


def node_states(cluster: Cluster) -> dict[str, tuple[str, bool]]:
    """Node id -> (node name, alive) of every node the cluster ever had, from the state API
    over the dashboard (no driver process: one would cost seconds of CPU a poll)."""
    status, body = dashboard_get(cluster.dashboard, "/api/v0/nodes?limit=100&detail=true", cluster.token)
    rows = ((body or {}).get("data", {}).get("result", {}) or {}).get("result", []) if status == 200 else []
    return {row["node_id"]: ("node_a" if "node_a" in (row.get("resources_total") or {}) or row.get("is_head_node")
                             else "node_b", row.get("state") == "ALIVE") for row in rows}


def alive_nodes(cluster: Cluster) -> list[int]:
    """1 for each alive node_b, 2 for each alive node_a (sorted); [] if the head cannot say."""
    return sorted(2 if name == "node_a" else 1 for name, alive in node_states(cluster).values() if alive)


@contextlib.contextmanager
def two_node_cluster(nodes: int = 2, extra_env: dict[str, str] | None = None) -> Iterator[Cluster]:
    """A head (node_a) and, with ``nodes=2``, node_b; stopped by pid at exit (AssertionError
    if any of its processes outlives the stop)."""
    temp_dir = pathlib.Path(tempfile.mkdtemp(prefix="frk-mn-"))  # short: Ray's socket paths
    marker = secrets.token_hex(8)
    env = {**os.environ, **loopback_environment(), **(extra_env or {}), MARKER: marker,
           "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    env.pop("RAY_ADDRESS", None)
    made = Cluster(env=env, marker=marker, temp_dir=temp_dir)
    head_ports = {flag: free_port() for flag in HEAD_PORT_FLAGS}
    made.gcs = f"127.0.0.1:{head_ports['--port']}"
    made.dashboard = f"http://127.0.0.1:{head_ports['--dashboard-port']}"
    started = time.monotonic()
    try:
        made.start_node("node_a", "--head", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
                        *[f"{flag}={port}" for flag, port in head_ports.items()])
        wait_for(lambda: dashboard_status(made.dashboard, made.token) == 200, "the head's dashboard", made, 90)
        made.timings["head_s"] = time.monotonic() - started
        if nodes == 2:
            joined = time.monotonic()
            made.join_node("node_b")
        wanted = [1, 2] if nodes == 2 else [2]
        wait_for(lambda: alive_nodes(made) == wanted, f"{nodes} alive nodes", made, 90)
        if nodes == 2:
            made.timings["join_s"] = time.monotonic() - joined
        yield made
    finally:
        made.stop()
        left = made.processes()
        shutil.rmtree(temp_dir, ignore_errors=True)
    assert not left, f"processes of this cluster outlived its stop: {left}"


# ------------------------------------------------------------------------- Serve on it

def serve_config(
    workspace: pathlib.Path, config: pathlib.Path, *, grpc_port: int, http_port: int,
    replicas: int, max_per_node: int | None,
) -> dict[str, Any]:
    """infra/serve/config.yaml for this workspace and cluster: free ports, ``replicas``
    Ranker replicas at most ``max_per_node`` on a node, the Learner (the app's one stateful
    deployment: learner state, write-ahead logs) pinned to the head, the proxy on the head
    only (every node of this cluster shares one machine's ports), and the checkout on the
    replicas' path."""
    document: dict[str, Any] = yaml.safe_load(SERVE_CONFIG.read_text())
    document["proxy_location"] = "HeadOnly"
    document["http_options"] = {**document["http_options"], "port": http_port}
    document["grpc_options"]["port"] = grpc_port
    (application,) = document["applications"]
    application["args"] = {"config": str(config), "workspace": str(workspace)}
    application["runtime_env"] = {"env_vars": {"PYTHONPATH": str(REPO_ROOT)}}
    ranker: dict[str, Any] = {"name": "Ranker", "num_replicas": replicas}
    if max_per_node is not None:
        ranker["max_replicas_per_node"] = max_per_node
    application["deployments"] = [
        ranker,
        {"name": "Learner", "ray_actor_options": {"num_cpus": 0, "resources": {"node_a": 0.01}}},
    ]
    return document


def serve_cli(cluster: Cluster, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``serve <args> -a <dashboard>`` with the cluster's token."""
    return subprocess.run([SERVE, *args, "-a", cluster.dashboard], env=cluster.env, cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=timeout)


def serve_applications(cluster: Cluster) -> dict[str, Any]:
    """Serve's applications as the dashboard reports them ({} when it cannot say)."""
    status, body = dashboard_get(cluster.dashboard, "/api/serve/applications/", cluster.token)
    return dict(body.get("applications") or {}) if status == 200 and isinstance(body, dict) else {}


def running_rankers(cluster: Cluster, app: str = "freshrank") -> list[str]:
    """The node ids of the app's RUNNING Ranker replicas (sorted)."""
    application = serve_applications(cluster).get(app) or {}
    replicas = application.get("deployments", {}).get("Ranker", {}).get("replicas", [])
    return sorted(r["node_id"] for r in replicas if r.get("state") == "RUNNING")
