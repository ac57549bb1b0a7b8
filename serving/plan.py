"""The serving plan: which base is champion and which candidate, if any, stands beside it.

The live loop (``freshrank run``, or on-call by hand) changes bases in the running app
through one small record, owned by the Learner deployment (it has one replica) and followed
by every Ranker replica on its existing control poll:

- ``champion``: the base that serves everyone (outside a canary), with the online layer
  trained for it;
- ``candidate`` and ``phase``: ``shadow`` (the candidate scores a copy of the champion's
  traffic, never served) or ``canary`` (a stable ``share`` of users, chosen by a hash of the
  user id, is served by the candidate with its own online layer);
- ``serial``: changes with every action, so a replica applies each plan once.

The plan is kept in ``<workspace>/serving/plan.json`` (atomic writes), but the registry's
champion pointer is the truth for the champion: a crash between promoting in the registry
and writing the plan is resolved on load (``reconcile``) toward the registry, so a restart
always serves a champion base with the online layer that belongs to it.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from protos.atomic import write_text_atomic
from protos.errors import InvalidInput

__all__ = [
    "CANARY",
    "MAX_CANARY_SHARE",
    "PHASES",
    "SHADOW",
    "ServingPlan",
    "in_canary",
    "load_plan",
    "plan_path",
    "save_plan",
]

SHADOW = "shadow"
CANARY = "canary"
PHASES = ("", SHADOW, CANARY)
MAX_CANARY_SHARE = 0.5  # a canary is a minority of users; more is a promotion
PLAN_RELATIVE = Path("serving") / "plan.json"


@dataclass(frozen=True)
class ServingPlan:
    """Champion and candidate bases (module docstring); immutable, replaced per action."""

    champion: str
    candidate: str = ""
    phase: str = ""
    share: float = 0.0
    serial: str = ""
    staged_at: float = 0.0
    detail: str = ""

    def __post_init__(self) -> None:
        if self.phase not in PHASES:
            raise InvalidInput(f"phase must be one of {PHASES[1:]}, got {self.phase!r}")
        if bool(self.candidate) != bool(self.phase):
            raise InvalidInput("a candidate needs a phase, and a phase a candidate")
        if self.candidate and self.candidate == self.champion:
            raise InvalidInput(f"candidate {self.candidate!r} is already the champion")
        if self.phase == CANARY and not 0.0 < self.share <= MAX_CANARY_SHARE:
            raise InvalidInput(
                f"canary_share must be in (0, {MAX_CANARY_SHARE}], got {self.share}"
            )
        if self.phase != CANARY and self.share != 0.0:
            raise InvalidInput("canary_share is only for the canary phase")

    @property
    def bases(self) -> tuple[str, ...]:
        """The base versions a replica must have loaded for this plan."""
        return (self.champion, self.candidate) if self.candidate else (self.champion,)

    def base_for(self, user_id: str) -> str:
        """The base that serves ``user_id`` under this plan."""
        if self.phase == CANARY and in_canary(user_id, self.share):
            return self.candidate
        return self.champion

    def next(self, **changes: Any) -> ServingPlan:
        """This plan with ``changes`` and a fresh serial (and staging time, if staged)."""
        staged = changes.pop("staged_at", None)
        plan = replace(self, **changes, serial=_serial())
        if staged is not None:
            plan = replace(plan, staged_at=float(staged))
        return plan

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _serial() -> str:
    return f"{int(time.time() * 1000):x}-{uuid.uuid4().hex[:6]}"


def stable_digest(key: str, person: bytes = b"") -> int:
    """A 64-bit hash of ``key``, the same in every replica, process and restart (Python's
    ``hash`` is salted per process); ``person`` (blake2b's personalisation) makes splits
    by the same key independent of each other."""
    return int.from_bytes(
        hashlib.blake2b(key.encode("utf-8"), digest_size=8, person=person).digest(), "big"
    )


def in_share(key: str, share: float, person: bytes = b"") -> bool:
    """Whether ``key`` falls in a stable ``share`` of all keys (``stable_digest``)."""
    return stable_digest(key, person) / 2.0**64 < share


def in_canary(user_id: str, share: float) -> bool:
    """Whether ``user_id`` falls in a canary of ``share``: a stable hash of the id, so a
    user sees one base for the whole canary and grows in with the share."""
    return in_share(user_id, share)


def plan_path(workspace: str | os.PathLike[str]) -> Path:
    return Path(workspace) / PLAN_RELATIVE


def save_plan(workspace: str | os.PathLike[str], plan: ServingPlan) -> None:
    """Write the plan atomically (a crash leaves the previous plan)."""
    path = plan_path(workspace)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(plan.to_dict(), sort_keys=True) + "\n")


def load_plan(workspace: str | os.PathLike[str], registry_champion: str) -> ServingPlan:
    """The saved plan reconciled with the registry's champion (``reconcile``)."""
    path = plan_path(workspace)
    saved: ServingPlan | None = None
    if path.exists():
        try:
            values = json.loads(path.read_text(encoding="utf-8"))
            saved = ServingPlan(**{k: values[k] for k in ServingPlan.__dataclass_fields__ if k in values})
        except (ValueError, TypeError, KeyError, InvalidInput):
            saved = None  # unreadable: the registry's champion alone is safe
    return reconcile(saved, registry_champion)


def reconcile(saved: ServingPlan | None, registry_champion: str) -> ServingPlan:
    """The registry's champion wins: a saved plan for another champion (a crash between the
    registry's promotion and the plan's write, or a promotion by ``freshrank train``) keeps
    its candidate only if that candidate is not the new champion."""
    if saved is None:
        return ServingPlan(champion=registry_champion, serial=_serial())
    if saved.champion == registry_champion:
        return saved
    if saved.candidate and saved.candidate != registry_champion:
        return replace(saved, champion=registry_champion, serial=_serial(),
                       detail=f"champion {registry_champion} from the registry")
    return ServingPlan(champion=registry_champion, serial=_serial(),
                       detail=f"champion {registry_champion} from the registry")
