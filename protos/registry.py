"""A model registry on local disk: versions with lineage, a status, and a champion pointer per tier.

Why it looks like this: serving, the trainer, the online learner and on-call all read it while a
writer may be killed at any moment (a preempted Ray job, an OOM, a Ctrl-C). So every change is
made visible by one atomic filesystem step and nothing else:

- a new version is copied into ``<tier>/.staging/`` and appears under ``<tier>/versions/`` by a
  single ``rename`` of its complete, fsynced directory;
- the small mutable files (``status.json`` of a version, ``champion.json`` of a tier) are
  written to a temporary file in ``.staging`` (same filesystem), fsynced, then
  ``os.replace``-d over the old one.

A reader therefore sees a version whole or not at all, and the champion pointer old or new,
never torn. Writers serialise on an ``fcntl.flock`` of ``<tier>/.lock`` (released by the kernel
when a writer dies), and the next writer removes what a dead one left in ``.staging``.
Readers take no lock. POSIX only (Linux, macOS).

Layout::

    <root>/<tier>/                 tier in TIERS ("base", "online")
        .lock                      writers' lock file
        .staging/                  partial copies and temporary JSON files (never read)
        versions/<tier>-0001/      one directory per version, immutable once visible
            version.json           {"tier", "version", "created_at", "lineage": {...}}
            status.json            {"status", "gate_results", "history": [...]} (replaced)
            ...                    the artifact files, copied from ``source_dir``
        champion.json              {"version", "reason", "at", "history": [...]} (replaced)

Why in ``protos/``: both tiers' artifacts live here, and serving, the online learner and
on-call tools read it; so it imports only the stdlib and ``protos`` (atomic writes via
``protos.atomic``, errors from ``protos.errors``), never a tier, torch or Ray.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import shutil
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from protos.atomic import fsync_dir, fsync_tree, write_json_atomic
from protos.errors import FailedPrecondition, InvalidInput, NotFound

logger = logging.getLogger(__name__)

__all__ = [
    "LINEAGE_KEYS",
    "STATUSES",
    "TIERS",
    "ModelRegistry",
    "ModelVersion",
    "PromotionRefused",
    "RegistryError",
    "UnknownVersionError",
]

TIERS: tuple[str, ...] = ("base", "online")

# registered: written, not judged yet; approved/rejected: by the gates; promoted: was champion
# at some point (the pointer, not this field, says who is champion now); retired: by hand.
STATUSES: tuple[str, ...] = ("registered", "approved", "rejected", "promoted", "retired")

# What every version of a tier must say about where it came from.
LINEAGE_KEYS: dict[str, tuple[str, ...]] = {
    "base": ("data_window", "feature_service", "parent", "code_version", "metrics"),
    "online": ("base_version", "parent", "code_version"),
}

VERSION_FILE = "version.json"
STATUS_FILE = "status.json"
CHAMPION_FILE = "champion.json"
RESERVED_FILES = (VERSION_FILE, STATUS_FILE)
_VERSION_RE = re.compile(r"^(?P<tier>[a-z]+)-(?P<seq>\d{4,})$")


class RegistryError(InvalidInput):
    """A registry call was given something it cannot accept (unknown tier, bad lineage...)."""


class UnknownVersionError(NotFound, RegistryError):
    """The tier has no version of that name (``NOT_FOUND``; still a ``RegistryError``)."""


class PromotionRefused(FailedPrecondition, RegistryError):
    """Promotion of a version that its gates rejected (``FAILED_PRECONDITION``)."""


@dataclass(frozen=True)
class ModelVersion:
    """One registered version, as read from disk.

    ``path`` is the version's directory: the artifact files as registered, plus the
    registry's own ``version.json`` and ``status.json``.
    """

    tier: str
    version: str
    path: Path
    created_at: str
    lineage: Mapping[str, Any]
    status: str
    gate_results: Mapping[str, Any] = field(default_factory=dict)
    status_history: tuple[Mapping[str, Any], ...] = ()

    @property
    def parent(self) -> str | None:
        """The version this one was warm-started from (None for a cold start)."""
        return self.lineage.get("parent")


class ModelRegistry:
    """Versions, lineage, gate results and the champion pointer of every tier under ``root``.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> src = root / "src"; src.mkdir(); _ = (src / "weights.bin").write_bytes(b"w")
    >>> reg = ModelRegistry(root / "registry")
    >>> v = reg.register("base", src, {"data_window": ["2026-01-01", "2026-01-08"],
    ...     "feature_service": "ranker_v1", "parent": None, "code_version": "abc", "metrics": {}})
    >>> v
    'base-0001'
    >>> reg.promote("base", v, reason="first model")
    >>> reg.champion("base").version
    'base-0001'
    """

    def __init__(self, root: str | os.PathLike[str], clock: Callable[[], datetime] | None = None):
        self.root = Path(root)
        self._clock = clock or (lambda: datetime.now(UTC))

    # ----------------------------------------------------------------------------- reading

    def versions(self, tier: str) -> list[ModelVersion]:
        """Every visible version of ``tier``, oldest first."""
        directory = self._tier_dir(tier) / "versions"
        if not directory.is_dir():
            return []
        names = [p.name for p in directory.iterdir() if _VERSION_RE.match(p.name)]
        names.sort(key=lambda n: int(_VERSION_RE.match(n).group("seq")))  # type: ignore[union-attr]
        return [self._read_version(tier, directory / name) for name in names]

    def get(self, tier: str, version: str) -> ModelVersion:
        """The version ``version`` of ``tier``; ``UnknownVersionError`` if there is none."""
        path = self._tier_dir(tier) / "versions" / str(version)
        if not _VERSION_RE.match(str(version)) or not path.is_dir():
            known = ", ".join(v.version for v in self.versions(tier)) or "none"
            raise UnknownVersionError(f"{tier} has no version {version!r} (known: {known})")
        return self._read_version(tier, path)

    def champion(self, tier: str) -> ModelVersion | None:
        """The version the champion pointer names, or None before the first promotion."""
        record = self._read_champion(tier)
        if record is None:
            return None
        return self.get(tier, record["version"])

    def champion_history(self, tier: str) -> list[dict[str, Any]]:
        """Every promotion of ``tier``, oldest first: {"version", "reason", "at", "previous"}."""
        record = self._read_champion(tier)
        return [] if record is None else list(record.get("history", []))

    # ----------------------------------------------------------------------------- writing

    def register(
        self, tier: str, source_dir: str | os.PathLike[str], lineage: Mapping[str, Any]
    ) -> str:
        """Copy ``source_dir`` in as a new version of ``tier`` and return its name.

        ``lineage`` must hold ``LINEAGE_KEYS[tier]`` and be JSON-serialisable; a ``parent``
        (and, for the online tier, ``base_version``) must name an existing version. The new
        version starts with status ``registered``. Crash-safe: see the module docstring.
        """
        source = Path(source_dir)
        if not source.is_dir():
            raise RegistryError(f"source_dir {source} is not a directory")
        clash = [name for name in RESERVED_FILES if (source / name).exists()]
        if clash:
            raise RegistryError(f"source_dir must not contain {', '.join(clash)} (the registry's)")
        self._check_lineage(tier, lineage)
        now = self._now()
        with self._locked(tier) as tier_dir:
            staging_root = tier_dir / ".staging"
            versions_dir = tier_dir / "versions"
            versions_dir.mkdir(parents=True, exist_ok=True)
            version = f"{tier}-{self._next_seq(versions_dir):04d}"
            staging = staging_root / f"{version}.{uuid.uuid4().hex}"
            staging_root.mkdir(parents=True, exist_ok=True)
            shutil.copytree(source, staging)
            os.chmod(staging, 0o755)  # a tempfile.mkdtemp source is 0700; readers may be others
            write_json_atomic(
                staging / VERSION_FILE,
                {"tier": tier, "version": version, "created_at": now, "lineage": dict(lineage)},
            )
            write_json_atomic(
                staging / STATUS_FILE,
                {
                    "status": "registered",
                    "gate_results": {},
                    "history": [{"status": "registered", "at": now, "reason": ""}],
                },
            )
            fsync_tree(staging)
            fsync_dir(staging_root)
            os.rename(staging, versions_dir / version)  # the one step that makes it visible
            fsync_dir(versions_dir)
        logger.info("registered %s (parent %s)", version, lineage.get("parent"))
        return version

    def set_status(
        self,
        tier: str,
        version: str,
        status: str,
        gate_results: Mapping[str, Any] | None = None,
        reason: str = "",
    ) -> ModelVersion:
        """Record a status (and, if given, replace the gate results) of a version."""
        if status not in STATUSES:
            raise RegistryError(f"status must be one of {', '.join(STATUSES)}, got {status!r}")
        _check_json("gate_results", gate_results or {})
        with self._locked(tier):
            current = self.get(tier, version)
            history = [
                *current.status_history,
                {"status": status, "at": self._now(), "reason": reason},
            ]
            results = dict(current.gate_results if gate_results is None else gate_results)
            write_json_atomic(
                current.path / STATUS_FILE,
                {"status": status, "gate_results": results, "history": history},
                staging=self._staging(tier),
            )
        logger.info("%s status -> %s %s", version, status, reason)
        return self.get(tier, version)

    def promote(self, tier: str, version: str, reason: str) -> None:
        """Point the champion at ``version`` (also how a rollback is done).

        Refuses a version whose status is ``rejected``. The pointer is replaced atomically
        first, then the version's status becomes ``promoted``: the pointer is the truth.
        """
        if not isinstance(reason, str) or not reason.strip():
            raise RegistryError("promote needs a reason (it is kept in the champion history)")
        with self._locked(tier) as tier_dir:
            candidate = self.get(tier, version)
            if candidate.status == "rejected":
                raise PromotionRefused(
                    f"{version} was rejected by its gates and cannot be promoted: "
                    f"{_failed_gates(candidate.gate_results)}"
                )
            record = self._read_champion(tier) or {"history": []}
            now = self._now()
            entry = {
                "version": version,
                "reason": reason,
                "at": now,
                "previous": record.get("version"),
            }
            write_json_atomic(
                tier_dir / CHAMPION_FILE,
                {
                    "version": version,
                    "reason": reason,
                    "at": now,
                    "history": [*record["history"], entry],
                },
                staging=self._staging(tier),
            )
            history = [
                *candidate.status_history,
                {"status": "promoted", "at": now, "reason": reason},
            ]
            write_json_atomic(
                candidate.path / STATUS_FILE,
                {
                    "status": "promoted",
                    "gate_results": dict(candidate.gate_results),
                    "history": history,
                },
                staging=self._staging(tier),
            )
        logger.info("%s champion -> %s (%s)", tier, version, reason)

    # ----------------------------------------------------------------------------- internals

    def _tier_dir(self, tier: str) -> Path:
        if tier not in TIERS:
            raise RegistryError(f"tier must be one of {', '.join(TIERS)}, got {tier!r}")
        return self.root / tier

    def _staging(self, tier: str) -> Path:
        path = self._tier_dir(tier) / ".staging"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def _now(self) -> str:
        return self._clock().astimezone(UTC).isoformat()

    @contextlib.contextmanager
    def _locked(self, tier: str) -> Iterator[Path]:
        tier_dir = self._tier_dir(tier)
        tier_dir.mkdir(parents=True, exist_ok=True)
        with open(tier_dir / ".lock", "a+b") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            try:
                _clean_leftovers(tier_dir)
                yield tier_dir
            finally:
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)

    @staticmethod
    def _next_seq(versions_dir: Path) -> int:
        seqs = [
            int(m.group("seq")) for p in versions_dir.iterdir() if (m := _VERSION_RE.match(p.name))
        ]
        return max(seqs, default=0) + 1

    def _check_lineage(self, tier: str, lineage: Mapping[str, Any]) -> None:
        self._tier_dir(tier)
        if not isinstance(lineage, Mapping):
            raise RegistryError(f"lineage must be a mapping, got {type(lineage).__name__}")
        missing = [key for key in LINEAGE_KEYS[tier] if key not in lineage]
        if missing:
            raise RegistryError(f"{tier} lineage lacks {', '.join(missing)}")
        _check_json("lineage", lineage)
        parent = lineage.get("parent")
        if parent is not None:
            self.get(tier, parent)
        if tier == "online":
            self.get("base", lineage["base_version"])

    def _read_version(self, tier: str, path: Path) -> ModelVersion:
        meta = _read_json(path / VERSION_FILE)
        state = _read_json(path / STATUS_FILE)
        return ModelVersion(
            tier=tier,
            version=meta["version"],
            path=path,
            created_at=meta["created_at"],
            lineage=meta["lineage"],
            status=state["status"],
            gate_results=state.get("gate_results", {}),
            status_history=tuple(state.get("history", ())),
        )

    def _read_champion(self, tier: str) -> dict[str, Any] | None:
        path = self._tier_dir(tier) / CHAMPION_FILE
        if not path.exists():
            return None
        return _read_json(path)


def _failed_gates(results: Mapping[str, Any]) -> str:
    failed = [
        f"{name}: {r.get('reason', '')}"
        for name, r in results.items()
        if isinstance(r, Mapping) and r.get("passed") is False
    ]
    return "; ".join(failed) or "no gate details recorded"


def _check_json(what: str, value: Any) -> None:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise RegistryError(f"{what} is not JSON-serialisable: {exc}") from exc


def _read_json(path: Path) -> dict[str, Any]:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _clean_leftovers(tier_dir: Path) -> None:
    """Remove what a killed writer left in ``.staging`` (partial copies, temporary JSON).

    Called with the tier lock held, so no live writer owns any of them.
    """
    staging = tier_dir / ".staging"
    if staging.is_dir():
        for leftover in staging.iterdir():
            logger.warning("removing partial write %s left by a dead writer", leftover.name)
            if leftover.is_dir():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)
