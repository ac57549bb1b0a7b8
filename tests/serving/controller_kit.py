"""An in-memory serving port, a fast trainer and a fake clock for the controller's tests.

``FakeServing`` implements ``serving.controller.port.ServingPort`` over a real registry: it
keeps the plan (the staged candidate and its phase), answers ``CandidateReport`` with
configurable figures (the shadow count grows with every report, as live traffic would),
promotes by moving the registry's champion pointer, and can be told to crash (raise
``Crash``, a ``BaseException`` the controller does not catch: the process "dies" there)
before or after doing a call, or to answer UNAVAILABLE a few times. ``FastTrainer``
registers a tiny artifact as a new base version with the gate status a test wants, so the
state machine runs without training a model (one test, test_controller_real.py, trains).
"""

from __future__ import annotations

import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest

from base_model.triggers import TriggerCheck, TriggerDecision
from protos.freshrank.v1 import ranking_pb2
from feature_store.event_log import write_event_log
from protos.registry import ModelRegistry
from serving.controller.machine import Controller
from serving.controller.store import Store, controller_dir
from serving.controller.training import TrainingJob, TrainingOutcome
from serving.settings import Settings, load_settings

T0 = datetime(2026, 3, 2, 12, tzinfo=UTC)
PHASES = {"shadow": ranking_pb2.CANDIDATE_PHASE_SHADOW, "canary": ranking_pb2.CANDIDATE_PHASE_CANARY}

FAST = {
    "poll_every": "10s",
    "check_every": "1h",
    "shadow_min_requests": 30,
    "shadow_timeout": "10m",
    "canary_min_events": 2_000,
    "canary_margin": 0.1,
    "canary_min_duration": "1m",
    "canary_timeout": "30m",
    "canary_bootstrap_samples": 200,
    "train_backend": "local",
}

GOOD_SHADOW = {
    "top_k_overlap": 0.8, "rank_correlation": 0.7, "mean_abs_score_difference": 0.01,
    "champion_mean_ctr": 0.05, "candidate_mean_ctr": 0.052,
    "champion_latency_ms_p50": 2.0, "candidate_latency_ms_p50": 2.2,
    "champion_latency_ms_p99": 6.0, "candidate_latency_ms_p99": 7.0,
}


class Crash(BaseException):
    """The controller's process dies here (nothing catches a BaseException)."""


class FakeRpcError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str):
        super().__init__(details)
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


class FakeClock:
    """``now()`` and a ``sleep`` that moves it (the controller never really waits)."""

    def __init__(self, start: datetime = T0):
        self.at = start

    def now(self) -> datetime:
        return self.at

    def sleep(self, seconds: float) -> None:
        self.at += timedelta(seconds=seconds)


def settings_for(workspace: Path, **controller: Any) -> Settings:
    return load_settings(workspace=workspace, overrides={"controller": {**FAST, **controller}})


def register_base(registry: ModelRegistry, status: str, parent: str | None = None) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "weights.bin").write_bytes(uuid.uuid4().bytes)
        version = registry.register("base", tmp, {
            "data_window": {}, "feature_service": "ranker_v1", "parent": parent,
            "code_version": "test", "metrics": {},
        })
    gates = {"offline_evaluation": {"passed": status != "rejected", "reason": f"test: {status}"}}
    registry.set_status("base", version, status, gates, reason="test")
    return version


def schedule_check(fired: bool = True, calls: list[str] | None = None) -> Callable[[Settings], Any]:
    def check(settings: Settings) -> tuple[TriggerDecision, datetime]:
        if calls is not None:
            calls.append("check")
        decision = TriggerDecision(T0.isoformat(), (TriggerCheck("schedule", fired, "test schedule"),))
        return decision, T0
    return check


@dataclass
class FastTrainer:
    """Registers a version with ``status`` ("approved", "rejected", "registered") or ends
    ``blocked``; ``running_polls`` polls answer "still running" first. A handle names its
    version, so a new ``FastTrainer`` (a restarted controller) can poll an old handle."""

    registry: ModelRegistry
    status: str = "approved"
    running_polls: int = 0
    crash_in_start: bool = False
    crash_in_poll: int = 0  # crash on this poll (1-based), 0: never
    kind: str = "fast"
    polls: int = 0
    started: list[str] = field(default_factory=list)

    def start(self, job: TrainingJob) -> dict[str, Any]:
        if self.crash_in_start:
            raise Crash("killed while training in-process")
        self.started.append(job.cycle)
        if self.status == "blocked":
            return {"blocked": True}
        parent = self.registry.champion("base")
        version = register_base(self.registry, self.status, parent.version if parent else None)
        return {"version": version}

    def poll(self, handle: dict[str, Any]) -> TrainingOutcome | None:
        self.polls += 1
        if self.crash_in_poll and self.polls == self.crash_in_poll:
            raise Crash("killed while waiting for the training")
        if self.polls <= self.running_polls:
            return None
        if handle.get("blocked"):
            return TrainingOutcome("blocked", detail="freshness: the newest event is 3 days old")
        return TrainingOutcome("trained", handle["version"], self.status)

    def stop(self, handle: dict[str, Any]) -> None:
        return None


class FakeServing:
    """The live-loop admin calls of the app, in memory, over ``registry``'s champion."""

    def __init__(self, registry: ModelRegistry, shadow: dict[str, float] | None = None,
                 shadow_per_report: int = 20):
        self.registry = registry
        self.shadow_figures = dict(GOOD_SHADOW if shadow is None else shadow)
        self.shadow_per_report = shadow_per_report
        self.candidate = ""
        self.phase = "none"
        self.share = 0.0
        self.serial = 0
        self.shadow_requests = 0
        self.calls: list[str] = []
        self.crash_before: dict[str, int] = {}  # call name -> crash on its n-th call
        self.crash_after: dict[str, int] = {}
        self.unavailable: dict[str, int] = {}  # call name -> answer UNAVAILABLE n times
        self.on_stage: Callable[[str, str], None] | None = None
        self._count: dict[str, int] = {}

    # -- the port ---------------------------------------------------------------------

    def stage_candidate(self, base_version: str, phase: str, reason: str, actor: str,
                        canary_share: float = 0.0) -> ranking_pb2.AdminReply:
        def do() -> ranking_pb2.AdminReply:
            if self.registry.get("base", base_version).status != "approved":
                raise FakeRpcError(grpc.StatusCode.FAILED_PRECONDITION, f"{base_version} is not approved")
            previous = f"{self.candidate} {self.phase}"
            if (self.candidate, self.phase) != (base_version, phase):
                self.shadow_requests = 0
            self.candidate, self.phase, self.share = base_version, phase, canary_share
            if self.on_stage is not None:
                self.on_stage(base_version, phase)
            return self._reply("stage_candidate", previous, f"{base_version} {phase}")
        return self._call(f"stage_{phase}", do)

    def promote_base(self, reason: str, actor: str, base_version: str = "") -> ranking_pb2.AdminReply:
        def do() -> ranking_pb2.AdminReply:
            version = base_version or self.candidate
            previous = self._champion()
            self.registry.promote("base", version, reason=reason)
            self.candidate, self.phase = "", "none"
            return self._reply("promote_base", previous, version)
        return self._call("promote_base", do)

    def rollback_base(self, reason: str, actor: str, to_version: str = "") -> ranking_pb2.AdminReply:
        raise NotImplementedError  # the controller never rolls back

    def abort_candidate(self, reason: str, actor: str) -> ranking_pb2.AdminReply:
        def do() -> ranking_pb2.AdminReply:
            if not self.candidate:
                raise FakeRpcError(grpc.StatusCode.FAILED_PRECONDITION, "no candidate is staged")
            previous = f"{self.candidate} {self.phase}"
            self.candidate, self.phase = "", "none"
            return self._reply("abort_candidate", previous, "none")
        return self._call("abort_candidate", do)

    def candidate_report(self) -> ranking_pb2.CandidateReportReply:
        def do() -> ranking_pb2.CandidateReportReply:
            reply = ranking_pb2.CandidateReportReply(
                champion_base_version=self._champion(), candidate_base_version=self.candidate,
                phase=PHASES.get(self.phase, ranking_pb2.CANDIDATE_PHASE_UNSPECIFIED),
                canary_share=self.share, plan_serial=str(self.serial),
            )
            if self.phase == "shadow":
                self.shadow_requests += self.shadow_per_report
                reply.shadow_requests = self.shadow_requests
                for name, value in self.shadow_figures.items():
                    setattr(reply, name, value)
            return reply
        return self._call("candidate_report", do)

    def status(self) -> ranking_pb2.StatusReply:
        def do() -> ranking_pb2.StatusReply:
            return ranking_pb2.StatusReply(
                base_version=self._champion(), candidate_base_version=self.candidate,
                candidate_phase=PHASES.get(self.phase, ranking_pb2.CANDIDATE_PHASE_UNSPECIFIED),
            )
        return self._call("status", do)

    # -- helpers ----------------------------------------------------------------------

    def on_call_abort(self) -> None:
        """On-call ran ``freshrank canary abort`` (not through the controller)."""
        self.candidate, self.phase = "", "none"

    def _champion(self) -> str:
        champion = self.registry.champion("base")
        return champion.version if champion else ""

    def _reply(self, action: str, previous: str, current: str) -> ranking_pb2.AdminReply:
        self.serial += 1
        return ranking_pb2.AdminReply(action=action, previous=previous, current=current,
                                      control_serial=f"plan-{self.serial}", detail=f"{action} ok")

    def _call(self, name: str, do: Callable[[], Any]) -> Any:
        n = self._count[name] = self._count.get(name, 0) + 1
        if self.unavailable.get(name, 0) > 0:
            self.unavailable[name] -= 1
            raise FakeRpcError(grpc.StatusCode.UNAVAILABLE, "the app is restarting")
        if self.crash_before.get(name) == n:
            raise Crash(f"killed before {name}")
        result = do()
        self.calls.append(name)
        if self.crash_after.get(name) == n:
            raise Crash(f"killed after {name}")
        return result


def served_rows(
    version: str,
    users: int,
    rows_per_user: int,
    *,
    start: datetime = T0,
    distortion: float = 1.0,
    seed: int = 0,
    user_prefix: str = "u",
) -> Any:
    """Event-log rows as serving writes them: ``users`` users each shown ``rows_per_user``
    items by base ``version``; labels drawn from a true click probability ``p``, the served
    ``final_score`` is ``p`` with its odds multiplied by ``distortion`` (1: calibrated)."""
    import numpy as np
    import pyarrow as pa

    rng = np.random.default_rng(seed)
    n = users * rows_per_user
    p = rng.uniform(0.02, 0.3, n)
    labels = (rng.random(n) < p).astype(np.float32)
    odds = p / (1 - p) * distortion
    score = (odds / (1 + odds)).astype(np.float32)
    ts = [start + timedelta(seconds=int(s)) for s in np.sort(rng.integers(0, 3600, n))]
    return pa.table({
        "user_id": [f"{user_prefix}{i // rows_per_user}" for i in range(n)],
        "item_id": [f"i{int(k)}" for k in rng.integers(0, 500, n)],
        "ts": pa.array(ts, pa.timestamp("us", tz="UTC")),
        "label": labels,
        "request_id": [f"r-{version}-{i // 5}" for i in range(n)],
        "base_version": [version] * n,
        "final_score": score,
        "base_score": score,
    })


@dataclass
class World:
    settings: Settings
    registry: ModelRegistry
    champion: str
    app: FakeServing
    clock: FakeClock
    trainer: FastTrainer
    canary_distortion: float = 1.0
    checks: list[str] = field(default_factory=list)
    refreshes: list[str] = field(default_factory=list)

    def controller(self, trainer: Any = None, fired: bool = True) -> Controller:
        def refresh(settings: Settings, as_of: Any) -> float:
            self.refreshes.append(as_of.isoformat())
            return 0.0

        return Controller(
            self.settings, self.app, trainer or self.trainer,
            check=schedule_check(fired, self.checks), refresh=refresh,
            clock=self.clock.now, sleep=self.clock.sleep,
        )

    @property
    def store(self) -> Store:
        return Store(controller_dir(self.settings.registry_dir))

    def events(self) -> list[str]:
        return [e["event"] for e in self.store.history()]


@pytest.fixture
def world(tmp_path: Path) -> World:
    settings = settings_for(tmp_path / "ws")
    registry = ModelRegistry(settings.registry_dir)
    champion = register_base(registry, "approved")
    registry.promote("base", champion, reason="first")
    w = World(settings, registry, champion, FakeServing(registry), FakeClock(), FastTrainer(registry))

    def serve_canary(version: str, phase: str) -> None:  # the app serves both groups
        if phase == "canary":
            # Same draws for both groups (other users): an equal candidate's point difference
            # is 0, so the verdict turns on the interval alone.
            rows = [served_rows(w.champion, 200, 20, seed=1, user_prefix="a"),
                    served_rows(version, 200, 20, seed=1, user_prefix="b",
                                distortion=w.canary_distortion)]
            for table in rows:
                write_event_log(table, settings.feature_store.events_dir)

    w.app.on_stage = serve_canary
    return w


def champion_of(world: World) -> str:
    champion = world.registry.champion("base")
    assert champion is not None
    return champion.version
