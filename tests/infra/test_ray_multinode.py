"""A real two-node Ray cluster on this machine: ``ray start --head`` and a second node joined
with ``ray start --address`` (through ray_join_loopback.py: Ray's CLI refuses a second node
under the loopback switch), both on 127.0.0.1 with their own free ports, resources and Ray's
token auth (2 CPUs each); a task pinned to each node runs there. Only the processes this
test started are stopped, by pid (never ``ray stop``: it ends every Ray process on the
machine).
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
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from tests.infra.redis_kit import free_port

from protos.ray_local import loopback_environment

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

RAY = str(pathlib.Path(sys.executable).with_name("ray"))
JOIN = pathlib.Path(__file__).with_name("ray_join_loopback.py")  # `ray start --address` on loopback
MARKER = "FRESHRANK_TEST_RAY_MULTINODE"
NODE_PORT_FLAGS = (
    "--node-manager-port", "--object-manager-port", "--dashboard-agent-listen-port",
    "--dashboard-agent-grpc-port", "--runtime-env-agent-port", "--metrics-export-port",
)
HEAD_PORT_FLAGS = ("--port", "--dashboard-port", "--ray-client-server-port")


@dataclass
class Cluster:
    env: dict[str, str]
    marker: str
    temp_dir: pathlib.Path
    gcs: str = ""
    dashboard: str = ""
    nodes: list[subprocess.Popen] = field(default_factory=list)
    logs: list[pathlib.Path] = field(default_factory=list)

    def processes(self) -> list[int]:
        """Pids of every live process this cluster's nodes started (they inherit the marker)."""
        needle = f"{MARKER}={self.marker}".encode()
        found = []
        for entry in pathlib.Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    if needle in (entry / "environ").read_bytes().split(b"\0"):
                        if (entry / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                            found.append(int(entry.name))
                except OSError:
                    continue
        return found

    def start_node(self, name: str, *extra: str, launcher: list[str] | None = None) -> None:
        ports = {flag: free_port() for flag in NODE_PORT_FLAGS}
        low = free_port()
        log = self.temp_dir / f"{name}.log"
        self.logs.append(log)
        command = [
            *(launcher or [RAY]), "start", "--block", "--num-cpus=2", "--num-gpus=0", "--disable-usage-stats",
            f"--resources={json.dumps({name: 1})}", f"--temp-dir={self.temp_dir}",
            f"--min-worker-port={low}", f"--max-worker-port={low + 20}",
            *extra, *[f"{flag}={port}" for flag, port in ports.items()],
        ]
        with open(log, "wb") as out:
            self.nodes.append(subprocess.Popen(command, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                               start_new_session=True))

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

    def tail(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-1500:]}" for p in self.logs if p.exists())


def wait_for(check, what: str, cluster: Cluster, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(node.poll() is not None for node in cluster.nodes):
            raise RuntimeError(f"a ray node exited while waiting for {what}:\n{cluster.tail()}")
        if check():
            return
        time.sleep(0.5)
    raise TimeoutError(f"{what} after {timeout} s:\n{cluster.tail()}")


def dashboard_status(url: str, token: str | None) -> int:
    request = urllib.request.Request(f"{url}/api/version")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        return urllib.request.urlopen(request, timeout=2).status
    except urllib.error.HTTPError as error:
        return error.code
    except OSError:
        return 0


NODES_ALIVE = """
    import json, sys, ray
    ray.init(address=sys.argv[1], logging_level="ERROR", log_to_driver=False)
    print(json.dumps(sorted(n["Resources"].get("node_b", 0) + 2 * n["Resources"].get("node_a", 0)
                            for n in ray.nodes() if n["Alive"])))
"""

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
    temp_dir = pathlib.Path(tempfile.mkdtemp(prefix="frk-mn-"))  # short: Ray's socket paths
    marker = secrets.token_hex(8)
    env = {**os.environ, **loopback_environment(), MARKER: marker,
           "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    env.pop("RAY_ADDRESS", None)
    made = Cluster(env=env, marker=marker, temp_dir=temp_dir)
    head_ports = {flag: free_port() for flag in HEAD_PORT_FLAGS}
    made.gcs = f"127.0.0.1:{head_ports['--port']}"
    made.dashboard = f"http://127.0.0.1:{head_ports['--dashboard-port']}"
    try:
        made.start_node("node_a", "--head", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
                        *[f"{flag}={port}" for flag, port in head_ports.items()])
        wait_for(lambda: dashboard_status(made.dashboard, env["RAY_AUTH_TOKEN"]) == 200,
                 "the head's dashboard", made, 90)
        made.start_node("node_b", f"--address={made.gcs}", launcher=[sys.executable, str(JOIN)])

        def two_nodes() -> bool:
            done = made.driver(NODES_ALIVE, timeout=60)
            return done.returncode == 0 and json.loads(done.stdout.strip().splitlines()[-1]) == [1, 2]

        wait_for(two_nodes, "two alive nodes", made, 90)
        yield made
    finally:
        made.stop()
        left = made.processes()
        shutil.rmtree(temp_dir, ignore_errors=True)
    assert not left, f"processes of this cluster outlived its stop: {left}"


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

