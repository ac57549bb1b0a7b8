"""The live loop in a running app, through real gRPC calls under steady load:
stage a candidate base (shadow, then canary), promote it in place, roll it back, and
refuse what must never serve; no call fails and no reply pairs a base with an online
layer trained for another base. During the canary half of the champion's requests are
interleaved with the candidate (``serving.interleave_share``), logged with their teams."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from protos.freshrank.v1 import ranking_pb2 as pb
from protos.registry import ModelRegistry
from serving.client import RankerClient
from tests.serve_system import requests_of, running_system, send_feedback

pytestmark = pytest.mark.usefixtures("ray_cluster")


def _train_candidate(settings, *, approve: bool = True) -> str:
    """A second base trained on the workspace's log (not promoted); ``approve`` marks it
    approved if its gate judged it otherwise (the test is about serving, not the gate)."""
    from base_model.training import train_base_model
    from serving.training_sources import training_set_from_log

    table, as_of = training_set_from_log(settings.feature_store, "data-end", settings.base_model.train_days)
    result = train_base_model(settings.base_model, table, settings.registry_dir, parent="champion",
                              as_of=as_of, promote=False, backend="local")
    registry = ModelRegistry(settings.registry_dir)
    if approve and result.status != "approved":
        registry.set_status("base", result.version, "approved", reason="test: serving, not the gate")
    if not approve:
        registry.set_status("base", result.version, "rejected", {"offline": {"passed": False}},
                            reason="test: a candidate its gate rejected")
    return result.version


class Load:
    """Rank calls in a thread until stopped; counts failures and mismatched pairs."""

    def __init__(self, address: str, app: str, requests) -> None:
        self._client = RankerClient(address, app)
        self._requests = requests
        self._stop = threading.Event()
        self.calls = 0
        self.failures: list[str] = []
        self.mismatched: list[tuple[str, str]] = []
        self.bases: Counter[str] = Counter()
        self.fallbacks: Counter[str] = Counter()
        self.served: list[tuple[str, str, str]] = []  # (request_id, user, base)
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        self._client.close()

    def _run(self) -> None:
        i = 0
        while not self._stop.is_set():
            req = self._requests[i % len(self._requests)]
            i += 1
            rid = f"load-{i}"
            user = req.column("user_id")[0].as_py()
            try:
                reply = self._client.rank(rid, user, req.column("item_id").to_pylist())
            except grpc.RpcError as error:
                self.failures.append(f"{error.code().name}: {error.details()}")
                continue
            self.calls += 1
            self.bases[reply.base_version] += 1
            self.served.append((rid, user, reply.base_version))
            if reply.fallback:
                self.fallbacks[pb.FallbackReason.Name(reply.fallback_reason)] += 1
            if reply.online_version and not reply.online_version.startswith(f"ol-{reply.base_version}-"):
                self.mismatched.append((reply.base_version, reply.online_version))
            time.sleep(0.005)


def _interleaved(system) -> list[tuple[Any, np.ndarray]]:
    """(served record, teams) of every interleaved request in the replicas' served logs."""
    from protos.wal import WalTailer
    from serving.served_log import decode_served, served_root

    found = []
    for replica in sorted(p for p in served_root(system.settings.workspace).iterdir() if p.is_dir()):
        for _, payload in WalTailer(replica).poll():
            entry = decode_served(payload)
            if entry.team is not None:
                found.append((entry.record, entry.team))
    return found


def _wait(predicate, timeout: float = 30.0, what="condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what() if callable(what) else what}")


@pytest.fixture(scope="module")
def system(tmp_path_factory):
    serving = {"shadow_share": 1.0, "interleave_share": 0.5}  # interleaving: during a canary only
    with running_system(tmp_path_factory.mktemp("live-loop"), serving=serving) as running:
        yield running


# ------------------------------------------------------------------ the on-call runbook

RUNBOOK = Path(__file__).resolve().parents[2] / "infra" / "RUNBOOK.md"


def runbook_sections() -> list[tuple[str, list[str]]]:
    """(section title, its ``$ freshrank ...`` commands) in the order of the runbook."""
    sections: list[tuple[str, list[str]]] = [("", [])]
    for line in RUNBOOK.read_text().splitlines():
        if line.startswith("## "):
            sections.append((line[3:].strip(), []))
        elif line.startswith("$ freshrank "):
            sections[-1][1].append(line[2:].strip())
    return [(title, commands) for title, commands in sections if commands]


def test_the_runbook_names_a_command_for_every_symptom_it_lists():
    titles = [title for title, _ in runbook_sections()]
    for symptom in ("breaker is open", "stale online weights", "canary", "features are stale",
                    "bad base was promoted"):
        assert any(symptom in title for title in titles), symptom


def _run_cli(command: str, env: dict[str, str], capsys) -> tuple[int, str, str]:
    """Run one runbook line in-process; returns (exit status, stdout, stdout+stderr).

    This process is also the Ray driver, so replicas' log lines are forwarded into the
    captured streams; the command's own answer is read from stdout only."""
    import os
    import shlex

    from serving.cli import main

    argv = shlex.split(os.path.expandvars(command.replace("$TARGET", env["TARGET"]).replace("$WORKSPACE", env["WORKSPACE"])))
    capsys.readouterr()
    status = main(argv[1:])
    out = capsys.readouterr()
    return status, out.out, out.out + out.err


def _first_json(text: str) -> dict:
    """The first JSON object in ``text`` (forwarded log lines may follow it)."""
    obj, _ = json.JSONDecoder().raw_decode(text[text.index("{"):])
    return obj


def test_every_runbook_command_runs_in_order_against_the_app_and_does_what_it_says(system, capsys):
    """Each section's situation is set up first (a ready layer, a canary, a promoted base),
    then its commands run through the real ``freshrank`` CLI, then the effect is checked."""
    client = system.client
    champion = client.status().base_version
    env = {"TARGET": system.address, "WORKSPACE": str(system.settings.workspace)}
    # a ready online layer (rollback online needs a snapshot to go back to)
    for req in requests_of(system.events, 400)[300:380]:
        rid = f"rb-{req.column('request_id')[0].as_py()}"
        client.rank(rid, req.column("user_id")[0].as_py(), req.column("item_id").to_pylist(),
                    request_time=req.column("ts")[0].as_py())
        rows = req.select(["request_id", "user_id", "item_id", "ts", "label", "position"]).to_pylist()
        reply = send_feedback(client, [{**r, "request_id": rid} for r in rows])
        assert reply.rejected_reason == "", reply.rejected_detail
    # the learner's own ready snapshot (after the rollback above its layer was rebased)
    _wait(lambda: client.status().online_ready, timeout=60,
          what=lambda: f"a ready online layer ({client.status().online_readiness_detail})")
    candidate = _train_candidate(system.settings)
    ran = 0
    for title, commands in runbook_sections():
        if "canary" in title:
            client.stage_candidate(candidate, "canary", "runbook test: a canary to abort", "tester", canary_share=0.2)
        if "bad base" in title:
            client.promote_base("runbook test: a bad base", "tester", base_version=candidate)
            _wait(lambda: client.status().base_version == candidate, what="the bad base serving")
        for command in commands:
            status, output, everything = _run_cli(command, env, capsys)
            assert status == 0, f"{command!r} exited {status}: {everything[-500:]}"
            ran += 1
            words = command.split()
            now = client.status()
            if words[1] == "status":
                assert _first_json(output)["baseVersion"] == now.base_version
            elif words[1:3] == ["online", "disable"]:
                assert now.online_enabled is False
            elif words[1:3] == ["online", "enable"]:
                assert now.online_enabled is True
            elif words[1:3] == ["rollback", "online"]:
                assert _first_json(output)["action"] == "rollback_online"
            elif words[1:3] == ["canary", "abort"]:
                assert now.candidate_base_version == "" and now.candidate_phase == pb.CANDIDATE_PHASE_UNSPECIFIED
            elif words[1:3] == ["explore", "on"]:
                assert now.exploration_enabled is True and now.exploration_share == 0.05
            elif words[1:3] == ["explore", "off"]:
                assert now.exploration_enabled is False
            elif words[1:3] == ["rollback", "base"]:
                _wait(lambda: client.status().base_version == champion, what="the rollback")
                assert ModelRegistry(system.settings.registry_dir).get("base", candidate).status == "rejected"
    assert ran == sum(len(c) for _, c in runbook_sections()) >= 9


def test_a_full_cycle_under_load_fails_no_call_and_never_mismatches_a_pair(system):
    client = system.client
    champion = system.base_version
    candidate = _train_candidate(system.settings)
    requests = requests_of(system.events, 150)
    # feedback for the champion so its layer is live before the cycle starts
    for req in requests[:60]:
        rid = req.column("request_id")[0].as_py()
        client.rank(rid, req.column("user_id")[0].as_py(), req.column("item_id").to_pylist(),
                    request_time=req.column("ts")[0].as_py())  # feedback carries the logged times
        rows = req.select(["request_id", "user_id", "item_id", "ts", "label", "position"]).to_pylist()
        reply = send_feedback(client, rows)
        assert reply.rejected_reason == "", reply.rejected_detail
    with Load(system.address, system.app_name, requests) as load:
        _wait(lambda: load.calls > 20, what="load")
        # shadow: scored beside the champion, never served
        reply = client.stage_candidate(candidate, "shadow", "test: shadow", "tester")
        assert reply.action == "stage_candidate" and candidate in reply.current
        _wait(lambda: client.candidate_report().shadow_requests >= 20, what="shadow comparisons")
        report = client.candidate_report()
        assert report.candidate_base_version == candidate and report.phase == pb.CANDIDATE_PHASE_SHADOW
        assert 0.0 <= report.top_k_overlap <= 1.0 and -1.0 <= report.rank_correlation <= 1.0
        assert report.candidate_latency_ms_p50 > 0 and report.champion_mean_ctr > 0
        assert candidate not in load.bases, "a shadow candidate served a request"
        # canary: a stable share of users is served by the candidate
        client.stage_candidate(candidate, "canary", "test: canary", "tester", canary_share=0.5)
        _wait(lambda: load.bases[candidate] >= 10, what="canary traffic")
        from serving.plan import in_canary

        served = list(load.served)
        first = next(i for i, (_, _, b) in enumerate(served) if b == candidate)
        wrong = [(u, b) for _, u, b in served[first:] if (b == candidate) != in_canary(u, 0.5)]
        assert wrong == [], wrong[:5]  # each user is served by the base its hash names
        _wait(lambda: len(_interleaved(system)) >= 5, what="interleaved requests")
        for record, team in _interleaved(system):  # the champion's users, by a hash of the id
            assert record.base_version == champion and not in_canary(record.user_id, 0.5)
            assert in_canary(f"interleave\x1f{record.request_id}", 0.5)
            assert len(team) == len(record.item_ids) and set(team.tolist()) <= {0, 1, 2}
            assert abs(int((team == 1).sum()) - int((team == 2).sum())) <= 1
        assert any((team == 2).any() for _, team in _interleaved(system))  # the candidate's picks shown
        status = client.status()
        assert status.candidate_phase == pb.CANDIDATE_PHASE_CANARY and status.canary_share == 0.5
        # promote in place
        client.promote_base("test: promote", "tester")
        _wait(lambda: client.status().base_version == candidate, what="promotion")
        before = load.calls
        _wait(lambda: load.calls > before + 30, what="traffic after the promotion")
        recent = {b for _, _, b in load.served[-20:]}
        assert recent == {candidate}
        assert ModelRegistry(system.settings.registry_dir).champion("base").version == candidate
        # roll back: the previous champion with the online layer trained for it
        reply = client.rollback_base("test: rollback", "tester")
        assert reply.previous == candidate and reply.current == champion
        _wait(lambda: client.status().base_version == champion, what="rollback")
        before = load.calls
        _wait(lambda: load.calls > before + 30, what="traffic after the rollback")
        assert {b for _, _, b in load.served[-20:]} == {champion}
    assert load.failures == [], load.failures[:5]
    assert load.mismatched == [], load.mismatched[:5]
    assert ModelRegistry(system.settings.registry_dir).champion("base").version == champion
    audit = (Path(system.settings.workspace) / "audit" / "operator.jsonl").read_text()
    for action in ("stage_candidate", "promote_base", "rollback_base"):
        assert f'"action": "{action}"' in audit


def test_a_rejected_candidate_is_never_staged_nor_promoted(system):
    rejected = _train_candidate(system.settings, approve=False)
    for call in (lambda: system.client.stage_candidate(rejected, "shadow", "test", "tester"),
                 lambda: system.client.promote_base("test", "tester", base_version=rejected)):
        with pytest.raises(grpc.RpcError) as caught:
            call()
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert rejected in caught.value.details() and "approved" in caught.value.details()
    assert system.client.status().candidate_base_version == ""


@pytest.mark.parametrize(
    "request_message, field",
    [
        (pb.StageCandidateRequest(base_version="", phase=pb.CANDIDATE_PHASE_SHADOW, reason="r", actor="a"), "base_version"),
        (pb.StageCandidateRequest(base_version="b", phase=0, reason="r", actor="a"), "phase"),
        (pb.StageCandidateRequest(base_version="b", phase=pb.CANDIDATE_PHASE_CANARY, canary_share=0.9, reason="r", actor="a"), "canary_share"),
        (pb.StageCandidateRequest(base_version="b", phase=pb.CANDIDATE_PHASE_CANARY, canary_share=float("nan"), reason="r", actor="a"), "canary_share"),
        (pb.PromoteBaseRequest(base_version="x" * 300, reason="r", actor="a"), "base_version"),
        (pb.RollbackBaseRequest(reason="", actor="a"), "reason"),
        (pb.AbortCandidateRequest(reason="r", actor=""), "actor"),
    ],
)
def test_bad_live_loop_requests_are_invalid_argument_naming_the_field(system, request_message, field):
    from protos.freshrank.v1 import ranking_pb2_grpc

    method = type(request_message).__name__.removesuffix("Request")
    with grpc.insecure_channel(system.address) as channel:
        stub = ranking_pb2_grpc.RankerStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            getattr(stub, method)(request_message, metadata=(("application", system.app_name),
                                                             ("authorization", f"Bearer {system.token}")), timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in caught.value.details()


def test_live_loop_rpcs_need_the_token(system):
    with RankerClient(system.address, system.app_name, token="") as anonymous:
        with pytest.raises(grpc.RpcError) as caught:
            anonymous.abort_candidate("test", "tester")
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_abort_without_a_candidate_is_a_failed_precondition(system):
    with pytest.raises(grpc.RpcError) as caught:
        system.client.abort_candidate("test", "tester")
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "no candidate" in caught.value.details()
