"""Property-based fuzzing of every rpc through the real Serve app and a real gRPC channel.

Hypothesis builds requests of every type (Rank, Feedback with and without the token,
Status, the admin rpcs) with values from the edges of each field's type: empty and
over-long ids, any unicode, any uint32 top_k, any int64/int32 Timestamp, NaN and infinite
labels, any int32 position, too many attributes. Also raw random bytes per method. The
server may refuse (INVALID_ARGUMENT, UNAUTHENTICATED, FAILED_PRECONDITION, NOT_FOUND) but
never answers INTERNAL or UNKNOWN, and afterwards still ranks a valid request.

Deterministic: ``derandomize=True`` (the examples are a function of the test), bounded
``max_examples``, no deadline (a call's latency is the machine's, not the property's).
"""

from __future__ import annotations

import math

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protos.freshrank.v1 import ranking_pb2 as pb
from tests.serve_system import System

pytestmark = pytest.mark.slow

NEVER = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}
ALLOWED = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.NOT_FOUND,
}
FUZZ = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


# ------------------------------------------------------------------------ strategies

INT64 = st.integers(-(2**63), 2**63 - 1)
INT32 = st.integers(-(2**31), 2**31 - 1)
# Around the Timestamp range's edges, around now, and anywhere in int64.
SECONDS = st.one_of(
    INT64,
    st.integers(-62_135_596_801, -62_135_596_799),
    st.integers(253_402_300_798, 253_402_300_801),
    st.integers(1_600_000_000, 1_900_000_000),
)
TEXT = st.one_of(
    st.text(max_size=12),
    st.just(""),
    st.builds(lambda n, c: c * n, st.integers(250, 3_000), st.sampled_from("xé🙂\x00")),
)
TOKEN = st.sampled_from(["right", "wrong", "none"])


def timestamp(message, seconds: int, nanos: int) -> None:
    message.seconds = seconds
    message.nanos = nanos


@st.composite
def rank_requests(draw) -> pb.RankRequest:
    request = pb.RankRequest(
        request_id=draw(TEXT),
        user_id=draw(TEXT),
        candidate_item_ids=draw(st.lists(TEXT, max_size=8)),
        top_k=draw(st.integers(0, 2**32 - 1)),
    )
    if draw(st.booleans()):
        if draw(st.booleans()):
            timestamp(request.context.request_time, draw(SECONDS), draw(INT32))
        for key, value in draw(st.dictionaries(TEXT, TEXT, max_size=40)).items():
            request.context.attributes[key] = value
    return request


@st.composite
def feedback_requests(draw) -> pb.FeedbackRequest:
    request = pb.FeedbackRequest()
    for _ in range(draw(st.integers(0, 4))):
        event = request.events.add(
            request_id=draw(TEXT),
            user_id=draw(TEXT),
            item_id=draw(TEXT),
            label=draw(st.floats(width=32, allow_nan=True, allow_infinity=True)),
            position=draw(INT32),
        )
        if draw(st.integers(0, 4)):
            timestamp(event.event_time, draw(SECONDS), draw(INT32))
    return request


ADMIN = st.one_of(
    st.builds(pb.SetOnlineEnabledRequest, enabled=st.booleans(), reason=TEXT, actor=TEXT),
    st.builds(pb.RollbackOnlineRequest, to_version=TEXT, reason=TEXT, actor=TEXT),
)


# ------------------------------------------------------------------------------ calls


def call(system: System, method: str, payload: bytes, token: str) -> grpc.StatusCode:
    metadata: tuple[tuple[str, str], ...] = (("application", system.app_name),)
    if token != "none":
        secret = system.token if token == "right" else "not-the-token"
        metadata += (("authorization", f"Bearer {secret}"),)
    with grpc.insecure_channel(system.address) as channel:
        stub = channel.unary_unary(f"/freshrank.v1.Ranker/{method}")
        try:
            stub(payload, metadata=metadata, timeout=20)
        except grpc.RpcError as error:
            code = error.code()
            details = error.details() or ""
            assert code not in NEVER, f"{method} answered {code}: {details[:300]}"
            assert code in ALLOWED, f"{method} answered {code}: {details[:300]}"
            assert len(details) <= 1_000 and "Traceback" not in details
            return code
    return grpc.StatusCode.OK


def method_of(message) -> str:
    return {
        pb.RankRequest: "Rank",
        pb.FeedbackRequest: "Feedback",
        pb.StatusRequest: "Status",
        pb.SetOnlineEnabledRequest: "SetOnlineEnabled",
        pb.RollbackOnlineRequest: "RollbackOnline",
    }[type(message)]


def still_ranks(system: System) -> None:
    response = system.client.rank("after-fuzz", "u1", ["a", "b", "c"])
    assert [item.item_id for item in response.items] != []
    assert all(math.isfinite(item.score) for item in response.items)
    assert system.client.status().base_version == system.base_version


# ------------------------------------------------------------------------------ tests


@FUZZ
@given(request=st.one_of(rank_requests(), feedback_requests(), st.just(pb.StatusRequest()), ADMIN),
       token=TOKEN)
def test_no_request_of_any_type_gets_internal(system: System, request, token: str) -> None:
    method = method_of(request)
    code = call(system, method, request.SerializeToString(), token)
    if method in ("Feedback", "SetOnlineEnabled", "RollbackOnline") and token != "right":
        assert code == grpc.StatusCode.UNAUTHENTICATED


@FUZZ
@given(method=st.sampled_from(["Rank", "Feedback", "Status", "SetOnlineEnabled", "RollbackOnline"]),
       payload=st.binary(max_size=256))
def test_random_bytes_to_every_method_never_get_internal(
    system: System, method: str, payload: bytes
) -> None:
    call(system, method, payload, "right")


def test_the_server_still_answers_after_the_fuzz(system: System) -> None:
    system.client.set_online_enabled(True, reason="fuzz over", actor="test_fuzz")
    still_ranks(system)
