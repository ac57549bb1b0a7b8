"""The controller's record in the registry: one state file, one history, one lock.

Layout (``<registry>/controller/``)::

    state.json      the cycle in progress (step, version, handles) and the last one's outcome;
                    replaced atomically (``protos.atomic``) at every transition
    history.jsonl   one line per step and verdict, with its reason and figures (appended,
                    fsynced; a line torn by a crash is skipped when read)
    controller.lock held (``fcntl.flock``, exclusive, non-blocking) by the one running
                    controller; the kernel drops it when that process dies

Why a state file and not the history alone: a restarted controller must know, without
replaying, which step it was in and what that step had already done (a job id, whether a
candidate was staged); the history is for people and tests.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

from protos.atomic import write_json_atomic
from protos.errors import FailedPrecondition

__all__ = [
    "ControllerBusy",
    "ControllerLock",
    "CycleState",
    "STEPS",
    "Store",
    "controller_dir",
    "finite",
]

#: The steps of a cycle, in order; a cycle ends in one of ``OUTCOMES`` (``machine``).
STEPS = ("check", "features", "training", "gate", "shadow", "canary", "promote")


def controller_dir(registry_root: str | os.PathLike[str]) -> Path:
    return Path(registry_root) / "controller"


@dataclass
class CycleState:
    """Where one cycle is. Mutable; the store persists it at every transition.

    ``staged`` (shadow and canary): ``{"phase", "requested_at", "confirmed_at", "serial"}``,
    ``confirmed_at`` set once the app acknowledged the stage call.
    """

    cycle: str
    step: str
    started_at: str
    as_of: str | None = None
    decision: dict[str, Any] | None = None
    training: dict[str, Any] | None = None
    version: str | None = None
    champion: str | None = None
    staged: dict[str, Any] | None = None
    verdicts: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> CycleState:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


class Store:
    """Reads and writes ``state.json`` and ``history.jsonl`` under ``directory``."""

    def __init__(self, directory: str | os.PathLike[str]):
        self.directory = Path(directory)
        self.state_path = self.directory / "state.json"
        self.history_path = self.directory / "history.jsonl"

    def load(self) -> tuple[CycleState | None, dict[str, Any] | None]:
        """The cycle in progress (None: idle) and the last finished cycle's summary."""
        if not self.state_path.exists():
            return None, None
        record = json.loads(self.state_path.read_text(encoding="utf-8"))
        current = record.get("current")
        return (CycleState.from_dict(current) if current else None), record.get("last")

    def save(self, current: CycleState | None, last: dict[str, Any] | None) -> None:
        write_json_atomic(
            self.state_path,
            {"current": current.to_dict() if current else None, "last": last, "saved_at": now_iso()},
        )

    def record(self, cycle: str, step: str, event: str, reason: str, **figures: Any) -> dict[str, Any]:
        """Append one line (``at``, ``cycle``, ``step``, ``event``, ``reason``, figures)."""
        entry = {"at": now_iso(), "cycle": cycle, "step": step, "event": event, "reason": reason,
                 **{k: finite(v) for k, v in figures.items()}}
        self.directory.mkdir(parents=True, exist_ok=True)
        line = json.dumps(entry, default=str, allow_nan=False) + "\n"
        with open(self.history_path, "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
        return entry

    def history(self) -> list[dict[str, Any]]:
        return list(self._lines())

    def _lines(self) -> Iterator[dict[str, Any]]:
        if not self.history_path.exists():
            return
        for line in self.history_path.read_text(encoding="utf-8").splitlines():
            try:
                yield json.loads(line)
            except json.JSONDecodeError:  # the last line of a controller killed mid-write
                continue


class ControllerBusy(FailedPrecondition):
    """Another controller holds the workspace's lock."""


class ControllerLock:
    """The one-controller-per-workspace lock: ``with ControllerLock(dir): ...``.

    Non-blocking: a second controller fails at once with ``ControllerBusy`` naming the
    holder's pid (written into the file by the holder).
    """

    def __init__(self, directory: str | os.PathLike[str]):
        self.path = Path(directory) / "controller.lock"
        self._handle: Any = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+", encoding="utf-8")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise ControllerBusy(
                f"another controller (pid {holder}) is running on this workspace "
                f"({self.path}); only one `freshrank run` may drive a registry"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self._handle = handle

    def release(self) -> None:
        if self._handle is not None:
            fcntl.flock(self._handle.fileno(), fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None

    def __enter__(self) -> ControllerLock:
        self.acquire()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


def finite(value: Any) -> Any:
    """NaN and infinities become None (JSON has neither), in nested figures too."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def now_iso() -> str:
    return datetime.now(UTC).isoformat()
