"""Poisoned feedback batches through a real gRPC channel: each refused with its reason,
counted, the weights bit-identical, and the next good batch learned.

One app (``conftest.shared_system``, shared with test_attacks_grpc.py, which runs first) learns from real users' logged requests
(ranked at the server's time, their logged labels as feedback). Then, between good
batches, the poisons of issue 15:

* NaN labels, event times from next year, and a message of another schema (the bytes of a
  ``RankRequest`` sent to ``Feedback``, and an older client's events without an event time)
  are refused at the ingress: ``INVALID_ARGUMENT`` naming the field, counted in
  ``Status.rejected_batches["invalid_argument"]``; the learner never sees them;
* unknown ids (a request never served, an item not shown in a served request) are
  rejected whole by the learner: ``rejected_reason`` ``unknown_id``, counted in
  ``Status.rejected_batches``;
* a label flood (every shown item "clicked", by real users, valid rows) is accepted by the
  join and refused mini-batch by mini-batch by the learner's click-flood check:
  ``Status.rejected_batches["label_flood"]``.

After each poison the learner's published snapshot (version and bytes) and its count of
learned batches are unchanged, and a good batch is learned right after.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest

from protos.freshrank.v1 import ranking_pb2 as pb
from serving.client import feedback_request
from tests.serve_system import FEEDBACK_SCHEMA, System, send_feedback

pytestmark = pytest.mark.slow


class Traffic:
    def __init__(self, system: System) -> None:
        self.system = system
        by_id: dict[str, tuple[str, dict[str, float]]] = {}
        for row in system.events.select(["request_id", "user_id", "item_id", "label"]).to_pylist():
            _, items = by_id.setdefault(row["request_id"], (row["user_id"], {}))
            items[row["item_id"]] = max(row["label"], items.get(row["item_id"], 0.0))
        self.requests = list(by_id.values())
        self.next = 0

    def served(self, n: int, tag: str, label: Any = None) -> list[dict]:
        """Rank ``n`` logged requests; their feedback rows (logged labels, or ``label``)."""
        rows = []
        for _ in range(n):
            user, items = self.requests[self.next % len(self.requests)]
            self.next += 1
            rid = f"{tag}-{self.next}"
            response = self.system.client.rank(rid, user, list(items))
            now = datetime.now(UTC)
            rows += [{"request_id": rid, "user_id": user, "item_id": item.item_id, "ts": now,
                      "label": float(items[item.item_id] if label is None else label),
                      "position": p} for p, item in enumerate(response.items)]
        return rows

    def good(self, n: int = 10, tag: str = "good") -> None:
        reply = send_feedback(self.system.client, self.served(n, tag))
        assert not reply.rejected_reason and reply.accepted > 0, reply


@pytest.fixture(scope="module")
def traffic(shared_system: System) -> Iterator[Traffic]:
    system = shared_system
    traffic = Traffic(system)
    # Enough honest examples that the click-flood check is armed (2,000 examples,
    # label_rate_min_events), and the layer serves.
    deadline = time.monotonic() + 120
    learner = _learner(system)
    while (learner.report.remote().result(timeout_s=20).examples_learned < 2_100
           or system.client.status().fallback):
        assert time.monotonic() < deadline, system.client.status().fallback_detail
        traffic.good(20, "warm")
    yield traffic


def _learner(system: System):  # noqa: ANN202
    from ray import serve

    return serve.get_deployment_handle("Learner", app_name=system.app_name)


def _state(traffic: Traffic) -> tuple[int, str, bytes]:
    """(batches learned, published version, its bytes), once the learner is idle."""
    time.sleep(1.2)  # max_batch_delay_s and the ticker: nothing waits to be learned
    snapshot = _learner(traffic.system).latest_snapshot.remote(None).result(timeout_s=20)
    updates = traffic.system.client.status().online_updates
    return updates, snapshot.version, bytes(snapshot.blob)


def _raw_feedback(system: System, payload: bytes) -> grpc.RpcError:
    metadata = (("application", system.app_name), ("authorization", f"Bearer {system.token}"))
    with grpc.insecure_channel(system.address) as channel:
        stub = channel.unary_unary("/freshrank.v1.Ranker/Feedback")
        with pytest.raises(grpc.RpcError) as caught:
            stub(payload, metadata=metadata, timeout=20)
    return caught.value


def _refused(traffic: Traffic, payload: bytes, field: str) -> None:
    error = _raw_feedback(traffic.system, payload)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert field in (error.details() or ""), error.details()


def _poisoned(traffic: Traffic, poison: Any, expect: Any, refused: bool = False) -> None:
    """Apply ``poison`` between two idle states; the weights must not move, the counters
    must show ``expect`` (and, when the ingress ``refused`` calls, a grown
    ``invalid_argument`` count); then a good batch must be learned."""
    status = traffic.system.client.status()
    rejected = dict(status.rejected_batches)
    before = _state(traffic)
    poison()
    after = _state(traffic)
    assert after == before, "a poisoned batch moved the weights"
    grown = {k: v - rejected.get(k, 0) for k, v in traffic.system.client.status().rejected_batches.items()}
    at_door = grown.pop("invalid_argument", 0)
    assert (at_door >= 1) if refused else (at_door == 0), grown
    assert {k: v for k, v in grown.items() if v} == expect
    traffic.good(10, "after-poison")
    assert _state(traffic)[0] > after[0], "learning stopped after a poisoned batch"


def test_nan_labels_are_refused_naming_the_field(traffic: Traffic) -> None:
    def poison() -> None:
        rows = traffic.served(2, "nan")
        for row in rows:
            row["label"] = float("nan")
        request = feedback_request(_table(rows))
        _refused(traffic, request.SerializeToString(), "events[0].label")

    _poisoned(traffic, poison, {}, refused=True)


def test_times_from_next_year_are_refused_and_do_not_stop_learning(traffic: Traffic) -> None:
    def poison() -> None:
        rows = traffic.served(2, "next-year")
        for row in rows:
            row["ts"] = datetime.now(UTC) + timedelta(days=365)
        _refused(traffic, feedback_request(_table(rows)).SerializeToString(),
                 "events[0].event_time")
        with pytest.raises(grpc.RpcError) as caught:
            traffic.system.client.rank("next-year-rank", "u", ["a", "b"],
                                       request_time=datetime.now(UTC) + timedelta(days=365))
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "request_time" in (caught.value.details() or "")

    _poisoned(traffic, poison, {}, refused=True)


def test_messages_of_another_schema_are_refused(traffic: Traffic) -> None:
    def poison() -> None:
        rank = pb.RankRequest(request_id="x" * 40, user_id="u", candidate_item_ids=["a", "b"])
        error = _raw_feedback(traffic.system, rank.SerializeToString())
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
        older = pb.FeedbackRequest(events=[pb.FeedbackEvent(
            request_id=row["request_id"], user_id=row["user_id"], item_id=row["item_id"],
            label=row["label"], position=row["position"]) for row in traffic.served(1, "old")])
        _refused(traffic, older.SerializeToString(), "events[0].event_time")

    _poisoned(traffic, poison, {}, refused=True)


def test_unknown_ids_are_rejected_whole_and_counted(traffic: Traffic) -> None:
    def poison() -> None:
        never = traffic.served(2, "unknown")
        for row in never:
            row["request_id"] = "never-served-" + row["request_id"]
        reply = send_feedback(traffic.system.client, never)
        assert reply.rejected_reason == "unknown_id" and reply.accepted == 0, reply
        assert "never served" in reply.rejected_detail
        shown = traffic.served(2, "unshown")
        shown[-1]["item_id"] = "an-item-nobody-was-shown"
        reply = send_feedback(traffic.system.client, shown)
        assert reply.rejected_reason == "unknown_id" and reply.accepted == 0, reply
        assert "was not served in request" in reply.rejected_detail

    _poisoned(traffic, poison, {"unknown_id": 2})


def test_a_label_flood_is_refused_by_the_learner(traffic: Traffic) -> None:
    batch = 64  # FAST_ONLINE batch_size: the flood fills whole mini-batches

    def poison() -> None:
        rows: list[dict] = []
        while len(rows) < 2 * batch:
            rows += traffic.served(1, "flood", label=1.0)
        reply = send_feedback(traffic.system.client, rows[: 2 * batch])
        # Valid rows of real users' requests: the join accepts them ...
        assert not reply.rejected_reason and reply.accepted == 2 * batch, reply

    # ... and the learner refuses both mini-batches they make.
    _poisoned(traffic, poison, {"label_flood": 2})


def _table(rows: list[dict]):  # noqa: ANN202
    import pyarrow as pa

    return pa.Table.from_pylist(rows, schema=FEEDBACK_SCHEMA)
