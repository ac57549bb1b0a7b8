"""The ingress's one door, without Ray: every failure leaves with a status, never a traceback."""

from __future__ import annotations

import asyncio
import inspect
import logging
import os

import grpc
import pytest

from protos.errors import FreshrankError, InvalidInput, Unavailable
from protos.freshrank.v1 import ranking_pb2 as pb
from serving.ingress import MAX_DETAILS, RPCS, SERVICE, add_ranker_to_server, rpc


class Context:
    """What Serve's ``RayServegRPCContext`` records."""

    def __init__(self) -> None:
        self.code: grpc.StatusCode | None = None
        self.details: str | None = None

    def set_code(self, code: grpc.StatusCode) -> None:
        self.code = code

    def set_details(self, details: str) -> None:
        self.details = details


class Remote(Exception):
    """Stands in for Ray's ``RayTaskError``: its text is a remote traceback, ``cause`` the error."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(f"Traceback (most recent call last):\n  File \"/srv/x.py\", pid={os.getpid()}")
        self.cause = cause


def parse_rank(service: Service, request: pb.RankRequest) -> str:
    if not request.user_id:
        raise ValueError("user_id is empty")
    if request.user_id == "typed":
        raise TypeError("user_id has the wrong type")
    return request.user_id


class Service:
    def __init__(self, fail: BaseException | None = None) -> None:
        self.fail = fail
        self.seen: list[object] = []

    @rpc(parse=parse_rank)
    async def Rank(self, user: str, grpc_context: Context) -> pb.RankResponse:
        self.seen.append(user)
        if self.fail is not None:
            raise self.fail
        return pb.RankResponse(request_id=f"ranked {user}")

    @rpc()
    async def Status(self, request: pb.StatusRequest, grpc_context: Context) -> pb.StatusReply:
        self.seen.append(request)
        if self.fail is not None:
            raise self.fail
        return pb.StatusReply(base_version="b1")


def call(service: Service, method: str, request: object) -> tuple[object, Context]:
    context = Context()
    reply = asyncio.run(getattr(service, method)(request, grpc_context=context))
    return reply, context


def rank_request(user: str = "u1") -> pb.RankRequest:
    return pb.RankRequest(request_id="r-7", user_id=user, candidate_item_ids=["a"])


def test_a_good_request_reaches_the_handler_as_a_message_or_as_bytes() -> None:
    for request in (rank_request(), rank_request().SerializeToString()):
        reply, context = call(Service(), "Rank", request)
        assert reply == pb.RankResponse(request_id="ranked u1")
        assert context.code is None


@pytest.mark.parametrize("garbage", [b"\xff\xff\xff", b"\x0a\x05ab", b"\x12\x02\xc3\x28"])
def test_bytes_that_are_not_a_protobuf_are_invalid_argument(garbage: bytes) -> None:
    service = Service()
    reply, context = call(service, "Rank", garbage)
    assert context.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid freshrank.v1.RankRequest" in (context.details or "")
    assert reply == pb.RankResponse() and service.seen == []


def test_a_request_of_another_type_is_invalid_argument() -> None:
    _, context = call(Service(), "Rank", pb.StatusRequest())
    assert context.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "expected a freshrank.v1.RankRequest" in (context.details or "")


@pytest.mark.parametrize("user, message", [("", "user_id is empty"), ("typed", "user_id has the wrong type")])
def test_value_and_type_errors_while_parsing_are_invalid_argument(user: str, message: str) -> None:
    service = Service()
    _, context = call(service, "Rank", rank_request(user))
    assert context.code == grpc.StatusCode.INVALID_ARGUMENT
    assert context.details == message
    assert service.seen == []


@pytest.mark.parametrize(
    "error, code",
    [
        (Unavailable("no base yet"), grpc.StatusCode.UNAVAILABLE),
        (InvalidInput("events[0].label is 7"), grpc.StatusCode.INVALID_ARGUMENT),
        (Remote(Unavailable("no base yet")), grpc.StatusCode.UNAVAILABLE),
    ],
)
def test_a_freshrank_error_from_the_handler_keeps_its_status_and_message(
    error: Exception, code: grpc.StatusCode
) -> None:
    _, context = call(Service(fail=error), "Status", pb.StatusRequest())
    assert context.code == code
    expected = error.cause if isinstance(error, Remote) else error
    assert context.details == str(expected)


@pytest.mark.parametrize(
    "error",
    [
        ValueError("a bug deep inside, in /srv/freshrank/serving/ranking.py"),
        KeyError("x"),
        Remote(RuntimeError(f"pid {os.getpid()} in /srv/x.py")),
        FreshrankError("a deliberate internal error"),
    ],
)
def test_anything_else_is_internal_logged_with_the_request_id_and_told_briefly(
    error: Exception, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="serving.ingress"):
        reply, context = call(Service(fail=error), "Rank", rank_request())
    assert context.code == grpc.StatusCode.INTERNAL
    details = context.details or ""
    if isinstance(error, FreshrankError):
        assert details == "a deliberate internal error"
    else:
        assert details.startswith("Rank failed inside the server (request id 'r-7')")
    for leak in ("Traceback", "/srv", ".py", str(os.getpid())):
        assert leak not in details
    assert reply == pb.RankResponse()
    assert any("r-7" in record.getMessage() and record.exc_info for record in caplog.records)


def test_a_long_message_is_cut_short() -> None:
    _, context = call(Service(fail=InvalidInput("x" * 10_000)), "Status", pb.StatusRequest())
    assert context.code == grpc.StatusCode.INVALID_ARGUMENT
    assert len(context.details or "") == MAX_DETAILS


def test_cancellation_is_not_swallowed() -> None:
    with pytest.raises(asyncio.CancelledError):
        call(Service(fail=asyncio.CancelledError()), "Status", pb.StatusRequest())


def test_the_door_keeps_the_signature_serve_reads() -> None:
    for method in (Service.Rank, Service.Status):
        assert inspect.iscoroutinefunction(method)
        assert "grpc_context" in inspect.signature(method).parameters
    assert Service.Rank.__name__ == "Rank"


def test_only_rpcs_of_the_service_can_be_decorated() -> None:
    with pytest.raises(TypeError, match="Rerank is not an rpc of freshrank.v1.Ranker"):

        @rpc()
        async def Rerank(self: object, request: object, grpc_context: Context) -> pb.StatusReply:
            return pb.StatusReply()


def test_the_table_covers_every_rpc_of_the_service_with_its_types() -> None:
    service = pb.DESCRIPTOR.services_by_name["Ranker"]
    assert SERVICE == service.full_name
    assert set(RPCS) == {method.name for method in service.methods}
    for method in service.methods:
        request, reply = RPCS[method.name]
        assert request.DESCRIPTOR is method.input_type
        assert reply.DESCRIPTOR is method.output_type


def test_every_rpc_of_the_ingress_goes_through_the_door() -> None:
    from serving.deployments import Ranker

    ingress = Ranker.func_or_class
    for name in RPCS:
        method = getattr(ingress, name)
        while getattr(method, "__observed__", False):  # serving.observability.observed, outside
            method = method.__wrapped__
        assert method.__code__ is not method.__wrapped__.__code__, f"{name} bypasses the door"
        assert method.__code__.co_name == "door"


def test_the_registered_servicer_hands_raw_bytes_to_the_door() -> None:
    """A real gRPC server with the servicer Serve registers: garbage is INVALID_ARGUMENT."""

    class Servicer(Service):
        @rpc()
        async def Feedback(
            self, request: pb.FeedbackRequest, grpc_context: Context
        ) -> pb.FeedbackReply:
            return pb.FeedbackReply(accepted=len(request.events))

        @rpc()
        async def SetOnlineEnabled(self, request: object, grpc_context: Context) -> pb.AdminReply:
            return pb.AdminReply()

        @rpc()
        async def RollbackOnline(self, request: object, grpc_context: Context) -> pb.AdminReply:
            return pb.AdminReply()

        @rpc()
        async def StageCandidate(self, request: object, grpc_context: Context) -> pb.AdminReply:
            return pb.AdminReply()

        @rpc()
        async def PromoteBase(self, request: object, grpc_context: Context) -> pb.AdminReply:
            return pb.AdminReply()

        @rpc()
        async def RollbackBase(self, request: object, grpc_context: Context) -> pb.AdminReply:
            return pb.AdminReply()

        @rpc()
        async def AbortCandidate(self, request: object, grpc_context: Context) -> pb.AdminReply:
            return pb.AdminReply()

        @rpc()
        async def CandidateReport(self, request: object, grpc_context: Context) -> pb.CandidateReportReply:
            return pb.CandidateReportReply()

        @rpc()
        async def SetExploration(self, request: object, grpc_context: Context) -> pb.AdminReply:
            return pb.AdminReply()

    async def scenario() -> list[tuple[grpc.StatusCode, str]]:
        server = grpc.aio.server()
        add_ranker_to_server(Servicer(), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        seen = []
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                raw = channel.unary_unary(f"/{SERVICE}/Rank")
                for payload in (b"\xff\xff\xff", rank_request().SerializeToString()):
                    try:
                        answer = await raw(payload)
                        seen.append((grpc.StatusCode.OK, pb.RankResponse.FromString(answer).request_id))
                    except grpc.aio.AioRpcError as error:
                        seen.append((error.code(), error.details() or ""))
        finally:
            await server.stop(None)
        return seen

    (bad_code, bad_details), good = asyncio.run(scenario())
    assert bad_code == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid freshrank.v1.RankRequest" in bad_details
    assert good == (grpc.StatusCode.OK, "ranked u1")


class CallerContext(Context):
    def __init__(self, metadata=(), peer="ipv4:127.0.0.1:5000") -> None:
        super().__init__()
        self._metadata = tuple(metadata)
        self._peer = peer

    def invocation_metadata(self):
        return self._metadata

    def peer(self) -> str:
        return self._peer


class Guarded(Service):
    """A service with the Ranker's ``_authorize`` step (token + loopback peers)."""

    def __init__(self) -> None:
        super().__init__()
        from serving.auth import AccessPolicy, PeerPolicy

        self.access = AccessPolicy("tok", frozenset({"Rank"}))
        self.peers = PeerPolicy.for_host("127.0.0.1")

    def _authorize(self, name: str, grpc_context: object) -> None:
        from serving.ingress import caller_metadata, caller_peer

        self.peers.check(name, caller_peer(grpc_context))
        self.access.check(name, caller_metadata(grpc_context))


def guarded_call(method: str, request: object, context: Context) -> tuple[object, Context, Guarded]:
    service = Guarded()
    reply = asyncio.run(getattr(service, method)(request, grpc_context=context))
    return reply, context, service


def test_the_door_asks_who_calls_before_reading_the_request() -> None:
    _, context, service = guarded_call("Status", b"\xff\xff", CallerContext())
    assert context.code == grpc.StatusCode.UNAUTHENTICATED
    assert context.details.startswith("Status needs a valid credential")
    assert service.seen == []
    _, context, service = guarded_call(
        "Status", pb.StatusRequest(), CallerContext((("authorization", "Bearer tok"),))
    )
    assert context.code is None and len(service.seen) == 1
    _, context, _ = guarded_call(
        "Status", pb.StatusRequest(), CallerContext((("authorization", "Bearer nope"),))
    )
    assert context.code == grpc.StatusCode.UNAUTHENTICATED


def test_rank_is_open_but_only_to_this_host() -> None:
    reply, context, _ = guarded_call("Rank", rank_request(), CallerContext())
    assert context.code is None and reply.request_id == "ranked u1"
    _, context, service = guarded_call(
        "Rank", rank_request(), CallerContext(peer="ipv4:192.0.2.2:40000")
    )
    assert context.code == grpc.StatusCode.PERMISSION_DENIED
    assert "Rank is served to this host only" in context.details
    assert service.seen == []
    _, context, _ = guarded_call("Rank", rank_request(), CallerContext(peer="ipv6:[::1]:40000"))
    assert context.code is None


def test_a_huge_request_id_is_quoted_short_in_an_internal_answer() -> None:
    service = Service(fail=RuntimeError("boom"))
    request = pb.RankRequest(request_id="x" * 100_000, user_id="u", candidate_item_ids=["a"])
    context = Context()
    asyncio.run(service.Rank(request, grpc_context=context))
    assert context.code == grpc.StatusCode.INTERNAL
    assert len(context.details) < 300
