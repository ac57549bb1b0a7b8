"""Start or join Ray so that every socket stays on loopback.

Why this exists (measured on the development machines): on a machine with a second interface, Ray binds its
GCS, raylets and workers to that interface unless ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` is
in the environment of the process that starts Ray, and its dashboard asks the cloud metadata
address (169.254.169.254) which cloud it is on; a proxy pointing at a dead loopback port
(with loopback exempted) keeps that probe on the machine. Every place that starts a local
cluster (tests, demo, ``freshrank`` commands, ``base_model.train`` when no cluster is given)
goes through ``loopback_environment``/``init_local_ray``.

Why in ``protos/``: every tier and the tests start Ray the same way, so the rule lives on the
ground floor, not inside one tier. It imports ``ray`` only inside ``init_local_ray``, so the
ground floor stays importable without Ray.
"""

from __future__ import annotations

import logging
import os
from collections.abc import MutableMapping
from typing import Any

logger = logging.getLogger(__name__)

DEAD_PROXY = "http://127.0.0.1:9"
LOOPBACK = "127.0.0.1,localhost"


def loopback_environment() -> dict[str, str]:
    """The variables a process needs before it starts a local Ray cluster."""
    return {
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        "RAY_USAGE_STATS_ENABLED": "0",
        "HTTP_PROXY": DEAD_PROXY,
        "http_proxy": DEAD_PROXY,
        "HTTPS_PROXY": DEAD_PROXY,
        "https_proxy": DEAD_PROXY,
        "NO_PROXY": LOOPBACK,
        "no_proxy": LOOPBACK,
    }


def apply_loopback_environment(env: MutableMapping[str, str] | None = None) -> None:
    """Set ``loopback_environment()`` in ``env`` (default: this process's environment)."""
    target = os.environ if env is None else env
    target.update(loopback_environment())


def init_local_ray(num_cpus: int | None = None, address: str | None = None, **kwargs: Any) -> None:
    """Connect to ``address`` (or ``$RAY_ADDRESS``, as in a Ray job), else start a
    loopback-only cluster of this process's own.

    Never joins a cluster merely because one runs on this machine (``ray start`` leaves its
    address in ``/tmp/ray``, which a bare ``ray.init()`` would join): a local run gets its own
    cluster, with Ray's token authentication on (Ray 2.60's default for a new local
    cluster: every Ray port refuses a caller without the token; ``tests/test_ray_local.py``).
    Does nothing when Ray is already initialised in this process, so library code can call
    it unconditionally and tests can share one session cluster.
    """
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address:
        logger.info("joining Ray cluster at %s", address)
        ray.init(address=address, **kwargs)
        return
    apply_loopback_environment()
    _loopback_after_import()
    logger.info("starting a local loopback Ray cluster (num_cpus=%s)", num_cpus)
    # "local": always a new cluster of our own, never one `ray start` left running here.
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, **kwargs)


def _loopback_after_import() -> None:
    """Honour the loopback switch even when ``ray`` was imported before it was set.

    Ray reads ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER`` once, at import, into
    ``ray._private.ray_constants.ENABLE_RAY_CLUSTER``; node start-up reads that attribute.
    The processes Ray spawns inherit the environment set above.
    """
    from ray._private import ray_constants

    if ray_constants.ENABLE_RAY_CLUSTER:
        logger.debug("ray was imported before the loopback switch; applying it now")
        ray_constants.ENABLE_RAY_CLUSTER = False
