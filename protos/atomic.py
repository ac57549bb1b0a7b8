"""Atomic file writes: a reader sees the old file or the new one, never half of either.

Why one module: the registry, the event log, feature state, simulator output and online
snapshots all need the same guarantee, and a crash-safety rule written five times drifts.
The recipe is always: write a temporary file in the same directory (same filesystem), fsync
it, ``os.replace`` it over the target, fsync the directory so the rename itself survives a
power cut. A writer killed before the rename leaves only its ``.*.tmp`` file behind.

>>> import tempfile, pathlib
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> write_text_atomic(d / "a.txt", "hello")
>>> (d / "a.txt").read_text()
'hello'
>>> write_json_atomic(d / "a.json", {"b": 1})
>>> (d / "a.json").read_text()
'{\\n  "b": 1\\n}\\n'
>>> sorted(p.name for p in d.iterdir())
['a.json', 'a.txt']
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "atomic_path",
    "fsync_dir",
    "fsync_tree",
    "write_bytes_atomic",
    "write_json_atomic",
    "write_text_atomic",
]


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """fsync a directory, so that a rename or a new entry in it is durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: str | os.PathLike[str]) -> None:
    """fsync every file and directory below ``root`` (a staged directory before its rename)."""
    for dirpath, _dirnames, filenames in os.walk(root):
        for name in filenames:
            fd = os.open(Path(dirpath) / name, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(dirpath)


@contextlib.contextmanager
def atomic_path(
    path: str | os.PathLike[str], *, staging: str | os.PathLike[str] | None = None
) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces ``path`` atomically.

    ``staging`` is the directory for the temporary file (default: beside ``path``); it must
    be on the same filesystem. On an exception the temporary file is removed and ``path`` is
    untouched. The caller's writer must close (flush) the file before the block ends.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    where = Path(staging) if staging is not None else target.parent
    tmp = where / f".{target.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(target.parent)


def write_bytes_atomic(
    path: str | os.PathLike[str], data: bytes, *, staging: str | os.PathLike[str] | None = None
) -> None:
    """Replace ``path`` with ``data`` atomically (see the module docstring)."""
    with atomic_path(path, staging=staging) as tmp, open(tmp, "wb") as f:
        f.write(data)


def write_text_atomic(
    path: str | os.PathLike[str], text: str, *, staging: str | os.PathLike[str] | None = None
) -> None:
    """Replace ``path`` with ``text`` (UTF-8) atomically."""
    with atomic_path(path, staging=staging) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(text)


def write_json_atomic(
    path: str | os.PathLike[str],
    value: Any,
    *,
    staging: str | os.PathLike[str] | None = None,
    indent: int = 2,
) -> None:
    """Replace ``path`` with ``value`` as JSON (sorted keys, no NaN, trailing newline)."""
    text = json.dumps(value, indent=indent, sort_keys=True, allow_nan=False) + "\n"
    write_text_atomic(path, text, staging=staging)
