"""Nothing accepted is lost: kill the learner, kill a ranker replica, restart the whole app.

One module-scoped system (the serving tests' simulated log, Feast applied, a base trained:
``tests.serve_system.trained_workspace``, copied; the real Serve app with its gRPC proxy). Requests carry the server's own time (no ``request_time``), feedback
the wall clock, so the join window (10 minutes) is open throughout. Every gRPC call goes
through ``serving.client.RankerClient`` via ``_client``; the learner's counters are read
through its deployment handle. Kills are SIGKILL of the replica's pid (read from its log
directory's ``writer.json``); Serve starts a new replica.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from serving.client import RankerClient
from serving.served_log import feedback_dir, is_locked, served_root
from serving.settings import Settings, load_settings

pytestmark = pytest.mark.slow

RECOVERY_S = 60.0


@dataclass
class System:
    settings: Settings
    client: RankerClient
    address: str
    requests: list[pa.Table]  # one logged request each: user and candidates
    next_request: int = 0
    accepted: int = 0  # every event any Feedback reply called accepted, this module
    ranked: dict[str, list[str]] = field(default_factory=dict)  # request id -> items shown
    responses: dict[str, Any] = field(default_factory=dict)
    labels: dict[tuple[str, str], float] = field(default_factory=dict)

    def take(self, n: int) -> list[pa.Table]:
        got = self.requests[self.next_request : self.next_request + n]
        self.next_request += n
        assert len(got) == n, "the simulated log ran out of requests"
        return got


def _client(address: str, app_name: str) -> RankerClient:
    client = RankerClient(address, app_name, timeout_s=20.0)
    client.wait_ready()
    return client


@pytest.fixture(scope="module")
def system(ray_cluster, tmp_path_factory) -> Iterator[System]:
    from serving import app
    from tests.serve_system import FAST_BASE, TEST_SERVING, serving_simulator, trained_workspace

    workspace = tmp_path_factory.mktemp("durability")
    settings = load_settings(
        workspace=workspace,
        overrides={
            "serving": TEST_SERVING,
            "base_model": FAST_BASE,
            "online_layer": {
                "emit": "on_arrival",
                "join_window_s": 600.0,
                "batch_size": 32,
                "max_batch_delay_s": 0.2,
                "publish_every_batches": 1,
                "publish_every_s": 0.2,
                "readiness_min_examples": 32,
                "readiness_window": 2_000,
                "readiness_tolerance": 10.0,
                "readiness_auc_tolerance": 1.0,
            },
        },
    )
    # The serving tests' log and base (tests.serve_system), trained once per session: 390
    # logged requests after the base's data, of which this module takes about 100.
    late = trained_workspace(settings, serving_simulator()).replay
    ids = late.column("request_id").unique().to_pylist()
    by_id = {rid: late.filter(pc.equal(late.column("request_id"), rid)) for rid in ids[:400]}
    from serving.auth import session_token

    with session_token():  # Feedback needs the ingress token; the client sends it
        running = app.start(settings)
        client = _client(running.grpc_address, running.app_name)
        system = System(settings, client, running.grpc_address, list(by_id.values()))
        try:
            yield system
        finally:
            system.client.close()
            app.remove(settings.serving.app_name)


# ---------------------------------------------------------------------------- helpers


def _rank(system: System, requests: list[pa.Table], tag: str) -> list[str]:
    ids = []
    for i, request in enumerate(requests):
        rid = f"{tag}-{i}"
        response = system.client.rank(
            rid, request.column("user_id")[0].as_py(), request.column("item_id").to_pylist()
        )
        system.ranked[rid] = [item.item_id for item in response.items]
        system.responses[rid] = response
        ids.append(rid)
    return ids


def _feedback(system: System, request_ids: list[str], requests: list[pa.Table]) -> int:
    """One event per shown item (the logged label), one Feedback call per request; every
    call must be accepted whole. Returns the events accepted."""
    accepted = 0
    for rid, request in zip(request_ids, requests, strict=True):
        labels = dict(zip(request.column("item_id").to_pylist(),
                          request.column("label").to_pylist(), strict=True))
        shown = system.ranked[rid]
        now = datetime.now(UTC)
        user = request.column("user_id")[0].as_py()
        table = pa.table({
            "request_id": [rid] * len(shown),
            "user_id": [user] * len(shown),
            "item_id": shown,
            "ts": pa.array([now] * len(shown), pa.timestamp("us", tz="UTC")),
            "label": pa.array([float(labels[i]) for i in shown], pa.float32()),
            "position": pa.array(list(range(len(shown))), pa.int32()),
        })
        reply = system.client.feedback(table)
        assert reply.rejected_reason == "", (rid, reply.rejected_reason, reply.rejected_detail)
        assert reply.accepted == len(shown), reply
        accepted += reply.accepted
        for item in shown:
            system.labels[(rid, item)] = float(labels[item])
    system.accepted += accepted
    return accepted


def _learner_handle(system: System):
    from ray import serve

    return serve.get_deployment_handle("Learner", app_name=system.settings.serving.app_name)


def _durability(system: System, timeout_s: float = RECOVERY_S) -> dict[str, int]:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return _learner_handle(system).durability.remote().result(timeout_s=10)
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def _wait_for(check: Callable[[], bool], timeout_s: float = RECOVERY_S, what: str = "") -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.3)


def _writer_pid(directory: Path) -> int:
    return int(json.loads((directory / "writer.json").read_text())["pid"])


def _learner_pid(system: System) -> int:
    return _writer_pid(feedback_dir(system.settings.workspace))


def _live_ranker_dirs(system: System) -> list[Path]:
    """Replica logs held by a live writer that has said who it is (a replica takes the lock,
    then writes ``writer.json``: a starting one may hold the first without the second)."""
    root = served_root(system.settings.workspace)
    return [d for d in root.iterdir() if d.is_dir() and is_locked(d) and (d / "writer.json").exists()]


def _all_learned(system: System, expected: int) -> dict[str, int]:
    state: dict[str, int] = {}

    def done() -> bool:
        state.update(_durability(system))
        return state["accepted"] == expected and state["pending"] == 0

    _wait_for(done, what=f"learned == accepted == {expected}")
    return state


def _check_counts(state: dict[str, int], expected: int) -> None:
    assert state["accepted"] == expected
    assert state["learned"] + state["pending"] == state["accepted"]
    assert state["replay_lost"] == 0


# ------------------------------------------------------------------------------ the tests


def test_killing_the_learner_loses_no_accepted_event(system: System) -> None:
    requests = system.take(40)
    ids = _rank(system, requests, "kill-learner")
    _feedback(system, ids[:30], requests[:30])
    before = _durability(system)
    _check_counts(before, system.accepted)

    old = _learner_pid(system)
    killed_at = time.monotonic()
    os.kill(old, signal.SIGKILL)
    _wait_for(lambda: _learner_pid(system) != old, what="a new learner replica")
    after = _durability(system)
    print(f"learner SIGKILL: back in {time.monotonic() - killed_at:.1f} s; before {before}; "
          f"after {after}")
    _check_counts(after, system.accepted)
    # What the restored snapshot covers plus what was replayed is everything accepted.
    assert after["restored"] + after["replayed"] == system.accepted

    # Feedback for requests served before the kill still joins (not unknown_id).
    _feedback(system, ids[30:], requests[30:])
    _check_counts(_all_learned(system, system.accepted), system.accepted)


def test_killing_a_ranker_replica_keeps_what_it_acknowledged(system: System) -> None:
    requests = system.take(20)
    ids = _rank(system, requests, "kill-ranker")  # acknowledged, never given feedback yet
    (victim,) = _live_ranker_dirs(system)
    pid = _writer_pid(victim)

    failures: list[str] = []
    stop = threading.Event()
    load_requests = system.take(5)

    def light_load() -> None:
        i = 0
        with _client(system.address, system.settings.serving.app_name) as client:
            while not stop.is_set():
                request = load_requests[i % len(load_requests)]
                try:
                    client.rank(f"load-{i}", request.column("user_id")[0].as_py(),
                                request.column("item_id").to_pylist())
                except grpc.RpcError as error:
                    failures.append(error.code().name)
                i += 1
                time.sleep(0.05)

    loader = threading.Thread(target=light_load, daemon=True)
    loader.start()
    try:
        time.sleep(0.5)
        killed_at = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        _wait_for(lambda: any(_writer_pid(d) != pid for d in _live_ranker_dirs(system)),
                  what="a new ranker replica")
        probe = system.take(1)
        _wait_for(lambda: _try_rank(system, probe[0]), what="Rank answering again")
        recovered = time.monotonic() - killed_at
    finally:
        stop.set()
        loader.join(timeout=10)
    print(f"ranker SIGKILL under light load (20 calls/s): Rank again after {recovered:.1f} s, "
          f"{len(failures)} failed calls ({sorted(set(failures))})")
    _feedback(system, ids, requests)  # joins: the learner read the dead replica's log
    _check_counts(_all_learned(system, system.accepted), system.accepted)


def _try_rank(system: System, request: pa.Table) -> bool:
    try:
        system.client.rank(f"probe-{time.monotonic_ns()}", request.column("user_id")[0].as_py(),
                           request.column("item_id").to_pylist())
        return True
    except grpc.RpcError:
        return False


def test_restarting_the_whole_app_loses_no_accepted_event(system: System) -> None:
    from serving import app

    requests = system.take(30)
    ids = _rank(system, requests, "restart")
    _feedback(system, ids[:20], requests[:20])
    _check_counts(_durability(system), system.accepted)

    system.client.close()
    stopped_at = time.monotonic()
    app.stop()
    running = app.start(system.settings)
    system.client = _client(running.grpc_address, running.app_name)
    system.address = running.grpc_address
    after = _durability(system)
    print(f"whole app restart: {time.monotonic() - stopped_at:.1f} s; after {after}")
    _check_counts(after, system.accepted)
    assert after["restored"] + after["replayed"] == system.accepted

    _feedback(system, ids[20:], requests[20:])  # served before the restart: still joins
    _check_counts(_all_learned(system, system.accepted), system.accepted)


def test_the_served_log_holds_what_rank_and_feedback_saw(system: System) -> None:
    from feature_store.event_log import read_event_log
    from serving.served_events import compact_served_log

    settings = system.settings
    compact_served_log(settings.workspace, settings.feature_store.events_dir,
                       settings.online_layer.join_window_s, close_all=True)
    log = read_event_log(settings.feature_store.events_dir)
    rows = {(r["request_id"], r["item_id"]): r for r in log.to_pylist()
            if r["request_id"] in system.responses}
    expected = {(rid, item.item_id): (position, item, response)
                for rid, response in system.responses.items()
                for position, item in enumerate(response.items)}
    assert set(rows) == set(expected)
    for key, (position, item, response) in expected.items():
        row = rows[key]
        assert row["position"] == position
        assert row["base_version"] == response.base_version
        assert row["online_version"] == response.online_version
        assert row["final_score"] == pytest.approx(item.score, rel=1e-5)
        assert row["base_score"] == pytest.approx(item.base_score, rel=1e-5)
        assert (row["fallback_reason"] != "") == response.fallback
        assert row["label"] == pytest.approx(system.labels.get(key, 0.0))
