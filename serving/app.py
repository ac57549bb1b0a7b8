"""Build, start and stop the freshrank Serve application.

``build_app`` wires the deployments (the learner's handle into the ingress). ``start`` runs
it on a Ray cluster: the one at ``settings.ray_address``, or a loopback-only local one.
``app_builder`` is the typed builder Serve's own CLI uses::

    serve run serving.app:app_builder config=freshrank.toml workspace=.freshrank

(with Serve's gRPC options from ``infra/serve/config.yaml``, which names the servicers,
``SERVICERS``: ``serving.ingress.add_ranker_to_server``, which hands the ingress raw request
bytes so that its door can refuse a malformed protobuf with ``INVALID_ARGUMENT``; the standard
``grpc.health.v1.Health``, answered by the ingress (``serving.health``); and reflection v1,
answered by the proxy (``serving.reflection``)).

Logs are Serve's JSON logs (``logging_config`` ``encoding: JSON``); the Prometheus endpoint is
the Learner's (``serving.observability``), on ``serving.host``:``serving.metrics_port``.
``scale_rankers`` changes the Ranker's replica count of a running app in place
(``serving.scaling``; ``start`` deploys with Serve's ``external_scaler_enabled`` for it).
"""

from __future__ import annotations

import logging
import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from serving.settings import Settings, load_settings

if TYPE_CHECKING:
    from ray.serve.deployment import Application

    from serving.scaling import ScaleResult

logger = logging.getLogger(__name__)

SERVICER = "serving.ingress.add_ranker_to_server"
# Serve's grpc_servicer_functions, in order (reflection v1 last: it lists what is registered).
SERVICERS = [
    SERVICER,
    "grpc_health.v1.health_pb2_grpc.add_HealthServicer_to_server",
    "serving.reflection.add_reflection_v1_to_server",
]


def logging_config(settings: Settings) -> dict[str, object]:
    """Serve's ``logging_config`` for the proxies and the deployments: JSON lines."""
    return {
        "encoding": "JSON",
        "log_level": settings.serving.log_level,
        "enable_access_log": settings.serving.access_log,
    }


def build_app(settings: Settings, *, online_enabled: bool | None = None) -> Application:
    """The Serve application graph: Learner <- Ranker (ingress).

    ``online_enabled`` overrides ``settings.serving.online_enabled`` through the Ranker's
    ``user_config`` (the value replicas start with). To switch a running app use
    ``serving.admin.set_online_enabled`` (or the ``SetOnlineEnabled`` rpc): re-running the
    app redeploys both deployments.

    The ingress token: a replica reads ``serving.token_file`` itself; when
    ``$FRESHRANK_INGRESS_TOKEN`` is set in this (the deploying) process it is handed to the
    Ranker as an init argument wrapped in ``serving.auth.Secret`` (never printed), because
    replicas of an already running Ray cluster do not inherit this process's environment.
    """
    import os

    from serving.auth import TOKEN_ENV, Secret
    from ray.serve.deployment import Deployment

    from serving.deployments import Learner, Ranker

    # mypy keeps a decorated class's own type; ``@serve.deployment`` made each a Deployment.
    learner_deployment, ranker_deployment = cast(Deployment, Learner), cast(Deployment, Ranker)
    enabled = settings.serving.online_enabled if online_enabled is None else online_enabled
    logs = logging_config(settings)
    learner = learner_deployment.options(
        ray_actor_options={"num_cpus": 0}, logging_config=logs
    ).bind(settings)
    return ranker_deployment.options(
        num_replicas=settings.serving.ranker_replicas,
        max_ongoing_requests=settings.serving.max_ongoing_requests,
        ray_actor_options={"num_cpus": 0},
        user_config={"online_enabled": enabled},
        logging_config=logs,
    ).bind(settings, learner, Secret(token) if (token := os.environ.get(TOKEN_ENV, "").strip()) else None)


def app_builder(args: dict[str, str]) -> Application:
    """Serve CLI entry (``serve run serving.app:app_builder config=... workspace=...``)."""
    return build_app(load_settings(args.get("config"), workspace=args.get("workspace")))


@dataclass(frozen=True)
class RunningServer:
    """Where a started application listens."""

    grpc_address: str
    http_address: str
    app_name: str
    metrics_address: str = ""  # the Prometheus endpoint (host:port, path /metrics)
    # With ``start(direct_ingress=True)``: each Ranker replica's own gRPC port (host:port),
    # which skips the proxy hop. Empty on the proxy path (the default).
    direct_grpc_addresses: tuple[str, ...] = ()

    @property
    def direct_grpc_address(self) -> str:
        """The first replica's direct gRPC address ("" on the proxy path)."""
        return self.direct_grpc_addresses[0] if self.direct_grpc_addresses else ""


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


DIRECT_INGRESS_ENV = "RAY_SERVE_ENABLE_DIRECT_INGRESS"


def start(settings: Settings, *, direct_ingress: bool = False) -> RunningServer:
    """Start Serve (gRPC + HTTP proxies) and deploy the application; returns its addresses.

    Ports of 0 are replaced by free ones (the metrics port by the Learner, which binds it).
    Joins ``settings.ray_address`` if set, else starts a loopback-only local Ray cluster.
    Where Serve already runs in that cluster (after ``remove``, or beside other
    applications) the application joins its proxies and their ports (a configured port
    they do not listen on is refused); Serve is started only where it is not running.

    ``direct_ingress`` (opt-in; the proxy path is the default and keeps working beside it):
    Ray Serve 2.60's feature flag ``RAY_SERVE_ENABLE_DIRECT_INGRESS=1``, under which each
    Ranker replica hosts a gRPC server of its own (the same servicers, ``SERVICERS``; ports
    from ``RAY_SERVE_DIRECT_INGRESS_MIN_GRPC_PORT``, 40000) and a client dialing it skips the
    proxy hop (``RunningServer.direct_grpc_addresses``). Serve reads the flag when its
    processes start, so it needs a cluster this call starts (no ``ray_address``, Ray not yet
    initialised in this process) unless the environment already has it set. Those ports
    bind every interface (``[::]``); the ingress's ``PeerPolicy`` still refuses other hosts
    while ``serving.host`` is loopback. Known limits of the flag in 2.60 (draining waits at
    least ``RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S``, 30 s, per replica stop).
    """
    import os

    from protos.ray_local import init_local_ray

    if direct_ingress and os.environ.get(DIRECT_INGRESS_ENV) != "1":
        import ray

        if ray.is_initialized() or settings.ray_address or os.environ.get("RAY_ADDRESS"):
            raise ValueError(
                f"direct ingress needs {DIRECT_INGRESS_ENV}=1 in the environment of the Ray "
                "cluster: start the cluster with it (or let serving.app.start start one)"
            )
        os.environ[DIRECT_INGRESS_ENV] = "1"
    init_local_ray(address=settings.ray_address)
    from ray import serve
    from ray.serve.config import gRPCOptions

    cfg = settings.serving
    # Serve 2.60 binds the gRPC proxy on [::]:port whatever is asked (no host option or
    # environment variable); with a loopback serving.host the ingress refuses other peers
    # (serving.auth.PeerPolicy). The HTTP proxy does honour the host.
    running_ports = _running_proxy_ports()
    if running_ports is not None:
        # Serve already runs in this cluster (an application was removed by ``remove``, or
        # another one runs beside): its proxies carry this application too.
        grpc_port, http_port = _join_running_serve(cfg.grpc_port, cfg.http_port, running_ports)
    else:
        grpc_port = cfg.grpc_port or _free_port(cfg.host)
        http_port = cfg.http_port or _free_port(cfg.host)
        serve.start(
            http_options={"host": cfg.host, "port": http_port},
            grpc_options=gRPCOptions(port=grpc_port, grpc_servicer_functions=SERVICERS),
            logging_config=logging_config(settings),
        )
    serve.run(
        build_app(settings), name=cfg.app_name, blocking=False,
        logging_config=logging_config(settings),
        external_scaler_enabled=True,  # scale_rankers: a replica count set in place
    )
    running = RunningServer(
        f"{cfg.host}:{grpc_port}",
        f"{cfg.host}:{http_port}",
        cfg.app_name,
        metrics_address(cfg.app_name),
        direct_grpc_addresses(cfg.app_name, cfg.host) if direct_ingress else (),
    )
    logger.info("freshrank serving gRPC on %s", running.grpc_address)
    if direct_ingress:
        logger.info("direct ingress: Ranker replicas on %s", ", ".join(running.direct_grpc_addresses))
    return running


def direct_grpc_addresses(app_name: str, host: str, timeout_s: float = 60.0) -> tuple[str, ...]:
    """The gRPC ports the application's ingress replicas host under direct ingress, as
    ``host:port`` (``host`` replaces the node address for a loopback-only app); waits until
    the controller lists at least one. Empty when direct ingress is off."""
    import time

    import ray
    from ray.serve.context import _get_global_client

    client = _get_global_client()
    if client is None:
        return ()
    controller: Any = client._controller
    deadline = time.monotonic() + timeout_s
    while True:
        groups = ray.get(controller.get_target_groups.remote(app_name))
        grpc_groups = [g for g in groups if str(getattr(g.protocol, "value", g.protocol)).lower() == "grpc"]
        ports = sorted({t.port for g in grpc_groups for t in g.targets})
        if ports and not set(ports) & set(_proxy_ports()):
            return tuple(f"{host}:{port}" for port in ports)
        if time.monotonic() > deadline:
            return ()
        time.sleep(0.5)


def _proxy_ports() -> list[int]:
    """The gRPC proxy's port (target groups list the proxy while no replica is up)."""
    from ray.serve.context import _get_global_client

    client = _get_global_client()
    try:
        return [int(client.get_serve_details()["grpc_options"]["port"])] if client else []
    except Exception:
        return []


def metrics_address(app_name: str, timeout_s: float = 30.0) -> str:
    """Where the running application's Prometheus endpoint listens (``host:port``; "" if
    the Learner could not bind it). Path: ``/metrics``."""
    from ray import serve

    learner = serve.get_deployment_handle("Learner", app_name=app_name)
    return str(learner.metrics_address.remote().result(timeout_s=timeout_s))


def set_online_enabled(
    settings: Settings, enabled: bool, reason: str = "operator switch", actor: str = "operator"
) -> dict[str, Any]:
    """Turn the online correction off (base alone) or on again in a running application,
    in place (``serving.admin.set_online_enabled``): no restart, learner state kept."""
    from serving.admin import set_online_enabled as switch

    return switch(settings, enabled, reason, actor)


def scale_rankers(settings: Settings, replicas: int, *, timeout_s: float = 120.0) -> ScaleResult:
    """Run ``replicas`` Ranker replicas in the running application
    (``settings.serving.app_name``), in place, and wait until they run
    (``serving.scaling.scale_rankers``: the Learner and the replicas that stay are untouched).

    Uses this process's Ray connection, else joins ``settings.ray_address`` (or
    ``$RAY_ADDRESS``); never starts a cluster (a new one runs no app). A bad count is refused
    (``InvalidInput`` naming ``ranker_replicas``) before Ray is asked anything.
    """
    import os

    import ray

    from protos.errors import FailedPrecondition
    from protos.ray_local import init_local_ray
    from serving.scaling import check_replicas, scale_rankers as scale

    check_replicas(replicas)
    if not ray.is_initialized():
        if not (settings.ray_address or os.environ.get("RAY_ADDRESS")):
            raise FailedPrecondition(
                "scaling needs the Ray cluster the app runs on: pass --ray-address, set "
                "[freshrank] ray_address or $RAY_ADDRESS (a `freshrank serve` without one runs "
                "a private cluster: restart it with [serving] ranker_replicas instead)"
            )
        init_local_ray(address=settings.ray_address)
    return scale(settings.serving.app_name, replicas, timeout_s=timeout_s)


def stop() -> None:
    """Shut down Serve (every application and proxy this cluster's Serve runs)."""
    from ray import serve

    serve.shutdown()


def remove(app_name: str) -> None:
    """Delete one application (its replicas drain and stop) and leave Serve's controller
    and proxies running, so that the next ``start`` in this cluster skips their start-up
    (about 5 s of ``serve.start`` and its shutdown, measured here) and serves on the same
    ports. ``stop`` ends Serve itself."""
    from ray import serve

    serve.delete(app_name, _blocking=True)  # an application that is not there: nothing to do


def _running_proxy_ports() -> tuple[int, int] | None:
    """(gRPC, HTTP) ports of the Serve instance running in the connected cluster, or None
    when Serve is not running (its controller is not up). A running Serve without a gRPC
    proxy carrying ``SERVICERS`` is refused (ValueError naming what it lacks), never
    restarted: it may be another team's."""
    from ray.serve.context import _get_global_client

    client = _get_global_client(raise_if_no_controller_running=False)
    if client is None:  # no controller: Serve is not running in this cluster
        return None
    details = client.get_serve_details()
    grpc = details.get("grpc_options") or {}
    missing = sorted(set(SERVICERS) - set(grpc.get("grpc_servicer_functions") or []))
    if not grpc.get("port") or missing:
        # Never shut another team's Serve down from here: say what it lacks.
        raise ValueError(
            "Serve already runs in this Ray cluster without freshrank's gRPC servicers "
            f"({', '.join(missing)}): it cannot carry the app; deploy with "
            "infra/serve/config.yaml's grpc_options, or stop that Serve first"
        )
    return int(grpc["port"]), int((details.get("http_options") or {}).get("port") or 0)


def _join_running_serve(
    grpc_port: int, http_port: int, running: tuple[int, int]
) -> tuple[int, int]:
    """The running proxies' ports; refuses a configured port they do not listen on (a port
    of 0 means any)."""
    for name, wanted, actual in (("grpc_port", grpc_port, running[0]), ("http_port", http_port, running[1])):
        if wanted and wanted != actual:
            raise ValueError(
                f"serving.{name} = {wanted}, but Serve already runs in this Ray cluster with "
                f"its proxy on {actual}: use that port (or 0), or stop Serve first"
            )
    return running
