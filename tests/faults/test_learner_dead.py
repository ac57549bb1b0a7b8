"""The Learner replica dies while traffic flows: serving goes on, falls back at the TTL,
recovers when Serve restarts the learner, and nothing acknowledged is lost.

One app (``tests.serve_system.running_system``) with a short ``online_ttl_seconds``. Real
users' logged requests are ranked at the server's time and given their logged labels as
feedback, so the learner publishes well within the TTL. Then the Learner replica's process
(its pid from Ray's actor table, checked against the pid its feedback log's lock records)
is killed with SIGKILL, and only ``Rank`` traffic flows: every call must still answer,
first with the last installed weights, then base-alone with ``FALLBACK_REASON_ONLINE_STALE``
once they are older than the TTL. Serve restarts the learner; with feedback flowing again
the layer serves again, and the durability counters account for every event any Feedback
reply accepted (learned + pending == accepted, nothing lost in the replay).
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

import grpc
import pytest

from protos.freshrank.v1 import ranking_pb2 as pb
from serving.served_log import feedback_dir
from tests.serve_system import System, running_system, send_feedback

pytestmark = pytest.mark.slow

TTL_S = 8.0
RECOVERY_S = 90.0


@pytest.fixture(scope="module")
def system(ray_cluster, tmp_path_factory) -> Iterator[System]:
    with running_system(tmp_path_factory.mktemp("learner-dead"),
                        serving={"online_ttl_seconds": TTL_S}) as running:
        yield running


def learner_pids(app_name: str) -> set[int]:
    """The pids of this app's live Learner replicas, from Ray's actor table."""
    import ray

    pids = set()
    for info in ray._private.state.actors().values():
        name = f"{info.get('Name', '')} {info.get('ActorClassName', '')}"
        if info["State"] == "ALIVE" and app_name in name and (
            "#Learner#" in name or ":Learner" in name
        ):
            pids.add(int(info["Pid"]))
    return pids


def durability(system: System, timeout_s: float = RECOVERY_S) -> dict[str, int]:
    from ray import serve

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            handle = serve.get_deployment_handle("Learner", app_name=system.app_name)
            return handle.durability.remote().result(timeout_s=10)
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def wait_for(check: Callable[[], bool], what: str, timeout_s: float = RECOVERY_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.3)


class Traffic:
    def __init__(self, system: System) -> None:
        self.system = system
        self.requests: list[tuple[str, dict[str, float]]] = []
        by_id: dict[str, tuple[str, dict[str, float]]] = {}
        for row in system.events.select(["request_id", "user_id", "item_id", "label"]).to_pylist():
            _, items = by_id.setdefault(row["request_id"], (row["user_id"], {}))
            items[row["item_id"]] = max(row["label"], items.get(row["item_id"], 0.0))
        self.requests = list(by_id.values())
        self.next = 0
        self.accepted = 0  # events the Feedback replies accepted, this module
        self.versions: set[str] = set()  # every online version any answer carried

    def rank(self, tag: str) -> tuple[pb.RankResponse, str, str, dict[str, float]]:
        user, items = self.requests[self.next % len(self.requests)]
        self.next += 1
        rid = f"{tag}-{self.next}"
        response = self.system.client.rank(rid, user, list(items))
        self.versions.add(response.online_version)
        return response, rid, user, items

    def round(self, n: int, tag: str) -> pb.RankResponse:
        """``n`` Rank calls and one Feedback with their logged labels (accepted whole)."""
        rows = []
        for _ in range(n):
            response, rid, user, items = self.rank(tag)
            now = datetime.now(UTC)
            rows += [{"request_id": rid, "user_id": user, "item_id": item.item_id, "ts": now,
                      "label": float(items[item.item_id]), "position": p}
                     for p, item in enumerate(response.items)]
        reply = send_feedback(self.system.client, rows)
        assert not reply.rejected_reason, reply.rejected_detail
        assert reply.accepted == len(rows), reply
        self.accepted += reply.accepted
        return response


def test_a_dead_learner_leaves_serving_on_its_last_weights_then_stale_then_recovered(
    system: System,
) -> None:
    traffic = Traffic(system)
    deadline = time.monotonic() + 90
    response = traffic.round(20, "warm")
    while response.fallback:  # the layer learns and serves
        assert time.monotonic() < deadline, response.fallback_detail
        response = traffic.round(10, "warm")
    (pid,) = learner_pids(system.app_name)
    lock = json.loads((feedback_dir(system.settings.workspace) / "writer.json").read_text())
    assert int(lock["pid"]) == pid  # the process that owns the feedback log
    assert durability(system)["accepted"] == traffic.accepted
    # Fresh weights: one more round is learned and published, the replica installs it.
    response = traffic.round(5, "warm")
    time.sleep(0.6)
    installed = traffic.rank("installed")[0]
    assert not installed.fallback, installed.fallback_detail
    last_version = installed.online_version

    killed_at = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    # Only Rank flows now: every call answers; first on the last weights, then stale.
    seen: list[tuple[float, pb.RankResponse]] = []
    failures: list[str] = []
    while time.monotonic() - killed_at < TTL_S + 20:
        try:
            answer = traffic.rank("dead")[0]
        except grpc.RpcError as error:
            failures.append(error.code().name)
            continue
        seen.append((time.monotonic() - killed_at, answer))
        if answer.fallback_reason == pb.FALLBACK_REASON_ONLINE_STALE:
            break
        time.sleep(0.05)
    stale_at, stale = seen[-1]
    early = [a for t, a in seen if t < TTL_S / 2]
    print(f"\nlearner SIGKILL: {len(seen)} Rank answers and {len(failures)} failures while "
          f"dead; stale after {stale_at:.2f} s (ttl {TTL_S} s); early versions "
          f"{sorted({a.online_version for a in early})}")
    assert failures == []
    assert early and all(not a.fallback and a.online_version == last_version for a in early)
    assert stale.fallback_reason == pb.FALLBACK_REASON_ONLINE_STALE, stale.fallback_detail
    assert "ttl" in stale.fallback_detail
    assert stale_at <= TTL_S + 5.0  # the weights' age, plus the last publish and poll
    assert all(item.score == item.base_score for item in stale.items)

    # Serve restarts the learner; its durability counters are back.
    wait_for(lambda: bool(learner_pids(system.app_name) - {pid}), "a new Learner replica")
    after = durability(system)
    restarted_at = time.monotonic() - killed_at
    assert after["accepted"] == traffic.accepted
    assert after["replay_lost"] == 0
    assert after["learned"] + after["pending"] == after["accepted"]

    # With feedback flowing again the layer serves again, under a version no answer carried
    # before the kill: the restarted learner numbers its publishes after its predecessor's
    # (serving.version_sequence), so a name never stands for two sets of weights.
    served_before = traffic.versions - {""}
    deadline = time.monotonic() + RECOVERY_S
    response = traffic.round(10, "recover")
    while response.fallback:
        assert time.monotonic() < deadline, response.fallback_detail
        response = traffic.round(10, "recover")
    recovered_at = time.monotonic() - killed_at
    print(f"learner back after {restarted_at:.1f} s, layer serving new weights after "
          f"{recovered_at:.1f} s as {response.online_version} (before the kill: "
          f"{sorted(served_before)}); durability {after}")
    assert response.online_version not in served_before
    number = int(response.online_version.rsplit("-", 1)[1])
    assert number > max(int(v.rsplit("-", 1)[1]) for v in served_before)

    # Nothing acknowledged is lost: everything accepted, before and after, is learned.
    state: dict[str, int] = {}

    def all_learned() -> bool:
        state.update(durability(system))
        return state["accepted"] == traffic.accepted and state["pending"] == 0

    wait_for(all_learned, f"learned == accepted == {traffic.accepted}")
    assert state["learned"] == traffic.accepted and state["replay_lost"] == 0
