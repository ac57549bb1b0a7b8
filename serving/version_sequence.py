"""Online version numbers that never repeat, across learner restarts.

A version (``ol-<base>-g<generation>-<sequence>``) names one set of weights: replicas skip a
snapshot whose version they already hold, responses carry it, the registry keys on it. The
learner's own publish count starts again with the process, so a learner restarted between
durable snapshots named new weights like old ones (``ol-b-g0-000005`` twice), and a replica
still holding the old ``000005`` kept the old weights.

``VersionSequence`` hands out numbers from blocks reserved in a small file in the workspace's
write-ahead directory: the block's end is written (atomically, fsynced) before any number of
it is used, so a restart, even after ``kill -9``, continues after the last reserved block.
The unused rest of a block is skipped, never reused: numbers are unique and increasing, not
dense. One learner process writes the file: the feedback log's lock makes it the only one.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

from protos.atomic import write_json_atomic
from protos.errors import FailedPrecondition

__all__ = ["VersionSequence", "sequence_path"]

BLOCK = 1000  # numbers reserved per write: one fsync per thousand publishes
_KEY = "reserved_through"


def sequence_path(workspace: str | os.PathLike[str]) -> Path:
    """Where a workspace's online version numbers are reserved."""
    return Path(workspace) / "wal" / "online-version-sequence.json"


class VersionSequence:
    """``next()`` -> a publish number never handed out before for this workspace (a
    ``online_layer.publishing.Sequencer``). Thread-safe: the champion's and the canary's
    layers share one."""

    def __init__(self, path: str | os.PathLike[str], block: int = BLOCK) -> None:
        if block < 1:
            raise ValueError("block must be >= 1")
        self.path = Path(path)
        self._block = block
        self._lock = threading.Lock()
        # Read at the first publish, not here: by then this learner holds the log lock, so a
        # predecessor still shutting down has stopped reserving.
        self._reserved: int | None = None
        self._next = 0

    def _read(self) -> int:
        try:
            value = json.loads(self.path.read_text(encoding="utf-8"))[_KEY]
        except FileNotFoundError:
            return 0
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise FailedPrecondition(
                f"{self.path} is not an online version reservation ({exc}); online versions "
                "could repeat: restore it or move it aside to start numbering afresh"
            ) from exc
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise FailedPrecondition(f"{self.path}: {_KEY} must be a non-negative integer")
        return value

    def __call__(self) -> int:
        with self._lock:
            if self._reserved is None:
                self._reserved = self._read()
                self._next = self._reserved + 1
            if self._next > self._reserved:
                reserved = self._next + self._block - 1
                write_json_atomic(self.path, {_KEY: reserved})
                self._reserved = reserved
            number, self._next = self._next, self._next + 1
            return number
