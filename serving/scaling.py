"""Change the number of Ranker replicas of a running application, in place.

What Ray Serve 2.60 does with each way of asking (read from the installed package):

- ``serve.run`` again with another ``num_replicas`` is a code rollout, not a scaling:
  ``ServeControllerClient.deploy_applications`` gives every deployment a fresh random code
  version on each call (``version=deployment._version or get_random_string()``), so
  ``DeploymentVersion.requires_actor_restart`` replaces every replica, the Learner's too.
- ``serve deploy`` of a config file keeps the code version (a hash of import path, args and
  runtime env: ``deploy_utils.get_app_code_version``), and ``ApplicationState.apply_app_config``
  applies a changed ``num_replicas`` of a deployment as a lightweight update:
  ``DeploymentState.deploy`` sees a "scaled copy" of its target and only adds or stops replicas.
- An application deployed with ``external_scaler_enabled`` (``serving.app.start`` and
  ``infra/serve/config.yaml`` set it) also takes the controller's
  ``update_deployment_replicas`` (what the dashboard's
  ``POST /api/v1/applications/{app}/deployments/{name}/scale`` calls): it sets the target count
  on the deployed target, same version, so the running replicas stay, new ones start and the
  extra ones drain (routing to them stops first, then their requests finish).

``scale_rankers`` takes the last way and waits until the Ranker runs exactly the replicas asked
for. A new replica catches up with the learner (plan, operator controls, online weights) before
Serve routes to it (``Ranker.reconfigure``), so its first reply carries the versions the
others serve.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from protos.errors import FailedPrecondition, InvalidInput, NotFound, Unavailable

__all__ = ["RANKER", "ReplicaInfo", "ScaleResult", "check_replicas", "ranker_replicas", "scale_rankers"]

RANKER = "Ranker"  # the deployment scaled (serving.ranker_deployment)
MAX_RANKER_REPLICAS = 64  # a typo guard: each replica loads the base and the feature reader


@dataclass(frozen=True)
class ReplicaInfo:
    """One Ranker replica as Serve's controller lists it (``replica_id`` also names the
    replica's served log: ``serving.served_log``)."""

    replica_id: str
    state: str  # RUNNING, STARTING, STOPPING, ...
    pid: int | None


@dataclass(frozen=True)
class ScaleResult:
    app_name: str
    previous: int  # the target count before
    replicas: int  # the target count now
    replica_ids: tuple[str, ...]  # the running replicas once settled (empty: not waited for)
    seconds: float  # from the request to settled (0: not waited for)

    def to_dict(self) -> dict[str, Any]:
        return {"app": self.app_name, "previous": self.previous, "replicas": self.replicas,
                "replica_ids": list(self.replica_ids), "seconds": round(self.seconds, 2)}


def check_replicas(value: object) -> int:
    """``value`` as a Ranker replica count, or ``InvalidInput`` naming ``ranker_replicas``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput(f"ranker_replicas must be a whole number, got {value!r}")
    if not 1 <= value <= MAX_RANKER_REPLICAS:
        raise InvalidInput(
            f"ranker_replicas must be in [1, {MAX_RANKER_REPLICAS}], got {value} "
            "(to stop serving, remove the application)"
        )
    return value


def _client() -> Any:
    from ray.serve.context import _get_global_client

    client = _get_global_client(raise_if_no_controller_running=False)
    if client is None:
        raise Unavailable("Serve is not running in this Ray cluster: start the app first (freshrank serve)")
    return client


def _application(details: dict[str, Any], app_name: str) -> dict[str, Any]:
    application = (details.get("applications") or {}).get(app_name)
    if application is None:
        running = ", ".join(sorted(details.get("applications") or {})) or "none"
        raise NotFound(f"no Serve application {app_name!r} in this Ray cluster (running: {running})")
    if RANKER not in (application.get("deployments") or {}):
        raise NotFound(f"application {app_name!r} has no {RANKER} deployment: not a freshrank app")
    return dict(application)


def _state(value: Any) -> str:
    return str(getattr(value, "value", value))


def ranker_replicas(app_name: str) -> list[ReplicaInfo]:
    """The application's Ranker replicas as Serve's controller lists them now."""
    deployment = _application(_client().get_serve_details(), app_name)["deployments"][RANKER]
    return [
        ReplicaInfo(str(r["replica_id"]), _state(r["state"]), r.get("pid"))
        for r in deployment.get("replicas") or []
    ]


def scale_rankers(
    app_name: str, replicas: int, *, wait: bool = True, timeout_s: float = 120.0, poll_s: float = 0.2
) -> ScaleResult:
    """Run ``replicas`` Ranker replicas in the running application ``app_name``, in place
    (the Learner and the replicas that stay are untouched; no call fails).

    Needs Ray connected to the application's cluster. With ``wait`` it returns once Serve
    lists exactly ``replicas`` replicas, all RUNNING (the drained ones gone), else raises
    ``Unavailable`` after ``timeout_s`` naming what it saw (the target stays set).
    """
    import ray
    from ray.serve._private.common import DeploymentID

    replicas = check_replicas(replicas)
    client = _client()
    application = _application(client.get_serve_details(), app_name)
    if not application.get("external_scaler_enabled"):
        raise FailedPrecondition(
            f"application {app_name!r} was deployed without external_scaler_enabled, so Serve "
            "refuses a replica count from outside: redeploy it with serving.app.start "
            f"(freshrank serve) or infra/serve/config.yaml, or set num_replicas of {RANKER} "
            "in your Serve config and `serve deploy` it"
        )
    previous = int(application["deployments"][RANKER].get("target_num_replicas") or 0)
    started = time.monotonic()
    ray.get(client._controller.update_deployment_replicas.remote(DeploymentID(name=RANKER, app_name=app_name), replicas))
    if not wait:
        return ScaleResult(app_name, previous, replicas, (), 0.0)
    while True:
        seen = ranker_replicas(app_name)
        if len(seen) == replicas and all(r.state == "RUNNING" for r in seen):
            return ScaleResult(app_name, previous, replicas, tuple(r.replica_id for r in seen),
                               time.monotonic() - started)
        if time.monotonic() - started > timeout_s:
            states = ", ".join(f"{r.replica_id} {r.state}" for r in seen) or "none"
            raise Unavailable(
                f"{RANKER} of {app_name!r} did not settle at {replicas} replicas in {timeout_s:g} s "
                f"(now: {states}); Serve keeps trying"
            )
        time.sleep(poll_s)
