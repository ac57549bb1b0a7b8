"""Operator switches, applied in place on the running application, and their audit log.

Why through the learner: the Learner deployment has one replica, so it is the one place a
switch can live without a restart; every Ranker replica asks it for the current controls
on its existing background poll (``serving.weight_poll_seconds``) and applies a change in
place (``Ranker._poll_controls``). Re-running the Serve app (what ``set_online_enabled``
did before) redeployed both deployments: new pids, learner state lost, failed calls.

Two ways in, both ending in the learner's ``admin_*`` methods:

- the ingress's admin rpcs ``SetOnlineEnabled`` / ``RollbackOnline`` (token required), which
  also apply the change at once on the replica that took the call;
- the functions here (``set_online_enabled``, ``rollback_online``), for the CLI or an
  operator's script connected to the Ray cluster: they call the Learner by its Serve handle.

Every action is appended to ``<workspace>/audit/operator.jsonl`` (one JSON object per line:
``at``, ``actor``, ``action``, ``reason``, ``previous``, ``current``, ``serial``), each line
fsynced before the action returns. The registry has no place for enable/disable; a
rollback to a named version is also a promotion in the registry's champion history. On a
learner restart the last ``set_online_enabled`` record restores the switch, and the last
``set_exploration`` record (its ``policy``) the exploration policy (``serving.exploration``;
the ``SetExploration`` rpc, ``freshrank explore on|off``).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from protos.atomic import fsync_dir

if TYPE_CHECKING:
    from serving.settings import Settings

logger = logging.getLogger(__name__)

__all__ = [
    "AUDIT_RELATIVE",
    "Controls",
    "append_audit",
    "audit_path",
    "read_audit",
    "rollback_online",
    "set_online_enabled",
]

AUDIT_RELATIVE = Path("audit") / "operator.jsonl"
LEARNER_DEPLOYMENT = "Learner"


def audit_path(workspace: str | os.PathLike[str]) -> Path:
    """Where a workspace keeps its operator audit log."""
    return Path(workspace) / AUDIT_RELATIVE


def append_audit(path: Path, record: dict[str, Any]) -> None:
    """Append one JSON line and fsync it (and the directory when the file is new)."""
    created = not path.exists()
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(record, sort_keys=True, default=str) + "\n"
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(line)
        handle.flush()
        os.fsync(handle.fileno())
    if created:
        fsync_dir(path.parent)


def read_audit(path: Path) -> list[dict[str, Any]]:
    """Every record of the audit log, oldest first (a torn last line is skipped)."""
    if not path.exists():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def _state(enabled: bool) -> str:
    return "enabled" if enabled else "disabled"


@dataclass
class Controls:
    """The learner-side operator state every Ranker replica follows (plain, no Ray).

    ``serial`` changes with every action (a fresh prefix per learner start, so a replica
    that knew the old learner's serial picks the new state up too). ``pinned`` is the
    snapshot a rollback restored: replicas install it when they see the new serial.
    """

    audit: Path | None
    enabled: bool = True
    clock: Callable[[], float] = time.time
    pinned: Any = None  # online_layer.publishing.PublishedSnapshot
    detail: str = ""
    exploration: dict[str, Any] | None = None  # serving.exploration policy; None: the config's
    _epoch: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    _count: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        if self.audit is None:
            return
        records = read_audit(self.audit)
        for record in reversed(records):
            if record.get("action") == "set_online_enabled":
                self.enabled = record.get("current") == "enabled"
                self.detail = _describe(record)
                logger.info("operator switch restored from the audit log: %s", self.detail)
                break
        for record in reversed(records):
            if record.get("action") == "set_exploration" and isinstance(record.get("policy"), dict):
                self.exploration = dict(record["policy"])
                logger.info("exploration restored from the audit log: %s", record.get("current"))
                break

    @property
    def serial(self) -> str:
        return f"{self._epoch}-{self._count}"

    def view(self, known_serial: str | None) -> dict[str, Any] | None:
        """The controls, or None when the caller already applied ``known_serial``."""
        with self._lock:
            if known_serial == self.serial:
                return None
            return {
                "serial": self.serial,
                "online_enabled": self.enabled,
                "snapshot": self.pinned,
                "detail": self.detail,
                "exploration": self.exploration,
            }

    def set_enabled(self, enabled: bool, reason: str, actor: str) -> dict[str, Any]:
        with self._lock:
            previous = self.enabled
            self.enabled = bool(enabled)
            return self._record("set_online_enabled", _state(previous), _state(enabled), reason, actor)

    def set_exploration(
        self, policy: dict[str, Any], previous: str, current: str, reason: str, actor: str
    ) -> dict[str, Any]:
        """Record a new exploration policy (a ``serving.exploration.ExplorationPolicy`` as a
        dict, already validated); replicas apply it at their next poll."""
        with self._lock:
            self.exploration = dict(policy)
            return self._record("set_exploration", previous, current, reason, actor, policy=dict(policy))

    def rolled_back(
        self, previous: str, current: str, snapshot: Any, reason: str, actor: str, **extra: Any
    ) -> dict[str, Any]:
        with self._lock:
            self.pinned = snapshot
            return self._record("rollback_online", previous, current, reason, actor, **extra)

    def _record(
        self, action: str, previous: str, current: str, reason: str, actor: str, **extra: Any
    ) -> dict[str, Any]:
        self._count += 1
        record = {
            "at": datetime.fromtimestamp(self.clock(), UTC).isoformat(),
            "actor": actor,
            "action": action,
            "reason": reason,
            "previous": previous,
            "current": current,
            "serial": self.serial,
            **extra,
        }
        if self.audit is not None:
            append_audit(self.audit, record)
        self.detail = _describe(record)
        logger.warning("operator action: %s", self.detail)
        return record


def _describe(record: dict[str, Any]) -> str:
    return (
        f"{record.get('action')} {record.get('previous')} -> {record.get('current')} by "
        f"{record.get('actor')} at {record.get('at')}: {record.get('reason')}"
    )


# ---------------------------------------------------------------- for the CLI / operators


def _learner_handle(settings: Settings) -> Any:
    from ray import serve

    return serve.get_deployment_handle(LEARNER_DEPLOYMENT, app_name=settings.serving.app_name)


def set_online_enabled(
    settings: Settings, enabled: bool, reason: str, actor: str
) -> dict[str, Any]:
    """Turn the online correction off (base alone) or on in the running application.

    In place: the learner keeps its state, every Ranker replica applies the switch within
    ``serving.weight_poll_seconds``. Needs a connection to the Ray cluster running the app
    (``ray.init(address=...)``). Returns the audit record.
    """
    if not reason.strip() or not actor.strip():
        raise ValueError("set_online_enabled needs a reason and an actor (for the audit log)")
    return dict(_learner_handle(settings).admin_set_online_enabled.remote(enabled, reason, actor).result())


def rollback_online(
    settings: Settings,
    to_version: str | None = None,
    reason: str = "",
    actor: str = "",
) -> dict[str, Any]:
    """Roll the online layer back in place: to the learner's last ready snapshot, or to the
    named registry online version (refused unless it belongs to the serving base). Every
    replica installs it within ``serving.weight_poll_seconds``. Returns the audit record."""
    if not reason.strip() or not actor.strip():
        raise ValueError("rollback_online needs a reason and an actor (for the audit log)")
    return dict(
        _learner_handle(settings).admin_rollback.remote(to_version or "", reason, actor).result()
    )
