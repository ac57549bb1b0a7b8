"""Fixtures shared by the whole suite.

One Ray cluster per test session (start-up is seconds), started on
loopback only; it is shut down by handle at the end of the session.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import socket
import tempfile
from collections.abc import Iterator

import pytest

from protos.ray_local import apply_loopback_environment

# Before anything imports ray: Ray reads the loopback switch at import time.
apply_loopback_environment()

# Before anything imports Feast: the package skips Feast's typeguard instrumentation, ~9 s
# per process (feature_store.feast_import), as serving's processes do.
import feature_store  # noqa: E402,F401

# Feast's metrics module makes a prometheus multiprocess directory per importing process
# (feast_metrics_* in /tmp) and removes it at exit; Ray workers leave by os._exit and never
# do. One directory for the whole session, every process it starts inheriting it, removed
# at the end.
_METRICS_DIR: str | None = None
if "PROMETHEUS_MULTIPROCESS_DIR" not in os.environ:
    _METRICS_DIR = tempfile.mkdtemp(prefix="freshrank-test-metrics-")
    os.environ["PROMETHEUS_MULTIPROCESS_DIR"] = _METRICS_DIR
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = _METRICS_DIR


def pytest_unconfigure(config: pytest.Config) -> None:
    if _METRICS_DIR is not None:
        shutil.rmtree(_METRICS_DIR, ignore_errors=True)

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
SHARED_DATA = pathlib.Path(
    os.environ.get("FRESHRANK_SHARED_DATA", REPO_ROOT.parent / "shared" / "data")
)


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[None]:
    """A local loopback Ray cluster shared by every test that needs one.

    At the end the cluster is shut down, then any of its worker processes that outlived it
    is stopped by PID: a Ray Train controller caught mid-teardown was once seen surviving
    ``ray.shutdown`` as an orphan. Only processes below this cluster's own raylet are touched.
    """
    import psutil
    import ray

    from protos.ray_local import init_local_ray

    init_local_ray(num_cpus=4)
    yield
    workers: list[psutil.Process] = []
    node = ray._private.worker._global_node
    for infos in (node.all_processes.values() if node is not None else []):
        for info in infos:
            try:
                workers += psutil.Process(info.process.pid).children(recursive=True)
            except psutil.NoSuchProcess:
                pass
    ray.shutdown()
    _, alive = psutil.wait_procs(workers, timeout=10)
    for proc in alive:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
    """The public datasets beside the checkout (``shared/data`` next to the repository, or $FRESHRANK_SHARED_DATA); tests using it skip when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real datasets not found at {SHARED_DATA} (set FRESHRANK_SHARED_DATA)")
    return SHARED_DATA


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
