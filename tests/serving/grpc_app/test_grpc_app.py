"""The Serve application, driven through a real gRPC channel on localhost.

One module-scoped system: a simulated log, Feast (local provider) applied and materialized,
a base model trained and promoted, the Serve app with its gRPC proxy and the online learner.
Every Rank call that may reach the learner carries the logged request time: the learner's
join window runs on event time, and a wall-clock request would close every logged one.
"""

from __future__ import annotations

import time

import grpc
import numpy as np
import pyarrow as pa
import pytest

from protos.freshrank.v1 import ranking_pb2 as pb
from tests.serve_system import System

pytestmark = pytest.mark.slow


def one_request(events: pa.Table, index: int) -> pa.Table:
    request_ids = events.column("request_id").unique()
    wanted = request_ids[index]
    return events.filter(pa.compute.equal(events.column("request_id"), wanted))


def rank_logged(system: System, request: pa.Table, request_id: str) -> pb.RankResponse:
    return system.client.rank(
        request_id,
        request.column("user_id")[0].as_py(),
        request.column("item_id").to_pylist(),
        request_time=request.column("ts")[0].as_py(),
    )


def feedback_for(request: pa.Table, request_id: str) -> pa.Table:
    index = request.schema.get_field_index("request_id")
    return request.set_column(index, "request_id", pa.array([request_id] * request.num_rows))


def test_rank_orders_every_candidate_by_final_score(system: System) -> None:
    request = one_request(system.events, 0)
    response = rank_logged(system, request, "order-1")
    returned = [item.item_id for item in response.items]
    assert sorted(returned) == sorted(request.column("item_id").to_pylist())
    scores = [item.score for item in response.items]
    assert scores == sorted(scores, reverse=True)
    assert all(0.0 < item.base_score < 1.0 for item in response.items)
    assert response.base_version == system.base_version
    assert response.request_id == "order-1"


def test_top_k_limits_the_answer(system: System) -> None:
    request = one_request(system.events, 1)
    response = system.client.rank(
        "topk-1",
        request.column("user_id")[0].as_py(),
        request.column("item_id").to_pylist(),
        top_k=3,
        request_time=request.column("ts")[0].as_py(),
    )
    assert len(response.items) == 3


def test_unknown_user_and_items_still_rank(system: System) -> None:
    when = system.events.column("ts")[0].as_py()
    response = system.client.rank("cold-1", "never-seen-user", ["new-a", "new-b"], request_time=when)
    assert {item.item_id for item in response.items} == {"new-a", "new-b"}
    assert all(np.isfinite(item.score) for item in response.items)


@pytest.mark.parametrize(
    "user, candidates, message",
    [
        ("", ["a"], "user_id is empty"),
        ("u", [], "candidate_item_ids is empty"),
        ("u", ["a", "a"], "candidate_item_ids[1] duplicates"),
    ],
)
def test_malformed_rank_gets_invalid_argument_with_the_reason(
    system: System, user: str, candidates: list[str], message: str
) -> None:
    with pytest.raises(grpc.RpcError) as error:
        system.client.rank("bad-1", user, candidates)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in error.value.details()


def test_malformed_feedback_gets_invalid_argument(system: System) -> None:
    request = feedback_for(one_request(system.events, 2), "bad-feedback")
    labels = request.column("label").to_numpy().copy()
    labels[0] = 7.0
    bad = request.set_column(request.schema.get_field_index("label"), "label", pa.array(labels))
    with pytest.raises(grpc.RpcError) as error:
        system.client.feedback(bad)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "events[0].label is 7.0" in error.value.details()


def test_feedback_is_learned_and_the_correction_reaches_serving(system: System) -> None:
    """Before any weights: base alone (ONLINE_ABSENT). After feedback: the correction."""
    first = rank_logged(system, one_request(system.events, 3), "probe-0")
    assert first.fallback
    assert first.fallback_reason == pb.FALLBACK_REASON_ONLINE_ABSENT
    assert first.online_version == ""
    assert all(item.score == item.base_score for item in first.items)
    accepted = 0
    for n in range(4, 80):
        request = one_request(system.events, n)
        request_id = f"learn-{n}"
        rank_logged(system, request, request_id)
        reply = system.client.feedback(feedback_for(request, request_id))
        assert not reply.rejected_reason, reply.rejected_detail
        accepted += reply.accepted
    assert accepted > 0
    deadline = time.monotonic() + 30
    response = None
    while time.monotonic() < deadline:
        response = rank_logged(system, one_request(system.events, 3), f"probe-{time.monotonic()}")
        if not response.fallback:
            break
        time.sleep(0.3)
    assert response is not None and not response.fallback, response.fallback_detail
    assert response.online_version
    assert any(abs(item.score - item.base_score) > 1e-9 for item in response.items)
    status = system.client.status()
    assert status.online_updates > 0
    # Status names the weights serving: these, or later ones the learner published since
    # (it goes on learning the feedback sent above; publish numbers only rise).
    served, now = response.online_version.rsplit("-", 1), status.online_version.rsplit("-", 1)
    assert now[0] == served[0] and int(now[1]) >= int(served[1]), (status.online_version, response.online_version)
    assert status.online_base_version == system.base_version


def test_withdrawn_correction_falls_back_to_the_base_and_says_why(system: System) -> None:
    from serving import app

    request = one_request(system.events, 90)
    app.set_online_enabled(system.settings, False)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            response = rank_logged(system, request, f"off-{time.monotonic()}")
            if response.fallback_reason == pb.FALLBACK_REASON_ONLINE_DISABLED:
                break
            time.sleep(0.2)
        assert response.fallback
        assert response.fallback_reason == pb.FALLBACK_REASON_ONLINE_DISABLED
        assert response.online_version == ""
        assert all(item.score == item.base_score for item in response.items)
    finally:
        app.set_online_enabled(system.settings, True)


def test_feedback_updates_the_live_item_counters_serving_reads(system: System) -> None:
    """A brand-new item's 1 h impressions reach the online store within seconds."""
    from feature_store.catalog import ITEM_FEATURES
    from feature_store.online import OnlineFeatureReader

    column = ITEM_FEATURES.index("item_imp_1h")
    reader = OnlineFeatureReader(system.settings.feature_store)
    try:
        for n in range(200, 400):
            request = one_request(system.events, n)
            items = request.column("item_id").to_pylist()
            before = reader.get("probe-user", items).items[:, column]
            if (before == 0).any():
                break
        new_item = items[int(np.flatnonzero(before == 0)[0])]
        request_id = f"fresh-{n}"
        rank_logged(system, request, request_id)
        system.client.feedback(feedback_for(request, request_id))
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            after = reader.get("probe-user", [new_item]).items[0, column]
            if after >= 1:
                break
            time.sleep(0.2)
        assert after >= 1, f"{new_item} still shows {after} impressions in the last hour"
    finally:
        reader.close()


def raw_call(
    system: System, method: str, payload: bytes, token: str | None = "", address: str = ""
) -> bytes:
    """One call with the request's bytes as given (no client-side serializer); with the
    system's token unless ``token`` is None (none) or another string."""
    metadata: tuple[tuple[str, str], ...] = (("application", system.app_name),)
    token = system.token if token == "" else token
    if token is not None:
        metadata += (("authorization", f"Bearer {token}"),)
    # No proxy for this channel: the suite's HTTP_PROXY (a dead loopback port) would catch a
    # dial of this host's own non-loopback address.
    options = [("grpc.enable_http_proxy", 0)] if address else []
    with grpc.insecure_channel(address or system.address, options=options) as channel:
        call = channel.unary_unary(f"/freshrank.v1.Ranker/{method}")
        return call(payload, metadata=metadata, timeout=10)


def test_feedback_with_an_out_of_range_event_time_names_the_field(system: System) -> None:
    from serving.client import feedback_request

    request = feedback_request(feedback_for(one_request(system.events, 5), "bad-time"))
    request.events[0].event_time.seconds = 253_402_300_800  # year 10000
    with pytest.raises(grpc.RpcError) as error:
        raw_call(system, "Feedback", request.SerializeToString())
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "events[0].event_time is out of range" in error.value.details()
    request.events[0].event_time.seconds, request.events[0].event_time.nanos = 1_700_000_000, -5
    with pytest.raises(grpc.RpcError) as error:
        raw_call(system, "Feedback", request.SerializeToString())
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "events[0].event_time is out of range" in error.value.details()


def test_rank_with_an_out_of_range_request_time_names_the_field(system: System) -> None:
    request = pb.RankRequest(request_id="bad-time", user_id="u", candidate_item_ids=["a", "b"])
    request.context.request_time.seconds = 253_402_300_800
    with pytest.raises(grpc.RpcError) as error:
        raw_call(system, "Rank", request.SerializeToString())
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "context.request_time is out of range" in error.value.details()
    assert "Traceback" not in error.value.details()


@pytest.mark.parametrize("method", ["Rank", "Feedback", "Status", "SetOnlineEnabled", "RollbackOnline"])
def test_bytes_that_are_not_a_protobuf_are_invalid_argument_and_the_server_keeps_answering(
    system: System, method: str
) -> None:
    for garbage in (b"\xff\xff\xff\xff", b"\x0a\x05ab"):
        with pytest.raises(grpc.RpcError) as error:
            raw_call(system, method, garbage)
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT, error.value.details()
        assert "is not a valid freshrank.v1." in error.value.details()
        assert "Traceback" not in error.value.details()
    status = pb.StatusReply.FromString(raw_call(system, "Status", b""))
    assert status.base_version == system.base_version
    request = one_request(system.events, 6)
    assert rank_logged(system, request, f"after-garbage-{method}").items


def test_status_is_always_ok(system: System) -> None:
    for _ in range(3):
        status = system.client.status()
        assert status.base_version == system.base_version
        assert status.feature_service
        assert status.requests_served >= status.requests_fallback >= 0


def test_feedback_and_admin_rpcs_need_the_token(system: System) -> None:
    from serving.client import feedback_request

    request = feedback_request(feedback_for(one_request(system.events, 7), "no-token"))
    calls = [
        ("Feedback", request.SerializeToString()),
        ("SetOnlineEnabled", pb.SetOnlineEnabledRequest(enabled=False, reason="r", actor="a").SerializeToString()),
        ("RollbackOnline", pb.RollbackOnlineRequest(reason="r", actor="a").SerializeToString()),
    ]
    for method, payload in calls:
        for token in (None, "wrong", system.token + "x"):
            with pytest.raises(grpc.RpcError) as error:
                raw_call(system, method, payload, token=token)
            assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED, (method, token)
            assert error.value.details().startswith(f"{method} needs a valid credential")
            assert system.token not in error.value.details()
    # Rank and Status stay open (serving.open_rpcs).
    rank = pb.RankRequest(request_id="open-1", user_id="u", candidate_item_ids=["a", "b"])
    assert pb.RankResponse.FromString(raw_call(system, "Rank", rank.SerializeToString(), token=None)).items
    status = pb.StatusReply.FromString(raw_call(system, "Status", b"", token=None))
    assert status.base_version == system.base_version


def test_callers_from_another_host_are_refused(system: System) -> None:
    """Serve binds the gRPC port on every interface (no option in 2.60); the ingress refuses
    peers that are not loopback while serving.host is. The test dials an address of this
    machine's own interface (192.0.2.2 here): the connection never leaves the host."""
    import socket

    import psutil

    own = sorted(
        address.address
        for addresses in psutil.net_if_addrs().values()
        for address in addresses
        if address.family == socket.AF_INET and not address.address.startswith("127.")
    )
    if not own:
        pytest.skip("this host has no non-loopback IPv4 address to dial")
    address = own[0]  # an address of this host's own interface: nothing leaves the machine
    rank = pb.RankRequest(request_id="remote-1", user_id="u", candidate_item_ids=["a"])
    for method, payload in (("Rank", rank.SerializeToString()), ("Status", b"")):
        with pytest.raises(grpc.RpcError) as error:
            raw_call(system, method, payload, address=f"{address}:{system.port}")
        assert error.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert f"{method} is served to this host only" in error.value.details()


def test_size_limits_and_the_clock_window_are_enforced_through_grpc(system: System) -> None:
    huge = pb.RankRequest(request_id="r" * 1_000_000, user_id="u", candidate_item_ids=["a"])
    with pytest.raises(grpc.RpcError) as error:
        raw_call(system, "Rank", huge.SerializeToString())
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "request_id is 1000000 bytes; the limit is 256" in error.value.details()
    assert len(error.value.details()) < 200
    ahead = pb.RankRequest(request_id="ahead", user_id="u", candidate_item_ids=["a"])
    ahead.context.request_time.seconds = int(time.time()) + 365 * 86400
    with pytest.raises(grpc.RpcError) as error:
        raw_call(system, "Rank", ahead.SerializeToString())
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "context.request_time is" in error.value.details()
    assert "ahead of the server clock" in error.value.details()
    ahead.context.request_time.seconds = 253_402_300_799  # 9999-12-31T23:59:59Z broke Status
    with pytest.raises(grpc.RpcError):
        raw_call(system, "Rank", ahead.SerializeToString())
    assert system.client.status().base_version == system.base_version
