"""Operator switches change running replicas in place: zero failed calls under load.

Before (issue 15): ``set_online_enabled`` re-ran the Serve app, both deployments were
redeployed (new pids, learner state lost) and two toggles under 50 requests/s failed 314 of
3,001 calls. Now the switch lives in the learner (``serving.admin``) and every Ranker
replica follows it on its weight poll. The test keeps a client thread at ~50 Rank calls/s,
toggles off/on twice through the admin rpc and rolls back, and requires: no failed call,
the same Learner and Ranker pids, learner counters still growing, every switch visible in
responses within a bounded time, and each action in the audit log.

The last test scales the Ranker in place under the same kind of load (``serving.scaling``):
the module's app runs 2 replicas, so 2 -> 1 -> 2 -> 1 holds a 1 -> 2 -> 1 while calls flow;
it runs last because it leaves one replica (the app is removed after the module).

The unit tests at the top check the learner-side state (``serving.admin.Controls``) and the
audit file without Ray.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
import pytest

from protos.freshrank.v1 import ranking_pb2 as pb
from serving.admin import Controls, audit_path, read_audit

# --------------------------------------------------------------------- without Ray


def test_controls_change_serial_with_every_action_and_are_audited(tmp_path: Path) -> None:
    audit = audit_path(tmp_path)
    controls = Controls(audit, enabled=True, clock=lambda: 1_700_000_000.0)
    first = controls.view(None)
    assert first is not None and first["online_enabled"] is True
    assert controls.view(first["serial"]) is None  # nothing new for who has it
    record = controls.set_enabled(False, reason="incident 42", actor="alice")
    assert (record["previous"], record["current"], record["actor"]) == ("enabled", "disabled", "alice")
    view = controls.view(first["serial"])
    assert view is not None and view["online_enabled"] is False and view["serial"] != first["serial"]
    assert "incident 42" in view["detail"]
    controls.rolled_back("v9", "v7", snapshot="SNAP", reason="bad", actor="bob", published_as="v10")
    lines = read_audit(audit)
    assert [line["action"] for line in lines] == ["set_online_enabled", "rollback_online"]
    assert lines[1]["published_as"] == "v10" and lines[1]["at"].startswith("2023-11-14")
    assert controls.view(None)["snapshot"] == "SNAP"


def test_a_restarted_learner_keeps_the_last_switch(tmp_path: Path) -> None:
    audit = audit_path(tmp_path)
    Controls(audit, enabled=True).set_enabled(False, reason="r", actor="a")
    again = Controls(audit, enabled=True)
    assert again.enabled is False
    assert Controls(audit_path(tmp_path / "other"), enabled=True).enabled is True


def test_a_torn_last_line_is_skipped(tmp_path: Path) -> None:
    audit = audit_path(tmp_path)
    Controls(audit, enabled=True).set_enabled(False, reason="r", actor="a")
    with open(audit, "a", encoding="utf-8") as handle:
        handle.write('{"action": "set_online_en')
    assert len(read_audit(audit)) == 1
    assert Controls(audit, enabled=True).enabled is False


# ------------------------------------------------------------ the running app, under load


@dataclass
class Load:
    """Rank calls at a fixed rate from a client thread; every answer timestamped."""

    client: object
    requests: list
    rate: float = 50.0
    prefix: str = "load-"  # request ids: prefix + call number
    answers: list[tuple[float, pb.RankResponse]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        period = 1.0 / self.rate
        n = 0
        next_at = time.monotonic()
        while not self.stop.is_set():
            request = self.requests[n % len(self.requests)]
            try:
                response = self.client.rank(
                    f"{self.prefix}{n}",
                    request.column("user_id")[0].as_py(),
                    request.column("item_id").to_pylist(),
                    request_time=request.column("ts")[0].as_py(),
                )
                self.answers.append((time.monotonic(), response))
            except grpc.RpcError as error:
                self.failures.append(f"{error.code()}: {(error.details() or '')[:200]}")
            n += 1
            next_at += period
            time.sleep(max(0.0, next_at - time.monotonic()))

    def first_after(self, since: float, predicate) -> float | None:
        for at, response in list(self.answers):
            if at >= since and predicate(response):
                return at - since
        return None


def serve_pids() -> dict[str, set[int]]:
    import ray

    pids: dict[str, set[int]] = {"Learner": set(), "Ranker": set()}
    for info in ray._private.state.actors().values():
        if info["State"] != "ALIVE":
            continue
        name = f"{info.get('Name', '')} {info.get('ActorClassName', '')}"
        for deployment in pids:
            if f"#{deployment}#" in name or f":{deployment}" in name:
                pids[deployment].add(int(info["Pid"]))
    return pids


@pytest.fixture(scope="module")
def system(ray_cluster, tmp_path_factory) -> Iterator[object]:
    from tests.serve_system import running_system

    # Two Ranker replicas: the one taking an admin call applies it at once, the other
    # follows on its poll (weight_poll_seconds = 0.2).
    with running_system(tmp_path_factory.mktemp("switches"), serving={"ranker_replicas": 2}) as running:
        yield running


def learn_until_served(system, requests) -> None:
    """Feedback until the learner has a ready snapshot serving uses (a rollback target)."""
    from serving.client import RankerClient  # noqa: F401  (the system's client is one)

    for n, request in enumerate(requests):
        request_id = f"warm-{n}"
        system.client.rank(
            request_id,
            request.column("user_id")[0].as_py(),
            request.column("item_id").to_pylist(),
            request_time=request.column("ts")[0].as_py(),
        )
        index = request.schema.get_field_index("request_id")
        system.client.feedback(
            request.set_column(index, "request_id", [[request_id] * request.num_rows])
        )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if system.client.status().online_version:
            return
        time.sleep(0.3)
    raise AssertionError("no online weights reached serving")


@pytest.mark.slow
@pytest.mark.timeout(300)  # includes the module fixture: base training, Serve start
def test_toggles_and_a_rollback_under_load_fail_no_call_and_keep_the_learner(system) -> None:
    from tests.serve_system import requests_of

    requests = requests_of(system.events, 160)
    learn_until_served(system, requests[:80])
    before = serve_pids()
    assert len(before["Learner"]) == 1 and before["Ranker"], before
    updates_before = system.client.status().online_updates
    bound = 1.5  # seconds: weight_poll_seconds is 0.2 here; generous for a loaded machine

    load = Load(system.client, requests[80:])
    thread = threading.Thread(target=load.run, daemon=True)
    thread.start()
    disabled = lambda r: r.fallback_reason == pb.FALLBACK_REASON_ONLINE_DISABLED  # noqa: E731
    actions: list[tuple[str, float, object]] = []  # (name, when, "the new state" predicate)
    try:
        time.sleep(1.5)
        for round_ in (1, 2):
            actions.append((f"off-{round_}", time.monotonic(), disabled))
            reply = system.client.set_online_enabled(False, reason=f"drill {round_}", actor="test_switches")
            assert (reply.previous, reply.current) == ("enabled", "disabled")
            time.sleep(2.0)
            actions.append((f"on-{round_}", time.monotonic(), lambda r: not disabled(r)))
            reply = system.client.set_online_enabled(True, reason=f"drill {round_} over", actor="test_switches")
            assert (reply.previous, reply.current) == ("disabled", "enabled")
            time.sleep(2.0)
        when = time.monotonic()
        reply = system.client.rollback_online(reason="drill rollback", actor="test_switches")
        assert reply.action == "rollback_online" and reply.current and reply.detail
        published_as = reply.detail
        actions.append(("rollback", when, lambda r: r.online_version == published_as))
        time.sleep(2.0)
    finally:
        load.stop.set()
        thread.join(timeout=10)

    # An action has taken effect on every replica once no answer shows the old state any
    # more: the time from the call to the last old answer (or to the first new one).
    took: dict[str, float | None] = {}
    answered: dict[str, int] = {}  # answers inside each action's window
    ends = [when for _, when, _ in actions[1:]] + [load.answers[-1][0] + 1]
    for (name, since, is_new), until in zip(actions, ends, strict=True):
        window = [(at, r) for at, r in load.answers if since <= at < until]
        answered[name] = len(window)
        old = [at for at, r in window if not is_new(r)]
        new = [at for at, r in window if is_new(r)]
        if not new or (old and old[-1] > new[-1]):
            took[name] = None  # never settled in its window
        else:
            took[name] = (old[-1] if old else new[0]) - since
    calls = len(load.answers) + len(load.failures)
    seconds = load.answers[-1][0] - load.answers[0][0]
    print(
        f"\nswitch under load: {calls} calls over {seconds:.1f} s ({calls / seconds:.0f}/s), "
        f"{len(load.failures)} failed; time to take effect (s): "
        + ", ".join(f"{k} {v:.2f}" if v is not None else f"{k} never" for k, v in took.items())
    )
    assert load.failures == []
    # Every switch flipped while calls were flowing (a count, not a rate: a loaded machine
    # answers fewer calls per second, and the property is the same).
    assert all(count >= 10 for count in answered.values()), answered
    assert all(value is not None and value <= bound for value in took.values()), took
    after = serve_pids()
    assert after == before, (before, after)
    status = system.client.status()
    assert status.online_enabled and status.control_serial
    assert "rollback_online" in status.control_detail
    assert status.online_updates >= updates_before
    # The learner kept its state and keeps learning: feedback for requests served under
    # load still joins (it knows them) and its batch counter grows.
    accepted = 0
    for n, (_, response) in enumerate(load.answers[:120]):
        request = requests[80 + n % len(requests[80:])]
        index = request.schema.get_field_index("request_id")
        reply = system.client.feedback(
            request.set_column(index, "request_id", [[response.request_id] * request.num_rows])
        )
        accepted += reply.accepted
    assert accepted > 0
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and system.client.status().online_updates <= status.online_updates:
        time.sleep(0.2)
    assert system.client.status().online_updates > status.online_updates
    audit = read_audit(audit_path(system.settings.workspace))
    assert [line["action"] for line in audit] == ["set_online_enabled"] * 4 + ["rollback_online"]
    assert all(line["actor"] == "test_switches" and line["reason"] for line in audit)


@pytest.mark.slow
def test_a_rollback_to_an_unknown_version_and_an_unexplained_switch_are_refused(system) -> None:
    with pytest.raises(grpc.RpcError) as error:
        system.client.rollback_online(reason="r", actor="t", to_version="online-9999")
    assert error.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as error:
        system.client.set_online_enabled(False, reason="", actor="t")
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "reason is empty" in error.value.details()


def _served(system, prefix: str) -> dict[str, tuple[str, object]]:
    """request id -> (the replica that served it, its served-log entry), every replica: each
    replica logs to a directory named by its Serve replica id (``serving.served_log``)."""
    from protos.wal import WalTailer
    from serving.served_log import decode_served, served_root

    found: dict[str, tuple[str, object]] = {}
    for directory in served_root(system.settings.workspace).iterdir():
        if directory.is_dir():
            for _, payload in WalTailer(directory).poll():
                entry = decode_served(payload)
                if entry.record.request_id.startswith(prefix):
                    found[entry.record.request_id] = (directory.name, entry)
    return found


def _served_propensities(system, prefix: str) -> dict[str, object]:
    """request id -> the logged propensity (None: the deterministic policy), every replica."""
    return {rid: entry.propensity for rid, (_, entry) in _served(system, prefix).items()}


@pytest.mark.slow
def test_exploration_switches_in_place_and_logs_the_propensity_of_what_it_showed(system) -> None:
    from tests.serve_system import requests_of

    requests = requests_of(system.events, 160)
    if not system.client.status().online_version:
        learn_until_served(system, requests[:80])

    def rank_all(prefix: str, count: int = 40) -> None:
        for n, request in enumerate(requests[80:80 + count]):
            system.client.rank(f"{prefix}{n}", request.column("user_id")[0].as_py(),
                               request.column("item_id").to_pylist(), top_k=5,
                               request_time=request.column("ts")[0].as_py())

    with pytest.raises(grpc.RpcError) as error:  # the door names the bad field
        system.client.set_exploration(True, "test", "test_switches", share=1.5)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.value.details().startswith("share is 1.5")
    reply = system.client.set_exploration(True, "test: explore", "test_switches", share=1.0, samples=32)
    assert reply.action == "set_exploration" and reply.previous == "off" and reply.current.startswith("on")
    time.sleep(1.5)  # weight_poll_seconds 0.2: the other replica follows within it
    rank_all("explore-on-")
    shown = _served_propensities(system, "explore-on-")
    assert len(shown) == 40 and all(p is not None for p in shown.values())
    values = np.concatenate([np.asarray(p) for p in shown.values()])
    assert ((values > 0) & (values <= 1)).all() and (values < 1).any()
    status = system.client.status()
    assert status.exploration_enabled and status.exploration_share == 1.0 and status.requests_explored > 0
    assert status.exploration_propensity_draws == 8 and "propensity_draws 8 (Rao-Blackwellised)" in reply.current
    # The estimator switched in place to Monte Carlo over the 32 samples set above (the share
    # left out stays 1.0): every explored propensity is then (1 + hits) / 33, which the
    # Rao-Blackwellised ones above are not.
    reply = system.client.set_exploration(True, "test: monte carlo", "test_switches", propensity_draws=0)
    time.sleep(1.5)
    rank_all("explore-mc-", 10)
    mc = _served_propensities(system, "explore-mc-")
    status = system.client.status()

    def in_33rds(p: np.ndarray) -> bool:
        return bool(np.allclose(p * 33, np.round(p * 33)))

    assert (reply.current.endswith("propensity_draws 0 (Monte Carlo, 32 samples)")
            and status.exploration_propensity_draws == 0 and status.exploration_share == 1.0
            and len(mc) == 10 and all(p is not None and in_33rds(np.asarray(p)) for p in mc.values())
            and not in_33rds(values)), (reply.current, mc)
    system.client.set_exploration(False, "test: done", "test_switches")
    time.sleep(1.5)
    rank_all("explore-off-")
    assert all(p is None for p in _served_propensities(system, "explore-off-").values())
    assert read_audit(audit_path(system.settings.workspace))[-1]["action"] == "set_exploration"


def settled_versions(system, quiet_s: float = 0.5, timeout_s: float = 20.0) -> tuple[str, str]:
    """The (base, online) version pair serving answers with once the learner has stopped
    publishing (two Status calls ``quiet_s`` apart agree; no feedback is sent meanwhile)."""
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        status = system.client.status()
        now = (status.base_version, status.online_version, status.online_updates)
        if now == last and status.online_version and status.online_base_version == status.base_version:
            return now[0], now[1]
        last = now
        time.sleep(quiet_s)
    raise AssertionError(f"serving did not settle on one online version: {last}")


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_scaling_the_rankers_in_place_under_load_fails_no_call_and_serves_one_version(system) -> None:
    """``serving.app.scale_rankers`` 2 -> 1 -> 2 -> 1 while a client sends ~50 Rank calls/s
    through the gRPC proxy: no call fails; each settled phase is answered by exactly the
    replicas Serve lists (both in the 2-replica phase, the new one included); every reply
    carries the (base, online) pair serving had before (a new replica catches up with the
    learner before it takes traffic; the pair is consistent: the online layer was trained
    for that base); the Learner and the replica that stays are never restarted."""
    from serving import app
    from serving.scaling import ranker_replicas
    from tests.serve_system import requests_of

    requests = requests_of(system.events, 160)
    if not system.client.status().online_version:
        learn_until_served(system, requests[:80])
    pair = settled_versions(system)
    first = {r.replica_id for r in ranker_replicas(system.app_name) if r.state == "RUNNING"}
    pids = serve_pids()
    assert len(first) == 2, first

    load = Load(system.client, requests[80:], prefix="scale-")
    thread = threading.Thread(target=load.run, daemon=True)
    phases: list[tuple[float, float, object]] = []  # (asked at, settled at, ScaleResult)
    thread.start()
    try:
        time.sleep(0.3)
        for count in (1, 2, 1):
            asked = time.monotonic()
            result = app.scale_rankers(system.settings, count, timeout_s=90)
            phases.append((asked, time.monotonic(), result))
            time.sleep(1.5)  # the settled phase, answered under load
    finally:
        load.stop.set()
        thread.join(timeout=10)
    stopped = time.monotonic()

    calls = len(load.answers) + len(load.failures)
    print(
        f"\nscaling under load: {calls} calls, {len(load.failures)} failed; "
        + ", ".join(f"{r.previous}->{r.replicas} in {r.seconds:.1f} s" for _, _, r in phases)
    )
    assert load.failures == []
    pairs = {(r.base_version, r.online_version) for _, r in load.answers}
    assert pairs == {pair}, pairs
    assert not any(r.fallback for _, r in load.answers)

    down, up, down_again = (result for _, _, result in phases)
    assert (down.previous, down.replicas, len(down.replica_ids)) == (2, 1, 1)
    assert set(down.replica_ids) <= first  # one of the two stayed: scaled, not redeployed
    assert (up.previous, up.replicas, len(up.replica_ids)) == (1, 2, 2)
    (added,) = set(up.replica_ids) - set(down.replica_ids)
    assert added not in first
    assert (down_again.replicas, len(down_again.replica_ids)) == (1, 1)
    assert set(down_again.replica_ids) <= set(up.replica_ids)

    # Who answered each settled phase (from its start plus routing's update, to the next ask).
    by_replica = {rid: replica for rid, (replica, _) in _served(system, "scale-").items()}
    ends = [asked for asked, _, _ in phases[1:]] + [stopped]
    for (_, settled, result), until in zip(phases, ends, strict=True):
        window = [r.request_id for at, r in load.answers if settled + 0.3 <= at < until]
        answered = {by_replica[rid] for rid in window}
        assert len(window) >= 10 and answered == set(result.replica_ids), (result, answered, len(window))
    assert serve_pids()["Learner"] == pids["Learner"]
