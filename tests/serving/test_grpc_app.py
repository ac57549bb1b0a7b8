"""The Serve application, driven through a real gRPC channel on localhost.

One module-scoped system: a simulated log, Feast (local provider) applied and materialized,
a base model trained and promoted, the Serve app with its gRPC proxy and the online learner.
Every Rank call that may reach the learner carries the logged request time: the learner's
join window runs on event time, and a wall-clock request would close every logged one.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta

import grpc
import numpy as np
import pyarrow as pa
import pytest

from protos.freshrank.v1 import ranking_pb2 as pb
from serving.client import RankerClient
from serving.pipeline import slice_events
from serving.settings import Settings, load_settings

pytestmark = pytest.mark.slow


@dataclass
class System:
    settings: Settings
    client: RankerClient
    events: pa.Table  # events after the base's training data, for replay
    base_version: str
    address: str  # the gRPC proxy, for calls the typed client cannot make
    app_name: str


@pytest.fixture(scope="module")
def system(ray_cluster, tmp_path_factory) -> Iterator[System]:
    from feature_store.simulate import SimulatorConfig, simulate
    from serving import app
    from serving.pipeline import prepare_base

    workspace = tmp_path_factory.mktemp("grpc-app")
    settings = load_settings(
        workspace=workspace,
        overrides={
            "serving": {"grpc_port": 0, "http_port": 0, "weight_poll_seconds": 0.2},
            "base_model": {"train_days": 2, "epochs": 1, "min_gain_vs_constant": -1.0},
            "online_layer": {
                "emit": "on_arrival",
                "batch_size": 64,
                "max_batch_delay_s": 0.2,
                "publish_every_batches": 1,
                "publish_every_s": 0.2,
                "readiness_min_examples": 64,
                "readiness_window": 2_000,
                "readiness_tolerance": 10.0,
                "readiness_auc_tolerance": 1.0,
            },
        },
    )
    events = simulate(
        SimulatorConfig(seed=3, days=4, impressions_per_day=4_000, n_users=400, items_per_day=120)
    )
    start = events.column("ts")[0].as_py()
    as_of = (start + timedelta(days=3)).replace(hour=0, minute=0, second=0, microsecond=0)
    base = prepare_base(settings, events, as_of, backend="local")
    running = app.start(settings)
    client = RankerClient(running.grpc_address, running.app_name)
    client.wait_ready()
    try:
        yield System(
            settings,
            client,
            slice_events(events, as_of, None),
            base.version,
            running.grpc_address,
            running.app_name,
        )
    finally:
        client.close()
        app.stop()


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
    assert status.online_version == response.online_version
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


def raw_call(system: System, method: str, payload: bytes) -> bytes:
    """One call with the request's bytes as given (no client-side serializer)."""
    with grpc.insecure_channel(system.address) as channel:
        call = channel.unary_unary(f"/freshrank.v1.Ranker/{method}")
        return call(payload, metadata=(("application", system.app_name),), timeout=10)


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


@pytest.mark.parametrize("method", ["Rank", "Feedback", "Status"])
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
