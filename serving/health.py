"""The standard gRPC health service (``grpc.health.v1.Health``) on the serving port.

Ray Serve 2.60's gRPC proxy registers no health service. freshrank registers the generated
``add_HealthServicer_to_server`` beside ``freshrank.v1.Ranker`` in Serve's
``grpc_servicer_functions`` (``serving.app.SERVICERS``); the proxy routes its rpcs by method
name to the ingress deployment, whose ``Check``, ``Watch`` and ``List`` methods delegate to
``HealthState`` here. So an answer comes from a replica that would serve the next Rank:

- ``SERVING`` when the replica has loaded its base and is not draining;
- ``NOT_SERVING`` while the replica drains (Serve is stopping it: scale-down, redeploy,
  shutdown) or before its base is loaded;
- service names ``""`` (the whole server) and ``freshrank.v1.Ranker`` are known; any other
  is ``NOT_FOUND`` for ``Check`` and ``SERVICE_UNKNOWN`` for ``Watch``, as the protocol says.

When no replica is up at all the proxy itself answers (``UNAVAILABLE``/``NOT_FOUND``), which a
health client reads as not serving.

``Watch`` is a server-streaming rpc: Serve keeps the replica's request slot for as long as the
stream is open, so each replica accepts at most ``MAX_WATCHES`` of them at a time (more are
``RESOURCE_EXHAUSTED``) and every stream ends, after a last ``NOT_SERVING``, when the replica
starts draining (otherwise the drain would wait for it).

Draining is Serve's own state (``ReplicaBase._shutting_down``, set before it waits for
in-flight requests), read from the replica actor in this process; ``mark_draining`` (called
from the ingress's ``__del__``) covers the end of a shutdown.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from grpc_health.v1 import health_pb2

from serving.ingress import SERVICE as RANKER_SERVICE

logger = logging.getLogger(__name__)

# Serve's ``grpc_servicer_functions`` entry (the proxy routes these rpcs to the ingress).
SERVICER = "grpc_health.v1.health_pb2_grpc.add_HealthServicer_to_server"
HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
KNOWN_SERVICES = ("", RANKER_SERVICE)
MAX_WATCHES = 8  # concurrent Watch streams per replica (each holds a request slot)
WATCH_POLL_SECONDS = 0.5

Status = int  # a HealthCheckResponse.ServingStatus value
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICE_UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN

__all__ = ["HEALTH_SERVICE", "KNOWN_SERVICES", "MAX_WATCHES", "SERVICER", "HealthState", "serve_is_draining"]


def serve_is_draining() -> bool:
    """Whether Serve is shutting down the replica this process hosts (False elsewhere).

    Serve offers no public hook before it drains a replica; its replica object sets
    ``_shutting_down`` first thing in ``perform_graceful_shutdown``. The actor instance is
    found through Ray's worker (private API, pinned ray 2.60; a test covers it).
    """
    try:
        import ray

        worker = ray._private.worker.global_worker
        actors = getattr(worker, "actors", None) or {}
        for actor in list(actors.values()):
            impl = getattr(actor, "_replica_impl", None)
            if impl is not None and getattr(impl, "_shutting_down", False):
                return True
    except Exception:  # never let a health probe fail on this lookup
        return False
    return False


class HealthState:
    """What the ingress answers ``grpc.health.v1.Health`` with.

    ``ready`` says whether the replica can answer a Rank (its base loaded); ``draining`` says
    whether it is being stopped (default: Serve's own state, ``serve_is_draining``).
    """

    def __init__(
        self,
        ready: Callable[[], bool],
        *,
        draining: Callable[[], bool] = serve_is_draining,
        poll_s: float = WATCH_POLL_SECONDS,
        max_watches: int = MAX_WATCHES,
    ) -> None:
        self._ready = ready
        self._draining = draining
        self._marked_draining = False
        self._poll_s = poll_s
        self._max_watches = max_watches
        self._watches = 0

    def mark_draining(self) -> None:
        """From now on every service is ``NOT_SERVING`` (the replica is going away)."""
        self._marked_draining = True

    @property
    def draining(self) -> bool:
        return self._marked_draining or self._draining()

    def status(self, service: str) -> Status | None:
        """The status of ``service``, or None when it is not one this server knows."""
        if service not in KNOWN_SERVICES:
            return None
        if self.draining:
            return NOT_SERVING
        try:
            return SERVING if self._ready() else NOT_SERVING
        except Exception:
            logger.exception("health probe failed; answering NOT_SERVING")
            return NOT_SERVING

    def check(self, request: Any, grpc_context: Any) -> health_pb2.HealthCheckResponse:
        """``Check``: the status, or ``NOT_FOUND`` for a service this server does not know."""
        service = _service_of(request)
        status = self.status(service)
        if status is None:
            grpc_context.set_code(grpc.StatusCode.NOT_FOUND)
            grpc_context.set_details(f"unknown service {service[:100]!r}")
            return health_pb2.HealthCheckResponse()
        return health_pb2.HealthCheckResponse(status=status)

    def list(self, request: Any, grpc_context: Any) -> health_pb2.HealthListResponse:
        """``List``: every known service and its status."""
        reply = health_pb2.HealthListResponse()
        for service in KNOWN_SERVICES:
            reply.statuses[service].status = self.status(service) or SERVICE_UNKNOWN
        return reply

    async def watch(
        self, request: Any, grpc_context: Any
    ) -> AsyncIterator[health_pb2.HealthCheckResponse]:
        """``Watch``: the status now, then each change; ends after ``NOT_SERVING`` on drain."""
        if self._watches >= self._max_watches:
            grpc_context.set_code(grpc.StatusCode.RESOURCE_EXHAUSTED)
            grpc_context.set_details(
                f"this replica already serves {self._max_watches} Watch streams; use Check"
            )
            return
        self._watches += 1
        try:
            service = _service_of(request)
            last: Status | None = None
            while True:
                draining = self.draining  # read once: the status sent is the one judged
                status = self.status(service)
                current = SERVICE_UNKNOWN if status is None else status
                if draining and status is not None:
                    current = NOT_SERVING
                if current != last:
                    yield health_pb2.HealthCheckResponse(status=current)
                    last = current
                if draining:
                    return
                await asyncio.sleep(self._poll_s)
        finally:
            self._watches -= 1


def _service_of(request: Any) -> str:
    """The service name of a ``HealthCheckRequest`` (bytes are decoded; bad ones name none)."""
    if isinstance(request, (bytes, bytearray, memoryview)):
        try:
            request = health_pb2.HealthCheckRequest.FromString(bytes(request))
        except Exception:
            return "<not a HealthCheckRequest>"
    return str(getattr(request, "service", ""))
