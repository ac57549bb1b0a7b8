"""Health, reflection v1, Prometheus metrics and request-tagged logs.

The unit part runs without Ray: the metrics hub scraped over HTTP, the health state, and
reflection v1 on Serve's own gRPC server class in this process. The last part starts the real
Serve application once (module fixture) and checks each through its ports.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import pathlib
import re
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any
from unittest.mock import Mock

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2 as v1alpha

from protos.freshrank.v1 import ranking_pb2 as pb
from serving import observability, reflection
from serving.health import HealthState
from serving.metrics_hub import MetricsHub, serve_metrics
from serving.observability import METRICS, RankerMetrics

# ------------------------------------------------------------------ helpers


def scrape(address: str) -> dict[str, float]:
    """``/metrics`` as {sample with labels: value} (``name{a="b"}`` keys)."""
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            samples[key] = float(value)
    return samples


def families(address: str) -> set[str]:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    return set(re.findall(r"^# TYPE (\S+) ", text, flags=re.M))


class FakeContext:
    def __init__(self) -> None:
        self._code: grpc.StatusCode | None = None
        self.details = ""

    def set_code(self, code: grpc.StatusCode) -> None:
        self._code = code

    def set_details(self, details: str) -> None:
        self.details = details

    def code(self) -> grpc.StatusCode | None:
        return self._code


def outcome(request_id: str, n: int, fallback: Any = None) -> Any:
    query = SimpleNamespace(request_id=request_id, item_ids=tuple(f"i{k}" for k in range(n)))
    return SimpleNamespace(query=query, fallback=fallback, online_version="" if fallback else "v1")


def fake_report(**changes: Any) -> Any:
    values = dict(
        watermark=(datetime.now(UTC) - timedelta(seconds=30)).isoformat(),
        pending_examples=5,
        pending_requests=2,
        examples_learned=640,
        published=3,
        feedback_rows_accepted=700,
        publish_latency_p50_s=0.4,
        publish_latency_p95_s=0.9,
        dropped_rows={"late": 4},
        rejected_batches={"label_rate": 1},
        rejected_rows={"label_rate": 50},
        extra={},
    )
    values.update(changes)
    return SimpleNamespace(**values)


# ------------------------------------------------------------------ metrics, no Ray


def test_the_hub_sums_replicas_and_exports_every_declared_name_over_http() -> None:
    from serving.ranking import Fallback

    now = [1_000.0]
    hub = MetricsHub(fake_report, online_ttl_s=900.0, clock=lambda: now[0])
    a, b = RankerMetrics("Ranker#a", clock=lambda: now[0]), RankerMetrics("Ranker#b", clock=lambda: now[0])
    a.observe_call("Rank", "OK", 0.0012)
    a.observe_rank(outcome("r1", 100))
    b.observe_call("Rank", "OK", 0.004)
    b.observe_call("Rank", "INVALID_ARGUMENT", 0.0001)
    b.observe_call("Status", "OK", 0.5)  # not a Rank: not counted
    b.observe_rank(outcome("r2", 10, Fallback(pb.FALLBACK_REASON_ONLINE_ABSENT, "none yet")))
    slot: Any = SimpleNamespace(published_at=990.0)
    hub.update(a.snapshot(slot))
    hub.update(b.snapshot(None))
    server = serve_metrics(hub, "127.0.0.1", 0)
    try:
        samples = scrape(server.address)
        assert families(server.address) == set(METRICS)
        assert samples['freshrank_rank_requests_total{code="OK"}'] == 2
        assert samples['freshrank_rank_requests_total{code="INVALID_ARGUMENT"}'] == 1
        assert samples["freshrank_rank_latency_seconds_count"] == 3
        assert samples['freshrank_rank_latency_seconds_bucket{le="0.002"}'] == 2
        assert samples['freshrank_rank_latency_seconds_bucket{le="+Inf"}'] == 3
        assert samples['freshrank_rank_fallback_total{reason="online_absent"}'] == 1
        assert samples['freshrank_online_weight_age_seconds{replica="Ranker#a"}'] == 10.0
        assert not any("Ranker#b" in key for key in samples)  # b has no weights
        assert samples["freshrank_online_weight_ttl_seconds"] == 900.0
        assert samples["freshrank_breaker_open"] == 0
        assert samples['freshrank_feedback_events_total{outcome="accepted",reason="joined"}'] == 700
        assert samples['freshrank_feedback_events_total{outcome="dropped",reason="late"}'] == 4
        assert samples['freshrank_feedback_events_total{outcome="rejected",reason="label_rate"}'] == 50
        assert samples['freshrank_feature_ttl_seconds{view="item_fresh"}'] == 30 * 86_400
        assert samples["freshrank_learner_lag_seconds"] == 0  # not reported yet
        # A replica that stops reporting is dropped; its counts stay in the sums.
        now[0] += observability.REPLICA_TTL_SECONDS + 1
        hub.update(a.snapshot(slot))
        later = scrape(server.address)
        assert later['freshrank_rank_requests_total{code="OK"}'] == 2
        assert later["freshrank_rank_latency_seconds_count"] == 3
    finally:
        server.stop()


def test_metrics_are_the_serving_rows_of_the_monitoring_list() -> None:
    listed = {}
    path = pathlib.Path(__file__).resolve().parents[2] / "infra" / "monitoring" / "metrics.txt"
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, kind, exporter = line.split()[:3]
            if exporter == "serving":
                listed[name] = kind
    assert listed == {name: kind for name, (kind, _) in METRICS.items()}


def test_lags_and_breaker_are_read_from_the_report_when_present() -> None:
    for breaker, wanted in (
        (None, 0.0),
        (SimpleNamespace(state="open"), 1.0),
        ({"state": "half_open"}, 1.0),
        (SimpleNamespace(state="closed"), 0.0),
    ):
        report = fake_report(breaker=breaker, extra={"learner_lag_s": 2.5}, event_log_lag_s=7.0)
        hub = MetricsHub(functools.partial(lambda r: r, report))
        values = {m.name: m.samples[0].value for m in hub.collect() if m.samples and not m.samples[0].labels}
        assert values["freshrank_breaker_open"] == wanted
        assert values["freshrank_learner_lag_seconds"] == 2.5
        assert values["freshrank_event_log_lag_seconds"] == 7.0


def test_a_taken_metrics_port_is_retried_then_logged_never_fatal(caplog: pytest.LogCaptureFixture) -> None:
    first = serve_metrics(MetricsHub(), "127.0.0.1", 0)
    assert first.port is not None
    try:
        with caplog.at_level(logging.ERROR, logger="serving.metrics_hub"):
            refused = serve_metrics(MetricsHub(), "127.0.0.1", first.port, retry_s=0)
        assert refused.address == "" and "not started" in caplog.text
        # A redeployed Learner waits for the old one to let go of the port.
        waiting = serve_metrics(MetricsHub(), "127.0.0.1", first.port, retry_s=30)
        assert waiting.address == ""
        first.stop()
        deadline = time.monotonic() + 10
        while waiting.port is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert waiting.port == first.port
        assert "freshrank_breaker_open" in scrape(waiting.address)
        waiting.stop()
    finally:
        first.stop()


def test_feature_staleness_comes_from_the_online_store(tmp_path: pathlib.Path) -> None:
    import sqlite3

    from feature_store.config import FeatureStoreConfig

    cfg = FeatureStoreConfig.from_dict({"workspace": tmp_path})
    cfg.online_store_path.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(cfg.online_store_path) as conn:
        conn.execute(f'CREATE TABLE "{cfg.project}_item_stats" (entity_key BLOB, event_ts timestamp)')
        conn.execute(
            f'INSERT INTO "{cfg.project}_item_stats" VALUES (?, ?)', (b"k", "2026-01-01 00:00:00")
        )
    now = datetime(2026, 1, 1, 0, 30, tzinfo=UTC).timestamp()
    hub = MetricsHub(feature_store=cfg, clock=lambda: now)
    samples = {
        (m.name, tuple(s.labels.values())): s.value for m in hub.collect() for s in m.samples
    }
    assert samples[("freshrank_feature_staleness_seconds", ("item_stats",))] == 1800


def test_the_observed_decorator_counts_codes_and_scopes_the_request_id() -> None:
    seen: list[str] = []

    class Ingress:
        def __init__(self) -> None:
            self._metrics = RankerMetrics("Ranker#x")

        @observability.observed
        async def Rank(self, request: Any, grpc_context: Any) -> str:  # noqa: N802
            observability.bind_request_id(request)
            seen.append(observability._REQUEST_ID.get())
            if request == "bad":
                grpc_context.set_code(grpc.StatusCode.INVALID_ARGUMENT)
            return "ok"

    ingress = Ingress()
    asyncio.run(ingress.Rank("req-1", grpc_context=FakeContext()))
    asyncio.run(ingress.Rank("bad", grpc_context=FakeContext()))
    assert seen == ["req-1", "bad"]
    assert observability._REQUEST_ID.get() == ""
    assert ingress._metrics.codes == {"OK": 1, "INVALID_ARGUMENT": 1}


def test_request_id_filter_tags_records_of_a_bound_request() -> None:
    record = logging.LogRecord("serving.x", logging.INFO, __file__, 1, "hello", (), None)

    async def inside() -> None:
        observability.bind_request_id("abc-1")
        observability.RequestIdFilter().filter(record)

    asyncio.run(inside())
    assert getattr(record, observability.REQUEST_ID_FIELD) == "abc-1"


# ------------------------------------------------------------------ health, no Ray


def test_health_answers_serving_not_serving_and_unknown() -> None:
    draining = [False]
    state = HealthState(lambda: True, draining=lambda: draining[0])
    for service in ("", "freshrank.v1.Ranker"):
        reply = state.check(health_pb2.HealthCheckRequest(service=service), FakeContext())
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    context = FakeContext()
    state.check(health_pb2.HealthCheckRequest(service="nope.Service"), context)
    assert context.code() == grpc.StatusCode.NOT_FOUND
    draining[0] = True
    reply = state.check(health_pb2.HealthCheckRequest(), FakeContext())
    assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING
    listed = state.list(health_pb2.HealthListRequest(), FakeContext())
    assert set(listed.statuses) == {"", "freshrank.v1.Ranker"}
    not_ready = HealthState(lambda: False, draining=lambda: False)
    assert not_ready.status("") == health_pb2.HealthCheckResponse.NOT_SERVING


def test_health_rpcs_never_collide_with_ranker_rpcs() -> None:
    """Serve routes by method name: a Health rpc named like a Ranker rpc would be misrouted."""
    from serving.deployments import Ranker
    from serving.ingress import RPCS

    health = {m.name for m in health_pb2.DESCRIPTOR.services_by_name["Health"].methods}
    assert health == {"Check", "List", "Watch"}
    assert not health & set(RPCS)
    for name in health:
        assert callable(getattr(Ranker.func_or_class, name))


def test_watch_sends_changes_and_ends_after_not_serving_on_drain() -> None:
    draining = [False]
    state = HealthState(lambda: True, draining=lambda: draining[0], poll_s=0.01)

    async def run() -> list[int]:
        statuses = []
        async for reply in state.watch(health_pb2.HealthCheckRequest(), FakeContext()):
            statuses.append(reply.status)
            draining[0] = True
        return statuses

    assert asyncio.run(asyncio.wait_for(run(), 5)) == [
        health_pb2.HealthCheckResponse.SERVING,
        health_pb2.HealthCheckResponse.NOT_SERVING,
    ]


def test_watch_streams_are_capped_per_replica() -> None:
    state = HealthState(lambda: True, draining=lambda: False, max_watches=0)
    context = FakeContext()

    async def run() -> list[Any]:
        return [r async for r in state.watch(health_pb2.HealthCheckRequest(), context)]

    assert asyncio.run(run()) == []
    assert context.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


# ------------------------------------------------------------------ reflection v1


def reflection_v1(channel: grpc.Channel, *requests: v1alpha.ServerReflectionRequest) -> list[Any]:
    """A minimal reflection v1 client: the v1 rpc with (wire-identical) v1alpha messages."""
    call = channel.stream_stream(
        reflection.METHOD,
        request_serializer=v1alpha.ServerReflectionRequest.SerializeToString,
        response_deserializer=v1alpha.ServerReflectionResponse.FromString,
    )
    return list(call(iter(requests), timeout=10))


def check_reflection_v1(channel: grpc.Channel, *, app: str | None = None) -> None:
    from google.protobuf import descriptor_pb2

    listed, found, unknown = reflection_v1(
        channel,
        v1alpha.ServerReflectionRequest(list_services=""),
        v1alpha.ServerReflectionRequest(file_containing_symbol="freshrank.v1.Ranker"),
        v1alpha.ServerReflectionRequest(file_containing_symbol="no.such.Symbol"),
    )
    names = {s.name for s in listed.list_services_response.service}
    assert {"freshrank.v1.Ranker", "grpc.health.v1.Health", reflection.SERVICE_NAME} <= names
    assert "ray.serve.RayServeAPIService" not in names
    files = [
        descriptor_pb2.FileDescriptorProto.FromString(b)
        for b in found.file_descriptor_response.file_descriptor_proto
    ]
    ranker = next(f for f in files if f.package == "freshrank.v1")
    assert {m.name for m in ranker.service[0].method} >= {"Rank", "Feedback", "Status"}
    assert unknown.error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]
    (own,) = reflection_v1(
        channel, v1alpha.ServerReflectionRequest(file_containing_symbol=reflection.SERVICE_NAME)
    )
    (v1_file,) = own.file_descriptor_response.file_descriptor_proto
    assert descriptor_pb2.FileDescriptorProto.FromString(v1_file).package == "grpc.reflection.v1"


def test_reflection_v1_on_serves_own_grpc_server_class() -> None:
    """Serve's gRPCGenericServer with the app's servicer list, as its proxy builds it."""
    from ray.serve._private.grpc_util import gRPCGenericServer

    from serving import app
    from serving.ingress import add_ranker_to_server

    def factory(service_method: str, streaming_type: Any) -> Any:
        async def unimplemented(request: Any, context: Any) -> bytes:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, service_method)
            return b""

        return unimplemented

    async def run() -> None:
        server = gRPCGenericServer(factory)
        port = server.add_insecure_port("127.0.0.1:0")
        servicer = Mock()  # as Serve passes: the proxy routes, the servicer is never called
        add_ranker_to_server(servicer, server)
        health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
        reflection.add_reflection_v1_to_server(servicer, server)
        assert app.SERVICERS[-1] == reflection.SERVICER
        await server.start()
        try:
            await asyncio.to_thread(
                lambda: check_reflection_v1(grpc.insecure_channel(f"127.0.0.1:{port}"))
            )
        finally:
            await server.stop(0)

    asyncio.run(run())


# ------------------------------------------------------------------ the running app


@dataclass
class Running:
    settings: Any
    grpc_address: str
    metrics_address: str
    events: Any
    app_name: str


@pytest.fixture(scope="module")
def running(ray_cluster, tmp_path_factory) -> Iterator[Running]:
    from serving import app
    from serving.settings import load_settings
    from tests.serve_system import FAST_BASE, TEST_SERVING, serving_simulator, trained_workspace

    workspace = tmp_path_factory.mktemp("observability")
    settings = load_settings(
        workspace=workspace,
        overrides={
            "serving": {**TEST_SERVING, "log_level": "DEBUG", "app_name": "freshrank-obs"},
            "base_model": FAST_BASE,
            "online_layer": {"emit": "on_arrival", "batch_size": 32, "max_batch_delay_s": 0.2},
        },
    )
    # The serving tests' log and base (tests.serve_system): trained once per session.
    trained = trained_workspace(settings, serving_simulator())
    from serving.auth import session_token

    with session_token():  # Feedback needs the ingress token; RankerClient sends it
        started = app.start(settings)
        with grpc.insecure_channel(started.grpc_address) as channel:
            grpc.channel_ready_future(channel).result(timeout=30)
        try:
            yield Running(
                settings,
                started.grpc_address,
                started.metrics_address,
                trained.replay,
                started.app_name,
            )
        finally:
            app.remove(settings.serving.app_name)


def first_request(events: Any, index: int) -> Any:
    import pyarrow.compute as pc

    wanted = events.column("request_id").unique()[index]
    return events.filter(pc.equal(events.column("request_id"), wanted))


def rank(running: Running, request: Any, request_id: str) -> pb.RankResponse:
    from serving.client import RankerClient

    with RankerClient(running.grpc_address, running.app_name) as client:
        return client.rank(
            request_id,
            request.column("user_id")[0].as_py(),
            request.column("item_id").to_pylist(),
            request_time=request.column("ts")[0].as_py(),
        )


@pytest.mark.slow
def test_health_check_on_the_serving_port(running: Running) -> None:
    with grpc.insecure_channel(running.grpc_address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", "freshrank.v1.Ranker"):
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as error:
            stub.Check(health_pb2.HealthCheckRequest(service="no.Such"), timeout=10)
        assert error.value.code() == grpc.StatusCode.NOT_FOUND
        listed = stub.List(health_pb2.HealthListRequest(), timeout=10)
        assert {s: r.status for s, r in listed.statuses.items()} == {
            "": health_pb2.HealthCheckResponse.SERVING,
            "freshrank.v1.Ranker": health_pb2.HealthCheckResponse.SERVING,
        }
        watch = stub.Watch(health_pb2.HealthCheckRequest(service=""), timeout=10)
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        watch.cancel()


@pytest.mark.slow
def test_reflection_v1_lists_and_describes_the_ranker(running: Running) -> None:
    with grpc.insecure_channel(running.grpc_address) as channel:
        check_reflection_v1(channel)


@pytest.mark.slow
def test_metrics_move_after_rank_and_feedback(running: Running) -> None:
    import pyarrow as pa

    from serving.client import RankerClient

    assert running.metrics_address.startswith("127.0.0.1:")
    ok, bad = 'freshrank_rank_requests_total{code="OK"}', 'freshrank_rank_requests_total{code="INVALID_ARGUMENT"}'
    accepted = 'freshrank_feedback_events_total{outcome="accepted",reason="joined"}'
    before = scrape(running.metrics_address)
    request = first_request(running.events, 0)
    for n in range(3):
        rank(running, request, f"metrics-{n}")
    index = request.schema.get_field_index("request_id")
    feedback = request.set_column(index, "request_id", pa.array(["metrics-0"] * request.num_rows))
    with RankerClient(running.grpc_address, running.app_name) as client:
        with pytest.raises(grpc.RpcError):
            client.rank("bad", "", ["a"])
        client.feedback(feedback)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        after = scrape(running.metrics_address)
        if (
            after.get(ok, 0) >= before.get(ok, 0) + 3
            and after.get(bad, 0) >= before.get(bad, 0) + 1
            and after.get(accepted, 0) > before.get(accepted, 0)
        ):
            break
        time.sleep(0.3)
    assert after.get(ok, 0) >= before.get(ok, 0) + 3, after
    assert after[bad] >= before.get(bad, 0) + 1
    assert after[accepted] > before.get(accepted, 0)
    assert after["freshrank_rank_latency_seconds_count"] >= before.get(
        "freshrank_rank_latency_seconds_count", 0
    ) + 4
    assert after['freshrank_rank_fallback_total{reason="online_absent"}'] >= 3
    assert after["freshrank_online_weight_ttl_seconds"] == running.settings.serving.online_ttl_seconds
    assert any(k.startswith("freshrank_feature_staleness_seconds{") for k in after)
    assert families(running.metrics_address) == set(METRICS)


@pytest.mark.slow
def test_a_rank_log_line_is_json_and_carries_its_request_id(running: Running) -> None:
    import ray

    request = first_request(running.events, 1)
    rank(running, request, "log-line-7f3a")
    node: Any = ray._private.worker._global_node
    logs_dir = pathlib.Path(node.get_logs_dir_path()) / "serve"
    deadline = time.monotonic() + 10
    found: dict[str, Any] | None = None
    while found is None and time.monotonic() < deadline:
        for path in logs_dir.glob("replica_*Ranker*.log"):
            for line in path.read_text(errors="replace").splitlines():
                if "log-line-7f3a" in line:
                    record = json.loads(line)
                    if record.get(observability.REQUEST_ID_FIELD) == "log-line-7f3a":
                        found = record
        time.sleep(0.2)
    assert found is not None, f"no JSON line with the request id in {logs_dir}"
    assert found["request_id"]  # Serve's own id for the call, beside the caller's
    assert found["deployment"].endswith("Ranker")
    assert found["application"] == running.app_name
    assert "Rank" in found["message"]


@pytest.mark.slow
def test_watch_says_not_serving_when_the_replica_drains(running: Running) -> None:
    """Last test of the module: it deletes the application."""
    from ray import serve

    statuses: list[int] = []
    channel = grpc.insecure_channel(running.grpc_address)
    watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(), timeout=60)
    first = next(watch)
    assert first.status == health_pb2.HealthCheckResponse.SERVING

    def drain() -> None:
        serve.delete(running.app_name, _blocking=True)

    deleting = threading.Thread(target=drain, daemon=True)
    deleting.start()
    try:
        for reply in watch:
            statuses.append(reply.status)
    except grpc.RpcError:
        pass
    finally:
        deleting.join(60)
        channel.close()
    assert statuses and statuses[-1] == health_pb2.HealthCheckResponse.NOT_SERVING, statuses
