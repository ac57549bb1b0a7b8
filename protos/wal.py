"""A write-ahead log: what serving acknowledged is on disk before the reply.

Why: the learner's joins live in memory; a restart used to lose every accepted-but-unlearned
event, and feedback for requests served before the restart was refused as unknown. Serving
appends every served impression and every accepted feedback batch here, fsynced, *before*
it replies; the learner records how far it has learned (a checkpoint), and on start replays
the tail after it. The hourly Parquet event log is compacted from the same records, so the
base trains on exactly what serving saw.

Format: segment files ``<first-seq>.wal`` of records ``[u32 length][u32 crc32][payload]``,
payloads opaque bytes (the caller's encoding: Arrow IPC for events). A torn last record
(crash mid-write) fails its length or checksum and is cut off on open: everything before it
was acknowledged, it was not. Sequence numbers are dense and start at 1.

Concurrency: one process appends (a lock inside guards threads); group commit makes many
threads' appends share one fsync (``append`` returns once its record is durable).

>>> import tempfile
>>> log = WriteAheadLog(tempfile.mkdtemp())
>>> log.append(b"first"), log.append(b"second")
(1, 2)
>>> [(seq, data) for seq, data in log.read(after=1)]
[(2, b'second')]
>>> log.close()
"""

from __future__ import annotations

import logging
import os
import struct
import threading
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from protos.atomic import fsync_dir, write_json_atomic

__all__ = ["WalCorrupt", "WriteAheadLog"]

logger = logging.getLogger(__name__)

_HEADER = struct.Struct("<II")
_SUFFIX = ".wal"
MAX_RECORD_BYTES = 64 * 1024 * 1024


class WalCorrupt(ValueError):
    """A record before the last one fails its checksum: the disk, not a crash, lost data."""


class WriteAheadLog:
    """Durable, ordered, append-only records with checkpoints (module doc)."""

    def __init__(self, directory: str | os.PathLike[str], *, segment_bytes: int = 64 << 20,
                 sync: bool = True) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.segment_bytes = segment_bytes
        self.sync = sync
        self._lock = threading.Lock()
        self._durable = threading.Condition(self._lock)
        self._synced_seq = 0
        self._syncing = False
        self._last_seq = self._recover()
        self._synced_seq = self._last_seq
        self._file = self._open_tail()

    # -- opening ------------------------------------------------------------------------
    def _segments(self) -> list[Path]:
        return sorted(self.directory.glob(f"*{_SUFFIX}"), key=lambda p: int(p.stem))

    def _recover(self) -> int:
        """Scan the segments, cut a torn tail off the last one, return the last sequence."""
        segments = self._segments()
        last = 0
        for index, segment in enumerate(segments):
            first = int(segment.stem)
            count, good_bytes, torn = _scan(segment)
            if torn and index != len(segments) - 1:
                raise WalCorrupt(f"{segment}: a damaged record before the log's end")
            if torn:
                logger.warning("write-ahead log %s: cutting a torn record at byte %s "
                               "(a crash mid-append; it was never acknowledged)",
                               segment.name, good_bytes)
                with open(segment, "r+b") as f:
                    f.truncate(good_bytes)
                    f.flush()
                    os.fsync(f.fileno())
            last = first + count - 1 if count else max(last, first - 1)
        return last

    def _open_tail(self) -> BinaryIO:
        segments = self._segments()
        if segments and segments[-1].stat().st_size < self.segment_bytes:
            return open(segments[-1], "ab")
        return self._new_segment()

    def _new_segment(self) -> BinaryIO:
        path = self.directory / f"{self._last_seq + 1:020d}{_SUFFIX}"
        handle = open(path, "ab")
        fsync_dir(self.directory)
        return handle

    # -- writing ------------------------------------------------------------------------
    @property
    def last_seq(self) -> int:
        """The sequence number of the newest durable record (0: empty)."""
        return self._synced_seq

    def append(self, payload: bytes) -> int:
        """Append one record; returns its sequence number once it is durable."""
        if len(payload) > MAX_RECORD_BYTES:
            raise ValueError(f"write-ahead record of {len(payload)} bytes; the limit is "
                             f"{MAX_RECORD_BYTES}")
        with self._lock:
            if self._file.tell() >= self.segment_bytes:
                self._flush_locked()
                self._file.close()
                self._file = self._new_segment()
            self._file.write(_HEADER.pack(len(payload), zlib.crc32(payload)) + payload)
            self._last_seq += 1
            seq = self._last_seq
            # Group commit: the first waiter syncs for everyone written so far.
            while self._synced_seq < seq:
                if not self._syncing:
                    self._syncing = True
                    target = self._last_seq
                    self._file.flush()
                    fd = self._file.fileno()
                    self._lock.release()
                    try:
                        if self.sync:
                            os.fsync(fd)
                    finally:
                        self._lock.acquire()
                        self._syncing = False
                    self._synced_seq = max(self._synced_seq, target)
                    self._durable.notify_all()
                else:
                    self._durable.wait()
            return seq

    def _flush_locked(self) -> None:
        self._file.flush()
        if self.sync:
            os.fsync(self._file.fileno())
        self._synced_seq = self._last_seq

    # -- reading ------------------------------------------------------------------------
    def read(self, after: int = 0) -> Iterator[tuple[int, bytes]]:
        """Records with sequence > ``after``, in order (only durable ones)."""
        limit = self._synced_seq
        segments = self._segments()
        for index, segment in enumerate(segments):
            first = int(segment.stem)
            nxt = int(segments[index + 1].stem) if index + 1 < len(segments) else None
            if nxt is not None and nxt - 1 <= after:
                continue
            seq = first
            for payload in _records(segment):
                if seq > limit:
                    return
                if seq > after:
                    yield seq, payload
                seq += 1

    # -- checkpoints --------------------------------------------------------------------
    def checkpoint(self, name: str, seq: int) -> None:
        """Record (atomically) that consumer ``name`` has durably used everything <= ``seq``."""
        if not name.isidentifier():
            raise ValueError(f"checkpoint name must be an identifier, got {name!r}")
        write_json_atomic(self.directory / f"{name}.checkpoint.json", {"seq": int(seq)})

    def checkpointed(self, name: str) -> int:
        """The last sequence ``name`` checkpointed (0 when it never did)."""
        import json

        path = self.directory / f"{name}.checkpoint.json"
        if not path.exists():
            return 0
        return int(json.loads(path.read_text())["seq"])

    def truncate_before(self, seq: int) -> int:
        """Delete whole segments whose records are all < ``seq``; returns how many."""
        segments = self._segments()
        removed = 0
        with self._lock:
            for index, segment in enumerate(segments[:-1]):
                if int(segments[index + 1].stem) <= seq:
                    segment.unlink()
                    removed += 1
        if removed:
            fsync_dir(self.directory)
        return removed

    def close(self) -> None:
        with self._lock:
            if not self._file.closed:
                self._flush_locked()
                self._file.close()


def _records(segment: Path) -> Iterator[bytes]:
    with open(segment, "rb") as f:
        while True:
            header = f.read(_HEADER.size)
            if len(header) < _HEADER.size:
                return
            length, crc = _HEADER.unpack(header)
            if length > MAX_RECORD_BYTES:
                return
            payload = f.read(length)
            if len(payload) < length or zlib.crc32(payload) != crc:
                return
            yield payload


def _scan(segment: Path) -> tuple[int, int, bool]:
    """(good records, bytes they span, whether anything after them is torn)."""
    count = good = 0
    size = segment.stat().st_size
    with open(segment, "rb") as f:
        while True:
            header = f.read(_HEADER.size)
            if not header:
                return count, good, False
            if len(header) < _HEADER.size:
                return count, good, True
            length, crc = _HEADER.unpack(header)
            if length > MAX_RECORD_BYTES or good + _HEADER.size + length > size:
                return count, good, True
            payload = f.read(length)
            if zlib.crc32(payload) != crc:
                return count, good, True
            count += 1
            good += _HEADER.size + length
