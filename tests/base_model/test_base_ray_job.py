"""``ray job submit --working-dir . -- python -m base_model.train`` against a ``ray start`` head.

The head is this test's own: loopback environment, free ports for every listener (never
6379/8265: other clusters may run on this machine), its own ``--temp-dir``, and its own auth
token (``RAY_AUTH_MODE=token`` + ``RAY_AUTH_TOKEN``, so ``~/.ray/auth_token`` is neither
read nor written). It is stopped by handle, never with ``ray stop`` (which ends every Ray
process on the machine): SIGTERM to every process that carries this head's marker in its
environment, SIGKILL to what is left 10 s later. The test checks that nothing is left.
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
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import pytest

from base_model.artifact import read_weights
from protos.ray_local import loopback_environment
from protos.registry import ModelRegistry
from base_model.training import TrainResult
from tests.base_model.base_world import TRAIN_CFG, as_of_day, free_port

pytestmark = pytest.mark.slow

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
RAY = str(pathlib.Path(sys.executable).with_name("ray"))
# Written in the checkout while the suite runs (a cold mypy beside it, hypothesis, pytest);
# kept out of the job's working_dir package.
WRITTEN_WHILE_TESTING = [".mypy_cache", ".hypothesis", ".pytest_cache", ".freshrank"]
MARKER = "FRESHRANK_TEST_RAY_HEAD"


@dataclass
class RayHead:
    process: subprocess.Popen
    env: dict[str, str]
    dashboard: str
    temp_dir: pathlib.Path
    marker: str

    def processes(self) -> list[int]:
        """Pids of every live process this head started (they inherit the marker)."""
        needle = f"{MARKER}={self.marker}".encode()
        found = []
        for entry in pathlib.Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                if needle in (entry / "environ").read_bytes().split(b"\0"):
                    state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
                    if state != "Z":
                        found.append(int(entry.name))
            except OSError:
                continue
        return found


@contextmanager
def ray_head(num_cpus: int = 2) -> Iterator[RayHead]:
    """A ``ray start --head --block`` on loopback with its own ports, temp dir and token."""
    marker = secrets.token_hex(8)
    temp_dir = pathlib.Path(tempfile.mkdtemp(prefix="frk-ray-"))  # short: Ray's socket paths
    env = {
        **os.environ,
        **loopback_environment(),
        MARKER: marker,
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(32),
    }
    env.pop("RAY_ADDRESS", None)
    ports = {
        flag: free_port()
        for flag in (
            "--port",
            "--dashboard-port",
            "--ray-client-server-port",
            "--dashboard-agent-listen-port",
            "--dashboard-agent-grpc-port",
            "--runtime-env-agent-port",
            "--metrics-export-port",
            "--node-manager-port",
            "--object-manager-port",
        )
    }
    cmd = [
        RAY,
        "start",
        "--head",
        "--block",
        f"--num-cpus={num_cpus}",
        "--num-gpus=0",
        "--include-dashboard=true",
        "--dashboard-host=127.0.0.1",
        f"--temp-dir={temp_dir}",
        "--disable-usage-stats",
        *[f"{flag}={port}" for flag, port in ports.items()],
    ]
    log = open(temp_dir / "ray-start.log", "wb")  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    head = RayHead(process, env, f"http://127.0.0.1:{ports['--dashboard-port']}", temp_dir, marker)
    try:
        _wait_for_dashboard(head, timeout=90)
        yield head
    finally:
        _stop(head)
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)


def _wait_for_dashboard(head: RayHead, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if head.process.poll() is not None:
            raise RuntimeError(
                f"ray start exited: {(head.temp_dir / 'ray-start.log').read_text()[-2000:]}"
            )
        try:
            urllib.request.urlopen(f"{head.dashboard}/api/version", timeout=2)
            return
        except urllib.error.HTTPError:  # 401 without the token: it is up
            return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"the Ray dashboard at {head.dashboard} did not answer in {timeout} s")


def _stop(head: RayHead) -> None:
    """SIGTERM every process of this head at once (each carries its marker: ``ray start
    --block``, GCS, raylet, dashboard, workers), SIGKILL what is left after 10 s.

    SIGTERM to ``ray start --block`` alone, which then ends its children, took over 30 s
    after a job here (measured: it outlived a 30 s wait, then its children were swept)."""
    def signal_all(sig: int) -> None:
        for pid in {head.process.pid, *head.processes()}:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    signal_all(signal.SIGTERM)
    deadline = time.monotonic() + 10
    while (head.process.poll() is None or head.processes()) and time.monotonic() < deadline:
        time.sleep(0.2)
    if head.process.poll() is None or head.processes():
        signal_all(signal.SIGKILL)
    head.process.wait(timeout=10)
    deadline = time.monotonic() + 5
    while head.processes() and time.monotonic() < deadline:
        time.sleep(0.2)


def write_toml(path: pathlib.Path, section: str, values: dict) -> None:
    lines = [f"[{section}]"] + [f"{k} = {json.dumps(v)}" for k, v in values.items()]
    path.write_text("\n".join(lines) + "\n")


def test_ray_job_submit_trains_registers_and_matches_the_in_process_fit(
    tmp_path: pathlib.Path,
    world_parquet: pathlib.Path,
    first_version: tuple[ModelRegistry, TrainResult],
) -> None:
    config = tmp_path / "freshrank.toml"
    write_toml(config, "base_model", TRAIN_CFG.to_dict())
    registry_root = tmp_path / "registry"
    entry = [
        sys.executable,
        "-m",
        "base_model.train",
        "--training-set",
        str(world_parquet),
        "--registry",
        str(registry_root),
        "--config",
        str(config),
        "--as-of",
        as_of_day(7).isoformat(),
    ]
    with ray_head() as head:
        submit = subprocess.run(
            [
                RAY,
                "job",
                "submit",
                "--address",
                head.dashboard,
                # the checkout, less what tools write there while tests run: a file that
                # changes between Ray's hashing and its upload fails the job's runtime env
                "--runtime-env-json",
                json.dumps({"working_dir": ".", "excludes": WRITTEN_WHILE_TESTING}),
                "--submission-id",
                f"freshrank-test-{head.marker}",
                "--",
                *entry,
            ],
            cwd=REPO_ROOT,
            env=head.env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        output = submit.stdout + submit.stderr
        assert submit.returncode == 0, output[-4000:]
        assert "succeeded" in output, output[-4000:]
        status = subprocess.run(
            [RAY, "job", "status", "--address", head.dashboard, f"freshrank-test-{head.marker}"],
            env=head.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert (
            f"job 'freshrank-test-{head.marker}' succeeded"
            in (status.stdout + status.stderr).lower()
        )
        # What was uploaded: the repository without what .gitignore excludes (.venv, state).
        packages = [
            p
            for p in head.temp_dir.glob(
                "session_latest/runtime_resources/working_dir_files/_ray_pkg_*"
            )
            if p.is_dir()
        ]
        assert len(packages) == 1
        assert (packages[0] / "base_model" / "train.py").is_file()
        assert not (packages[0] / ".venv").exists() and not (packages[0] / ".freshrank").exists()
        assert head.processes(), "the head's processes should carry the marker"
    assert head.processes() == [], "processes of the test's Ray head outlived it"

    # The job registered a gated, promoted version...
    registry = ModelRegistry(registry_root)
    champion = registry.champion("base")
    assert champion is not None and champion.version == "base-0001"
    assert champion.status == "promoted"
    assert champion.lineage["metrics"]["backend"] == "ray"
    assert all(g["passed"] for g in champion.gate_results.values())
    # ... whose weights equal the in-process loop's (``backend="local"``, the loop a Ray Train
    # worker runs) with the same seed and data, bitwise: same batches, same order, one CPU
    # worker, the same thread count. So Ray Train adds nothing to what is learned.
    _, v1 = first_version
    job_weights, local_weights = read_weights(champion.path), read_weights(v1.path)
    assert job_weights.keys() == local_weights.keys()
    for name in job_weights:
        np.testing.assert_array_equal(job_weights[name], local_weights[name], err_msg=name)
