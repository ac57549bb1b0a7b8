"""Child process of the registry crash test (run as a script, not collected by pytest).

Usage: ``registry_writer.py ROOT SOURCE_DIR KILL_AT [LOOPS]``

Registers SOURCE_DIR as a new base version (parent: the champion), records gate results,
promotes it, LOOPS times (default 1). With KILL_AT > 0 it SIGKILLs itself just before its
KILL_AT-th filesystem change (open for writing, mkdir, sendfile, fsync, rename, replace,
unlink, utime, chmod), so the parent test can stop a writer at every step of a write;
KILL_AT = -1 only counts them, 0 installs no hook. Prints the number of changes made.
"""

from __future__ import annotations

import builtins
import os
import signal
import sys

from protos.registry import ModelRegistry

CALLS = 0


def _hook(fn, kill_at: int, writes_only: bool = False):  # noqa: ANN001, ANN202
    def wrapped(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        global CALLS
        mode = args[1] if len(args) > 1 else kwargs.get("mode", "r")
        if not writes_only or any(c in str(mode) for c in "wax+"):
            CALLS += 1
            if kill_at == CALLS:
                os.kill(os.getpid(), signal.SIGKILL)
        return fn(*args, **kwargs)

    return wrapped


def main() -> None:
    root, source, kill_at = sys.argv[1], sys.argv[2], int(sys.argv[3])
    loops = int(sys.argv[4]) if len(sys.argv) > 4 else 1
    registry = ModelRegistry(root)
    if kill_at != 0:  # -1: count the calls, never kill
        for name in (
            "mkdir",
            "sendfile",
            "fsync",
            "rename",
            "replace",
            "unlink",
            "rmdir",
            "utime",
            "chmod",
        ):
            setattr(os, name, _hook(getattr(os, name), kill_at))
        builtins.open = _hook(builtins.open, kill_at, writes_only=True)
    for _ in range(loops):
        champion = registry.champion("base")
        lineage = {
            "data_window": {"train_start": "2026-01-02", "valid_end": "2026-01-10"},
            "feature_service": "ranker_v1",
            "parent": champion.version if champion else None,
            "code_version": "crash-test",
            "metrics": {"val_logloss": 0.5},
        }
        version = registry.register("base", source, lineage)
        registry.set_status(
            "base", version, "approved", {"offline_evaluation": {"passed": True, "reason": "ok"}}
        )
        registry.promote("base", version, reason="crash test")
    sys.stdout.write(f"{CALLS}\n")


if __name__ == "__main__":
    main()
