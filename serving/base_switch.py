"""The Learner's side of the live loop: stage, promote, roll back and abort base versions
in the running app, each in place, audited, and never leaving a mismatched pair.

Why in the Learner: it is the one replica that owns online weights, so it is where the rule
"an online layer serves only with the base it was trained for" can be kept during a swap.
Every Ranker replica follows the plan (``serving.plan``) on its control poll and switches
bases by a reference swap, after loading them off the request path.

Order of each action (a crash at any point leaves a servable, consistent pair: the
registry's champion pointer is the truth on restart, ``serving.plan.reconcile``):

- ``stage``: check the version (registered, not rejected); for a canary, start its own
  online layer (feedback for requests it served is routed to it, ``LearnerDurability``);
  save the plan; audit.
- ``promote``: stop the canary's layer; rebase the champion layer on the new base, warm-
  started from what that base served (``serving.warm_replay``); point the registry's base
  champion at it; save the plan; audit. The new layer publishes only once ready; replicas
  serve the new base alone meanwhile (``FALLBACK_REASON_ONLINE_ABSENT``, saying why).
- ``rollback``: the previous champion (or a named version): rebase onto it and restore the
  newest online snapshot registered for it, publish and pin it; registry pointers (base and
  online) back; plan; audit.
- ``abort``: stop the canary's layer; plan without a candidate; audit.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from protos.errors import FailedPrecondition, NotFound
from serving.admin import append_audit
from serving.plan import CANARY, ServingPlan, load_plan, save_plan
from serving.shadow import merge_stats

if TYPE_CHECKING:
    from online_layer.learner import OnlineLearner
    from online_layer.publishing import PublishedSnapshot, ServingView
    from protos.registry import ModelRegistry, ModelVersion
    from serving.durability import LearnerDurability
    from serving.settings import Settings

from serving.known_users import KnownUsers

logger = logging.getLogger(__name__)

__all__ = ["BaseSwitch", "snapshot_for_base"]

SERVABLE = ("approved", "promoted")


def snapshot_for_base(registry: ModelRegistry, base_version: str) -> ModelVersion | None:
    """The newest registered online version trained for ``base_version`` (None if none)."""
    for version in reversed(registry.versions("online")):
        if version.lineage.get("base_version") == base_version and version.status != "rejected":
            return version
    return None


class BaseSwitch:
    """Holds the plan and the canary's layer; runs the actions (module docstring)."""

    def __init__(
        self,
        settings: Settings,
        registry: ModelRegistry,
        learner: OnlineLearner,
        durability: LearnerDurability,
        audit: Path,
        known_users: KnownUsers | None = None,
    ) -> None:
        self._settings = settings
        self._known_users = known_users or KnownUsers()  # the guard's established users
        self._registry = registry
        self._learner = learner
        self._durability = durability
        self._audit = audit
        self._lock = threading.Lock()
        self._shadow: dict[str, dict[str, Any]] = {}  # replica -> its ShadowStats.to_dict()
        self.pinned: PublishedSnapshot | None = None  # a rollback's restored layer
        self.plan = load_plan(settings.workspace, learner.base_version)
        if self.plan.phase == CANARY:
            self._start_canary(self.plan.candidate)

    # -- views for the replicas and the controller ---------------------------------------

    def view(self, known_serial: str | None) -> dict[str, Any] | None:
        """The plan (and a pinned snapshot), or None when the caller has ``known_serial``."""
        plan = self.plan
        if plan.serial == known_serial:
            return None
        pinned = self.pinned
        return {"plan": plan, "snapshot": pinned if pinned is not None and pinned.base_version == plan.champion else None}

    def layer_view(self, base_version: str, known_version: str | None) -> ServingView | None:
        """The weight poll of the layer correcting ``base_version`` (None: no such layer)."""
        if base_version == self._learner.base_version:
            return self._learner.serving_view(known_version)
        canary = self._durability.canary
        if canary is not None and canary.base_version == base_version:
            return canary.serving_view(known_version)
        return None

    def observe_shadow(self, replica: str, stats: dict[str, Any]) -> None:
        self._shadow[replica] = stats

    def report(self) -> dict[str, Any]:
        plan = self.plan
        figures = merge_stats(self._shadow.values(), plan.serial) if plan.candidate else {}
        return {
            "champion_base_version": plan.champion,
            "candidate_base_version": plan.candidate,
            "phase": plan.phase,
            "canary_share": plan.share,
            "plan_serial": plan.serial,
            "staged_at_unix": plan.staged_at,
            "detail": plan.detail,
            **figures,
        }

    # -- actions ---------------------------------------------------------------------------

    def stage(self, version: str, phase: str, share: float, reason: str, actor: str) -> dict[str, Any]:
        with self._lock:
            plan = self.plan
            self._servable(version)
            if version == plan.champion:
                raise FailedPrecondition(f"{version} is already the champion base")
            if plan.candidate and plan.candidate != version:
                raise FailedPrecondition(
                    f"candidate {plan.candidate} is staged ({plan.phase}): abort it first"
                )
            new = plan.next(candidate=version, phase=phase, share=share if phase == CANARY else 0.0,
                            staged_at=time.time() if plan.candidate != version or plan.phase != phase else plan.staged_at,
                            detail=f"{phase} {version}: {reason}")
            if phase == CANARY and self._durability.canary is None:
                self._start_canary(version)
            elif phase != CANARY:
                self._stop_canary()
            return self._commit(new, "stage_candidate", _describe(plan), _describe(new), reason, actor)

    def abort(self, reason: str, actor: str) -> dict[str, Any]:
        with self._lock:
            plan = self.plan
            if not plan.candidate:
                raise FailedPrecondition("no candidate is staged: nothing to abort")
            self._stop_canary()
            new = plan.next(candidate="", phase="", share=0.0, staged_at=0.0,
                            detail=f"{plan.phase} of {plan.candidate} aborted: {reason}")
            return self._commit(new, "abort_candidate", _describe(plan), _describe(new), reason, actor)

    def promote(self, version: str, reason: str, actor: str) -> dict[str, Any]:
        from serving.warm_replay import warm_start_batches

        with self._lock:
            plan = self.plan
            target = version or plan.candidate
            if not target:
                raise FailedPrecondition("no candidate is staged: name the base_version to promote")
            if target == plan.champion:  # idempotent: a controller may re-issue after a crash
                return self._commit(plan.next(), "promote_base", plan.champion, target,
                                    reason, actor, note="already the champion")
            embedding_dim = self._known_base(self._servable(target))
            with self._durability.lock:
                self._stop_canary()
                replay = warm_start_batches(
                    self._settings.workspace, target, self._settings.online_layer.join_window_s
                )
                report = self._learner.rebase(target, embedding_dim, replay=replay)
            self._registry.promote("base", target, reason=f"promoted by {actor}: {reason}")
            self.pinned = None
            new = ServingPlan(champion=target).next(
                detail=f"base {target} promoted; its online layer serves once ready "
                f"(warm start: {report.warm_start_examples} logged examples replayed)")
            return self._commit(new, "promote_base", plan.champion, target, reason, actor,
                                warm_start_examples=report.warm_start_examples)

    def rollback(self, to_version: str, reason: str, actor: str) -> dict[str, Any]:
        from serving.snapshots import SNAPSHOT_FILE

        with self._lock:
            plan = self.plan
            target = to_version or self._previous_champion(plan.champion)
            if target == plan.champion:
                raise FailedPrecondition(f"{target} is already the champion base")
            candidate = self._servable(target)
            online = snapshot_for_base(self._registry, target)
            with self._durability.lock:
                self._stop_canary()
                self._learner.rebase(target, self._known_base(candidate))
                pinned = None
                if online is not None:
                    blob = (Path(online.path) / SNAPSHOT_FILE).read_bytes()
                    with self._learner._lock:  # the ticker must not learn into a half-restore
                        self._learner.model.restore(blob, target)
                    pinned = self._learner.publish()
            self._registry.promote("base", target, reason=f"rollback by {actor}: {reason}")
            # The base rolled back from never serves again by accident (the controller and
            # `promote` refuse a rejected version); a new training makes a new version.
            self._registry.set_status("base", plan.champion, "rejected",
                                      reason=f"rolled back by {actor}: {reason}")
            if online is not None:
                self._registry.promote("online", online.version, reason=f"base rollback to {target} by {actor}")
            self.pinned = pinned
            layer = f"online {online.version}" if online is not None else "no online layer (base alone until ready)"
            new = ServingPlan(champion=target).next(detail=f"rolled back to base {target} with {layer}")
            return self._commit(new, "rollback_base", plan.champion, target, reason, actor,
                                online=online.version if online is not None else "")

    # -- internals -------------------------------------------------------------------------

    def _servable(self, version: str) -> ModelVersion:
        from protos.registry import UnknownVersionError

        try:
            found = self._registry.get("base", version)
        except UnknownVersionError as error:
            raise NotFound(str(error)) from None
        if found.status not in SERVABLE:
            raise FailedPrecondition(
                f"base {version} is {found.status!r}: only an approved base may serve "
                "(its gates must pass)"
            )
        return found

    def _known_base(self, version: ModelVersion) -> int:
        """Load a base about to serve: its users become established for the guard; returns
        its embedding size (the new layer's width)."""
        from base_model.artifact import BaseScorer

        base = BaseScorer.load(version.path)
        self._known_users.add(base.users)
        return int(base.embedding_dim)

    def _previous_champion(self, current: str) -> str:
        for entry in reversed(self._registry.champion_history("base")):
            if entry.get("version") == current and entry.get("previous"):
                return str(entry["previous"])
        raise FailedPrecondition(f"base {current} has no previous champion to roll back to")

    def _start_canary(self, version: str) -> None:
        from base_model.artifact import BaseScorer
        from online_layer.learner import OnlineLearner

        base = BaseScorer.load(self._servable(version).path)
        canary = OnlineLearner(
            self._settings.online_layer,
            base_version=base.version,
            embedding_dim=base.embedding_dim,
            established_users=KnownUsers(*self._known_users.vocabularies, base.users),
            sequencer=self._learner.sequencer,  # the champion's numbers: no name repeats
        )
        canary.start_ticker()
        self._durability.canary = canary
        logger.info("canary layer started for base %s", version)

    def _stop_canary(self) -> None:
        canary, self._durability.canary = self._durability.canary, None
        if canary is not None:
            canary.stop_ticker()
            logger.info("canary layer for base %s stopped", canary.base_version)

    def _commit(self, plan: ServingPlan, action: str, previous: str, current: str,
                reason: str, actor: str, **extra: Any) -> dict[str, Any]:
        save_plan(self._settings.workspace, plan)
        self.plan = plan
        record = {
            "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "actor": actor,
            "action": action,
            "reason": reason,
            "previous": previous,
            "current": current,
            "serial": plan.serial,
            **extra,
        }
        append_audit(self._audit, record)
        logger.warning("live loop: %s %s -> %s by %s: %s", action, previous, current, actor, reason)
        return record


def _describe(plan: ServingPlan) -> str:
    if not plan.candidate:
        return plan.champion
    share = f" {plan.share:g}" if plan.phase == CANARY else ""
    return f"{plan.champion} + {plan.phase}{share} {plan.candidate}"
