"""One cycle of the live loop as a state machine whose every transition is on disk.

Steps (``store.STEPS``) and what a controller restarted in each one does (the resume rule):

check
    Features computed, triggers judged (``data.check``), reasons recorded. Nothing fired:
    the cycle ends ``not_triggered``. Resume: judged again (it changes nothing).
features
    Online store refreshed (``data.refresh``). Resume: run again (incremental).
training
    The candidate trained with ``--no-promote`` (``training``). The handle is saved before
    the controller waits. Resume: no handle (it died while starting one, or while training
    in-process): ``abandoned``; a handle: polled (``Trainer.poll`` says what a dead
    controller's handle means: still running, finished with a version, or gone:
    ``abandoned``). Data gates blocked: ``blocked``; an error: ``failed``; past
    ``training_timeout``: stopped, ``failed``.
gate
    The registered version's status in the registry: ``approved`` goes on; ``rejected``
    ends ``rejected`` (it never serves); ``registered`` (not evaluated) ends
    ``not_evaluated``. Resume: read again.
shadow, canary (``staging``)
    Staged, then judged (``verdicts``). Resume: a stage call not acknowledged is re-issued;
    an acknowledged one is re-judged if the app still reports this candidate in this phase,
    else the cycle ends ``aborted`` (on-call or a restart removed it); an abort in progress
    is re-issued. Failing, or no verdict by the timeout: aborted.
promote
    ``PromoteBase`` naming the version. Resume: done if the app already serves it, else
    re-issued (a named promote is idempotent).

Outcomes: ``not_triggered``, ``blocked``, ``failed``, ``rejected``, ``not_evaluated``,
``aborted``, ``abandoned``, ``promoted``. Unreachable app (``port.RETRYABLE``): the step
waits and tries again at the next poll; any other refusal, or an unexpected error, ends the
cycle ``failed`` (a staged candidate is aborted first). Nothing here touches the champion
except promote.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import grpc

from protos.errors import FreshrankError
from protos.registry import ModelRegistry
from serving.controller import staging
from serving.controller.moves import OUTCOMES, End, Move, Next, Wait
from serving.controller.port import ServingPort, rpc_failure
from serving.controller.store import CycleState, Store, controller_dir, finite
from serving.controller.training import Trainer, TrainingJob

if TYPE_CHECKING:
    import pyarrow as pa

    from base_model.triggers import TriggerDecision
    from serving.settings import Settings

logger = logging.getLogger(__name__)

__all__ = ["OUTCOMES", "Controller", "End", "Next", "Wait"]

Clock = Callable[[], datetime]


def _utc_now() -> datetime:
    return datetime.now(UTC)


class Controller:
    """Drives cycles for one workspace; the caller holds ``store.ControllerLock``.

    ``check``, ``refresh`` and ``events`` default to the workspace's own (``data``, the
    event log); ``clock`` and ``sleep`` to the wall clock (tests pass a fake pair).
    """

    def __init__(
        self,
        settings: Settings,
        port: ServingPort,
        trainer: Trainer,
        *,
        check: Callable[[Settings], tuple[TriggerDecision, datetime]] | None = None,
        refresh: Callable[[Settings, datetime], float] | None = None,
        events: Callable[[datetime], pa.Table] | None = None,
        clock: Clock = _utc_now,
        sleep: Callable[[float], None] = time.sleep,
    ):
        from serving.controller import data

        self.settings = settings
        self.cfg = settings.controller
        self.port = port
        self.trainer = trainer
        self.registry = ModelRegistry(settings.registry_dir)
        self.store = Store(controller_dir(settings.registry_dir))
        self.clock = clock
        self.sleep = sleep
        self._check = check or data.check
        self._refresh = refresh or data.refresh
        self.events = events or self._read_events
        self._resumed: str | None = None  # the step a restarted controller found on disk

    # ------------------------------------------------------------------------- the loop

    def run_cycle(self) -> dict[str, Any]:
        """Resume the cycle on disk, or start one with a check; run it to its end and
        return the summary (``outcome``, ``reason``, ``version``...)."""
        state, _ = self.store.load()
        if state is None:
            state = CycleState(cycle=self._new_cycle_id(), step="check", started_at=self.now_iso())
            self._save(state)
            self.record(state, "start", "cycle started")
        else:
            self._resumed = state.step
            self.record(state, "resumed", f"a controller restarted in step {state.step}")
        waited = ""
        while True:
            handler = getattr(self, f"_step_{state.step}")
            try:
                move: Move = handler(state)
            except grpc.RpcError as error:
                failure = rpc_failure(error)
                move = Wait(f"app: {failure}") if failure.retryable else self._failed(state, f"app refused: {failure}")
            except Exception as exc:  # a bug or a broken workspace: end the cycle, keep the loop
                logger.exception("cycle %s failed in step %s", state.cycle, state.step)
                move = self._failed(state, f"{state.step}: {type(exc).__name__}: {exc}")
            self._resumed = None
            if isinstance(move, Next):
                self.record(state, "next", f"{state.step} -> {move.step}")
                state.step = move.step
                self._save(state)
                waited = ""
            elif isinstance(move, Wait):
                if move.reason and not waited:  # once per step: a poll is not an event
                    self.record(state, "waiting", move.reason)
                waited = move.reason or "waiting"
                self.sleep(self.cfg.duration("poll_every").total_seconds())
            else:
                return self._finish(state, move)

    def run(
        self,
        *,
        once: bool = False,
        max_cycles: int = 0,
        on_end: Callable[[dict[str, Any]], None] | None = None,
    ) -> list[dict[str, Any]]:
        """Cycles every ``check_every`` until ``max_cycles`` (0: forever); ``once``: one.
        ``on_end`` gets each cycle's summary as it ends."""
        done = []
        while True:
            done.append(self.run_cycle())
            if on_end is not None:
                on_end(done[-1])
            if once or (max_cycles and len(done) >= max_cycles):
                return done
            self.sleep(self.cfg.duration("check_every").total_seconds())

    # ------------------------------------------------------------------------- the steps

    def _step_check(self, state: CycleState) -> Move:
        try:
            decision, as_of = self._check(self.settings)
        except (FreshrankError, ValueError, OSError) as exc:
            return End("blocked", f"trigger check: {exc}")
        except Exception as exc:  # a library failure: this cycle ends, the loop goes on
            logger.exception("trigger check failed")
            return End("failed", f"trigger check: {type(exc).__name__}: {exc}")
        state.decision = decision.to_dict()
        state.as_of = as_of.isoformat()
        self.record(state, "triggers", decision.summary(), decision=state.decision, as_of=state.as_of)
        if not decision.train:
            return End("not_triggered", decision.summary())
        return Next("features")

    def _step_features(self, state: CycleState) -> Move:
        try:
            seconds = self._refresh(self.settings, self.as_of(state))
        except Exception as exc:  # Feast, the event log, a half-applied repo
            logger.exception("feature refresh failed")
            return End("failed", f"feature refresh: {type(exc).__name__}: {exc}")
        self.record(state, "features", f"features refreshed up to {state.as_of}", seconds=round(seconds, 3))
        return Next("training")

    def _step_training(self, state: CycleState) -> Move:
        if state.training is None:
            if self._resumed == "training":
                return End("abandoned", "the controller stopped while it started (or ran in-process) "
                           "the training; no job to wait for")
            job = TrainingJob(state.cycle, self.as_of(state), state.decision or {})
            started = self.now_iso()
            try:
                handle = self.trainer.start(job)
            except Exception as exc:  # the job API refused or is unreachable; no process
                logger.exception("starting the training failed")
                return End("failed", f"could not start the training: {type(exc).__name__}: {exc}")
            state.training = {"handle": handle, "started_at": started, "backend": self.trainer.kind}
            self._save(state)
            self.record(state, "training", f"training started ({self.trainer.kind})", handle=handle)
        handle = state.training["handle"]
        try:
            outcome = self.trainer.poll(handle)
        except Exception as exc:  # the job API or the process table could not be read: retry
            logger.warning("polling the training failed: %s", exc)
            outcome = None
        if outcome is None:
            elapsed = self.clock() - datetime.fromisoformat(state.training["started_at"])
            if elapsed > self.cfg.duration("training_timeout"):
                self.trainer.stop(handle)
                return End("failed", f"training still running after {self.cfg.training_timeout}: stopped")
            return Wait(f"training running ({self.trainer.kind})")
        figures = {"training": {"status": outcome.status, "version": outcome.version,
                                "detail": outcome.detail}}
        if outcome.status == "trained" and outcome.version:
            state.version = outcome.version
            self.record(state, "trained", f"registered {outcome.version} ({outcome.detail})",
                        metrics=outcome.result.get("metrics", {}))
            return Next("gate")
        if outcome.status == "blocked":
            return End("blocked", f"data gates: {outcome.detail}", figures)
        if outcome.status == "gone":
            return End("abandoned", outcome.detail, figures)
        return End("failed", f"training failed: {outcome.detail}", figures)

    def _step_gate(self, state: CycleState) -> Move:
        version = self.registry.get("base", str(state.version))
        champion = self.registry.champion("base")
        state.champion = champion.version if champion else None
        gates = {k: {"passed": v.get("passed"), "reason": v.get("reason")}
                 for k, v in version.gate_results.items() if isinstance(v, dict)}
        self.record(state, "gate", f"{version.version} is {version.status}", gates=gates,
                    champion=state.champion)
        if version.status == "approved":
            return Next("shadow")
        if version.status == "rejected":
            failed = "; ".join(f"{k}: {g['reason']}" for k, g in gates.items() if g["passed"] is False)
            return End("rejected", f"{version.version} rejected by its gates: {failed or 'see gates'}",
                       {"gates": gates})
        if version.status == "registered":
            return End("not_evaluated", f"{version.version} was not evaluated (no validation rows)")
        return End("abandoned", f"{version.version} is {version.status}: not a candidate")

    def _step_shadow(self, state: CycleState) -> Move:
        return staging.shadow(self, state)

    def _step_canary(self, state: CycleState) -> Move:
        return staging.canary(self, state)

    def _step_promote(self, state: CycleState) -> Move:
        version = str(state.version)
        if state.staged and state.staged.get("abort"):
            return staging.abort(self, state)
        if self.port.status().base_version == version:
            return End("promoted", f"{version} serves as the champion", {"previous": state.champion})
        reason = f"cycle {state.cycle}: " + str(state.verdicts.get("canary", {}).get("reason", "canary passed"))
        try:
            reply = self.port.promote_base(reason[:500], self.cfg.actor, base_version=version)
        except grpc.RpcError as error:
            failure = rpc_failure(error)
            if failure.retryable:
                raise
            return staging.begin_abort(self, state, f"PromoteBase {version} refused: {failure}", {})
        self.record(state, "promoted", f"PromoteBase {version}: {reply.detail}",
                    previous=reply.previous, current=reply.current, serial=reply.control_serial)
        return End("promoted", f"{version} promoted in place (was {reply.previous or state.champion})",
                   {"previous": reply.previous or state.champion})

    # ------------------------------------------------------------------------- helpers

    def _failed(self, state: CycleState, reason: str) -> Move:
        """An unexpected error: a staged candidate is aborted first (the abort is issued by
        the step at the next poll, with the usual retries), otherwise the cycle ends."""
        if state.step in ("shadow", "canary", "promote") and state.staged is not None:
            state.staged["abort"] = {"reason": reason, "figures": {}}
            self._save(state)
            return Wait(reason)
        return End("failed", reason)

    def resumed(self, step: str) -> bool:
        """Whether this is a restarted controller's first look at ``step``."""
        return self._resumed == step

    def now_iso(self) -> str:
        return self.clock().astimezone(UTC).isoformat()

    @staticmethod
    def as_of(state: CycleState) -> datetime:
        return datetime.fromisoformat(str(state.as_of))

    def record(self, state: CycleState, event: str, reason: str, **figures: Any) -> None:
        logger.info("cycle %s %s %s: %s", state.cycle, state.step, event, reason)
        self.store.record(state.cycle, state.step, event, reason, **figures)

    def save(self, state: CycleState) -> None:
        self._save(state)

    def _save(self, state: CycleState) -> None:
        state.verdicts = finite(state.verdicts)
        _, last = self.store.load()
        self.store.save(state, last)

    def _finish(self, state: CycleState, end: End) -> dict[str, Any]:
        summary = {
            "cycle": state.cycle, "outcome": end.outcome, "reason": end.reason,
            "version": state.version, "champion_before": state.champion, "step": state.step,
            "started_at": state.started_at, "ended_at": self.now_iso(),
            "triggers": (state.decision or {}).get("reasons", []), **finite(end.figures),
        }
        self.store.record(state.cycle, state.step, end.outcome, end.reason, **end.figures)
        self.store.save(None, summary)
        logger.info("cycle %s ended %s: %s", state.cycle, end.outcome, end.reason)
        return summary

    def _new_cycle_id(self) -> str:
        return f"{self.clock():%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"

    def _read_events(self, start: datetime) -> pa.Table:
        from feature_store.event_log import read_event_log

        return read_event_log(self.settings.feature_store.events_dir, start=start)
