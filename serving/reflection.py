"""gRPC server reflection v1 (``grpc.reflection.v1.ServerReflection``) on the serving port.

Ray Serve 2.60 enables reflection v1alpha only (``grpc_options.enable_reflection``, on by
default), and grpcio-reflection 1.85 ships only v1alpha. Current tools (grpcurl, Postman,
grpcui, ``grpc_cli``) ask v1 first. The v1 protocol is v1alpha's under another package name,
byte for byte on the wire, so this module serves the v1 rpc with grpcio-reflection's own
v1alpha servicer:

- ``add_reflection_v1_to_server`` is a ``grpc_servicer_functions`` entry (``SERVICER``; list
  it last): it marks the v1 service as one of Serve's *passthrough* services, so the proxy
  answers it itself rather than routing it to a replica (the same mechanism Serve uses for
  v1alpha), and registers the handler;
- the v1 ``reflection.proto`` descriptor is built at import from v1alpha's (package renamed)
  and added to the default descriptor pool, so ``file_containing_symbol`` finds the v1
  service too;
- the services listed are those registered on the server when the first reflection call
  arrives (``freshrank.v1.Ranker``, ``grpc.health.v1.Health``, both reflection services),
  without Serve's internal ``ray.serve.RayServeAPIService``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, text_format
from grpc_reflection.v1alpha import reflection_pb2 as v1alpha_pb2
from grpc_reflection.v1alpha._async import ReflectionServicer

SERVICER = "serving.reflection.add_reflection_v1_to_server"
SERVICE_NAME = "grpc.reflection.v1.ServerReflection"
METHOD = f"/{SERVICE_NAME}/ServerReflectionInfo"
V1_FILE = "grpc/reflection/v1/reflection.proto"
_HIDDEN = frozenset({"ray.serve.RayServeAPIService"})

__all__ = ["METHOD", "SERVICER", "SERVICE_NAME", "add_reflection_v1_to_server", "register_v1_descriptor"]


def register_v1_descriptor(pool: descriptor_pool.DescriptorPool | None = None) -> None:
    """Add ``grpc/reflection/v1/reflection.proto`` to ``pool`` (default pool) if absent."""
    pool = pool or descriptor_pool.Default()
    try:
        pool.FindFileByName(V1_FILE)
        return
    except KeyError:
        pass
    alpha = descriptor_pb2.FileDescriptorProto()
    v1alpha_pb2.DESCRIPTOR.CopyToProto(alpha)
    text = text_format.MessageToString(alpha)
    text = text.replace("grpc_reflection/v1alpha/", "grpc/reflection/v1/").replace(
        "grpc.reflection.v1alpha", "grpc.reflection.v1"
    )
    v1 = text_format.Parse(text, descriptor_pb2.FileDescriptorProto())
    v1.options.ClearField("deprecated")
    v1.options.java_package = "io.grpc.reflection.v1"
    v1.options.go_package = "google.golang.org/grpc/reflection/grpc_reflection_v1"
    pool.AddSerializedFile(v1.SerializeToString())


class _LateNamesServicer(ReflectionServicer):
    """v1alpha's servicer whose service list is read from the server at the first call
    (servicer functions run one by one; Serve adds v1alpha after all of them)."""

    def __init__(self, server: Any) -> None:
        super().__init__(())
        self._server = server
        self._named = False

    async def ServerReflectionInfo(  # noqa: N802 (the rpc's name)
        self, request_iterator: Any, context: Any
    ) -> AsyncIterator[v1alpha_pb2.ServerReflectionResponse]:
        if not self._named:
            self._service_names = tuple(sorted(registered_services(self._server)))
            self._named = True
        async for reply in super().ServerReflectionInfo(request_iterator, context):
            yield reply


def registered_services(server: Any) -> set[str]:
    """Service names registered on a Serve gRPC server (or any server recording them)."""
    names: set[str] = {SERVICE_NAME}
    for handlers in getattr(server, "generic_rpc_handlers", ()):
        for handler in _as_list(handlers):
            for method in getattr(handler, "_method_handlers", {}):
                names.add(method.split("/")[1])
    return names - _HIDDEN


def _as_list(handlers: Any) -> Iterable[Any]:
    return handlers if isinstance(handlers, (list, tuple)) else (handlers,)


def add_reflection_v1_to_server(servicer: Any, server: Any) -> None:
    """Serve's ``grpc_servicer_functions`` entry for reflection v1 (``servicer`` is unused:
    Serve passes a mock; the proxy answers this service itself)."""
    register_v1_descriptor()
    add_passthrough = getattr(server, "add_passthrough_service", None)
    if add_passthrough is not None:  # Serve's gRPCGenericServer: answer here, never route
        add_passthrough(SERVICE_NAME)
    handler = grpc.stream_stream_rpc_method_handler(
        _LateNamesServicer(server).ServerReflectionInfo,
        request_deserializer=v1alpha_pb2.ServerReflectionRequest.FromString,
        response_serializer=v1alpha_pb2.ServerReflectionResponse.SerializeToString,
    )
    handlers = {"ServerReflectionInfo": handler}
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),)
    )
    add_registered = getattr(server, "add_registered_method_handlers", None)
    if add_registered is not None:
        add_registered(SERVICE_NAME, handlers)
