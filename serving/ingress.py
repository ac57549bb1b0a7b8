"""The ingress's one door: how every rpc of ``freshrank.v1.Ranker`` answers when it fails.

Each rpc method of the ingress deployment is decorated with ``rpc``. The door

0. asks the service who may call (``self._authorize(rpc_name, grpc_context)`` when the
   service has one: the caller's peer and credential, ``serving.auth``), before reading a
   byte of the request: ``PERMISSION_DENIED`` / ``UNAUTHENTICATED`` naming the rpc;
1. decodes the request: the servicer Serve registers (``add_ranker_to_server``) hands the
   replica the request's raw bytes, so a body that is not a valid protobuf is the door's to
   refuse (``INVALID_ARGUMENT``) rather than the proxy's (``UNKNOWN``);
2. runs the rpc's parse step, where a ``ValueError`` or ``TypeError`` means bad input
   (``INVALID_ARGUMENT`` with its message, which names the field);
3. runs the handler, where only a ``FreshrankError`` is deliberate: its ``grpc_status`` and
   message go to the client. Anything else is a bug: it is logged with the request id and
   answered ``INTERNAL`` with a short generic message (never a traceback, pid or path).

Errors raised by another deployment arrive wrapped by Ray (``RayTaskError``, whose ``str``
is the remote traceback); the door answers for the ``cause`` they carry.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

import grpc
from google.protobuf.message import DecodeError, Message

from protos.errors import FreshrankError, InvalidInput
from protos.freshrank.v1 import ranking_pb2

logger = logging.getLogger(__name__)

SERVICE = ranking_pb2.DESCRIPTOR.services_by_name["Ranker"].full_name
# rpc name -> (request type, reply type); a test checks it covers every rpc of the service.
RPCS: dict[str, tuple[type[Message], type[Message]]] = {
    "Rank": (ranking_pb2.RankRequest, ranking_pb2.RankResponse),
    "Feedback": (ranking_pb2.FeedbackRequest, ranking_pb2.FeedbackReply),
    "Status": (ranking_pb2.StatusRequest, ranking_pb2.StatusReply),
    "SetOnlineEnabled": (ranking_pb2.SetOnlineEnabledRequest, ranking_pb2.AdminReply),
    "RollbackOnline": (ranking_pb2.RollbackOnlineRequest, ranking_pb2.AdminReply),
    "StageCandidate": (ranking_pb2.StageCandidateRequest, ranking_pb2.AdminReply),
    "PromoteBase": (ranking_pb2.PromoteBaseRequest, ranking_pb2.AdminReply),
    "RollbackBase": (ranking_pb2.RollbackBaseRequest, ranking_pb2.AdminReply),
    "AbortCandidate": (ranking_pb2.AbortCandidateRequest, ranking_pb2.AdminReply),
    "CandidateReport": (ranking_pb2.CandidateReportRequest, ranking_pb2.CandidateReportReply),
    "SetExploration": (ranking_pb2.SetExplorationRequest, ranking_pb2.AdminReply),
}
ADMIN_RPCS = frozenset({"SetOnlineEnabled", "RollbackOnline", "StageCandidate", "PromoteBase",
                        "RollbackBase", "AbortCandidate", "CandidateReport", "SetExploration"})
MAX_DETAILS = 1_000  # characters of an error message sent back to the client
_ID_IN_LOG = 64  # characters of a caller's request id quoted in logs and messages

__all__ = [
    "ADMIN_RPCS", "MAX_DETAILS", "RPCS", "SERVICE", "GrpcContext", "add_ranker_to_server",
    "caller_metadata", "caller_peer", "rpc",
]


class GrpcContext(Protocol):
    """What the door needs of Serve's ``RayServegRPCContext`` (tests pass a fake)."""

    def set_code(self, code: grpc.StatusCode) -> None: ...

    def set_details(self, details: str) -> None: ...


def caller_metadata(grpc_context: Any) -> tuple[tuple[str, str | bytes], ...]:
    """The call's metadata (empty for a context that has none, e.g. a handle call)."""
    read = getattr(grpc_context, "invocation_metadata", None)
    try:
        return tuple(read()) if callable(read) else ()
    except Exception:  # a context that cannot say: no credential
        return ()


def caller_peer(grpc_context: Any) -> str | None:
    """The caller's address as gRPC names it ("ipv4:127.0.0.1:5000"), or None."""
    read = getattr(grpc_context, "peer", None)
    try:
        peer = read() if callable(read) else None
    except Exception:
        return None
    return peer if isinstance(peer, str) and peer else None


def add_ranker_to_server(servicer: Any, server: Any) -> None:
    """Serve's ``grpc_servicer_functions`` entry for ``freshrank.v1.Ranker``.

    The generated ``add_RankerServicer_to_server`` with no request deserializer: requests
    reach the ingress as bytes and the door decodes them.
    """
    handlers = {
        name: grpc.unary_unary_rpc_method_handler(
            getattr(servicer, name),
            request_deserializer=None,
            response_serializer=reply.SerializeToString,
        )
        for name, (_, reply) in RPCS.items()
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    add_registered = getattr(server, "add_registered_method_handlers", None)
    if add_registered is not None:  # grpcio >= 1.65
        add_registered(SERVICE, handlers)


def decode(request: Any, request_type: type[Message]) -> Message:
    """The request as a message: bytes are parsed, a message of the right type is kept.

    Raises:
        InvalidInput: bytes that are not a valid ``request_type``, or anything else.
    """
    if isinstance(request, request_type):
        return request
    if isinstance(request, (bytes, bytearray, memoryview)):
        try:
            return request_type.FromString(bytes(request))
        except DecodeError as error:
            raise InvalidInput(
                f"the request is not a valid {request_type.DESCRIPTOR.full_name}: {error}"
            ) from None
    raise InvalidInput(
        f"expected a {request_type.DESCRIPTOR.full_name}, got {type(request).__name__}"
    )


R = TypeVar("R", bound=Message)
Handler = Callable[[Any, Any, Any], Awaitable[R]]  # (self, value, grpc_context) -> reply


def rpc(
    parse: Callable[[Any, Any], Any] | None = None,
) -> Callable[[Handler[R]], Handler[R]]:
    """Decorate an ingress method named after its rpc (``Rank``, ``Feedback``, ``Status``).

    ``parse(self, message)`` turns the decoded message into what the handler takes (without
    it the handler gets the message). The handler keeps the signature
    ``(self, value, grpc_context)``: Serve passes the context by that name.
    """

    def decorate(handler: Handler[R]) -> Handler[R]:
        name = handler.__name__
        if name not in RPCS:
            raise TypeError(f"{name} is not an rpc of {SERVICE}: one of {', '.join(RPCS)}")
        request_type, reply_type = RPCS[name]

        @functools.wraps(handler)
        async def door(self: Any, request: Any, grpc_context: GrpcContext) -> R:
            request_id = ""
            try:
                authorize = getattr(self, "_authorize", None)
                if authorize is not None:
                    authorize(name, grpc_context)
                try:
                    message = decode(request, request_type)
                    request_id = str(getattr(message, "request_id", ""))[: _ID_IN_LOG + 1]
                    value = message if parse is None else parse(self, message)
                except FreshrankError:
                    raise
                except (ValueError, TypeError) as error:
                    raise InvalidInput(str(error)) from error
                return await handler(self, value, grpc_context)
            except Exception as error:  # the door: nothing leaves without a status
                code, details = answer(name, request_id, error)
            grpc_context.set_code(code)
            grpc_context.set_details(details)
            return reply_type()  # type: ignore[return-value]

        return door

    return decorate


def answer(rpc_name: str, request_id: str, error: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status and message a client gets for ``error``; logs what it does not expect."""
    cause = _cause(error)
    quoted = request_id[:_ID_IN_LOG] + ("..." if len(request_id) > _ID_IN_LOG else "")
    if isinstance(cause, FreshrankError):
        code = cause.grpc_status
        if not isinstance(code, grpc.StatusCode):
            code = grpc.StatusCode.INTERNAL
        if code is grpc.StatusCode.INTERNAL:
            logger.error("%s %r failed: %s", rpc_name, quoted, cause, exc_info=cause)
        return code, _short(str(cause))
    logger.error("%s %r failed unexpectedly", rpc_name, quoted, exc_info=cause)
    return grpc.StatusCode.INTERNAL, (
        f"{rpc_name} failed inside the server (request id {quoted!r}); "
        "the server log has the details"
    )


def _cause(error: BaseException) -> BaseException:
    """The error another deployment raised, out of Ray's ``RayTaskError`` wrapping."""
    seen = 0
    while isinstance(getattr(error, "cause", None), BaseException) and seen < 8:
        error = error.cause  # type: ignore[attr-defined]
        seen += 1
    return error


def _short(details: str) -> str:
    return details if len(details) <= MAX_DETAILS else details[: MAX_DETAILS - 3] + "..."
