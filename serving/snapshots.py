"""Persist the learner's published online snapshots into the model registry.

The learner publishes every few batches or seconds; the registry keeps what an operator may
roll back to, so this sink keeps only *ready* snapshots (those that passed the layer's own
check) and at most one per ``min_interval_s``. The last persisted ready snapshot for a base
becomes the online champion: what serving loads when it starts (a restart does not lose
what was learned), and what ``rollback`` restores.

The circuit breaker has the last word: a snapshot published while it was not closed, or
during a run of losing judgements (``lineage["breaker"]["losing_since"]`` set), is never
persisted, so when the breaker trips the champion is still a snapshot from before the
losing run began (the same rule as the learner's own rollback), and a restart cannot bring
back the weights the breaker judged. Such snapshots are counted (``withheld``).
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from protos.registry import ModelRegistry

logger = logging.getLogger(__name__)

SNAPSHOT_FILE = "snapshot.bin"


class RegistrySnapshotSink:
    """``snapshot_sink(version, blob, lineage)`` for ``OnlineLearner``, writing to a registry.

    Args:
        registry: Where both tiers' versions live.
        code_version: Recorded in every online version's lineage.
        min_interval_s: Persist at most one snapshot per this many seconds.
        clock: Monotonic seconds (injectable for tests).
    """

    def __init__(
        self,
        registry: ModelRegistry,
        code_version: str,
        min_interval_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._registry = registry
        self._code_version = code_version
        self._min_interval = min_interval_s
        self._clock = clock
        self._last_at: float | None = None
        self._parent: str | None = None
        self.withheld = 0  # ready snapshots not kept: published while the breaker judged

    def __call__(self, version: str, blob: bytes, lineage: Mapping[str, Any]) -> None:
        if not lineage.get("readiness", {}).get("ready", False):
            return
        breaker = lineage.get("breaker") or {}
        if breaker.get("state", "closed") != "closed" or breaker.get("losing_since") is not None:
            self.withheld += 1
            logger.info("online snapshot %s not persisted: the circuit breaker was %s%s",
                        version, breaker.get("state"),
                        ", judging a losing run" if breaker.get("losing_since") is not None else "")
            return
        now = self._clock()
        if self._last_at is not None and now - self._last_at < self._min_interval:
            return
        with tempfile.TemporaryDirectory(prefix="freshrank-online-") as staging:
            (Path(staging) / SNAPSHOT_FILE).write_bytes(blob)
            registered = self._registry.register(
                "online",
                staging,
                {
                    **dict(lineage),
                    "learner_version": version,
                    "parent": self._parent,
                    "code_version": self._code_version,
                },
            )
        self._registry.set_status("online", registered, "approved", reason="passed readiness")
        self._registry.promote("online", registered, reason=f"ready snapshot {version}")
        self._parent = registered
        self._last_at = now
        logger.info("persisted online snapshot %s as %s", version, registered)


def champion_snapshot(registry: ModelRegistry, base_version: str) -> tuple[str, bytes, float] | None:
    """The online champion's (learner version, blob, published_at) if it belongs to
    ``base_version``; None otherwise (a layer for another base is never served)."""
    champion = registry.champion("online")
    if champion is None or champion.lineage.get("base_version") != base_version:
        return None
    blob = (Path(champion.path) / SNAPSHOT_FILE).read_bytes()
    return (
        str(champion.lineage.get("learner_version", champion.version)),
        blob,
        float(champion.lineage.get("published_at", 0.0)),
    )
