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
``append(payload, durable=False)`` hands the record to the OS only (it survives ``kill -9``
of the writer, not a power cut) and returns at once; ``sync()`` makes everything written so
far durable (a writer calls it on a short timer). Other processes follow a log with
``WalTailer`` (it reads only whole, checksummed records, so a record being written is
picked up on the next poll) and record their progress with ``write_checkpoint``.

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

__all__ = [
    "WalCorrupt",
    "WalTailer",
    "WriteAheadLog",
    "read_checkpoint",
    "truncate_segments",
    "write_checkpoint",
]

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
        self.sync_enabled = sync
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

    @property
    def written_seq(self) -> int:
        """The sequence number of the newest record handed to the OS (durable or not)."""
        return self._last_seq

    def append(self, payload: bytes, *, durable: bool = True) -> int:
        """Append one record; returns its sequence number.

        ``durable=True`` returns once the record is on disk (fsync, shared with concurrent
        appends). ``durable=False`` returns once the OS has it (``write`` + ``flush``): it
        survives the writer's crash, and ``sync()`` makes it durable later.
        """
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
            if durable:
                self._commit_locked(seq)
            else:
                self._file.flush()
            return seq

    def sync(self) -> int:
        """Make every record written so far durable; returns the last durable sequence."""
        with self._lock:
            if not self._file.closed:
                self._commit_locked(self._last_seq)
            return self._synced_seq

    def _commit_locked(self, seq: int) -> None:
        # Group commit: the first waiter syncs for everyone written so far.
        while self._synced_seq < seq:
            if not self._syncing:
                self._syncing = True
                target = self._last_seq
                self._file.flush()
                fd = self._file.fileno()
                self._lock.release()
                try:
                    if self.sync_enabled:
                        os.fsync(fd)
                finally:
                    self._lock.acquire()
                    self._syncing = False
                self._synced_seq = max(self._synced_seq, target)
                self._durable.notify_all()
            else:
                self._durable.wait()

    def _flush_locked(self) -> None:
        self._file.flush()
        if self.sync_enabled:
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
        write_checkpoint(self.directory, name, seq)

    def checkpointed(self, name: str) -> int:
        """The last sequence ``name`` checkpointed (0 when it never did)."""
        return read_checkpoint(self.directory, name)

    def truncate_before(self, seq: int) -> int:
        """Delete whole segments whose records are all < ``seq``; returns how many."""
        with self._lock:
            return truncate_segments(self.directory, seq)

    def close(self) -> None:
        with self._lock:
            if not self._file.closed:
                self._flush_locked()
                self._file.close()


def _read_record(f: BinaryIO) -> bytes | None:
    """The next whole, checksummed record at ``f``'s position, or None (end, or torn)."""
    header = f.read(_HEADER.size)
    if len(header) < _HEADER.size:
        return None
    length, crc = _HEADER.unpack(header)
    if length > MAX_RECORD_BYTES:
        return None
    payload = f.read(length)
    if len(payload) < length or zlib.crc32(payload) != crc:
        return None
    return payload


def _records(segment: Path) -> Iterator[bytes]:
    with open(segment, "rb") as f:
        while (payload := _read_record(f)) is not None:
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


def _segments_of(directory: Path) -> list[Path]:
    return sorted(directory.glob(f"*{_SUFFIX}"), key=lambda p: int(p.stem))


def write_checkpoint(directory: str | os.PathLike[str], name: str, seq: int) -> None:
    """Record (atomically) that consumer ``name`` of the log in ``directory`` has durably
    used every record <= ``seq``. Consumers may live in other processes than the writer."""
    if not name.isidentifier():
        raise ValueError(f"checkpoint name must be an identifier, got {name!r}")
    write_json_atomic(Path(directory) / f"{name}.checkpoint.json", {"seq": int(seq)})


def read_checkpoint(directory: str | os.PathLike[str], name: str) -> int:
    """The last sequence ``name`` checkpointed in ``directory`` (0 when it never did)."""
    import json

    path = Path(directory) / f"{name}.checkpoint.json"
    if not path.exists():
        return 0
    return int(json.loads(path.read_text())["seq"])


def truncate_segments(directory: str | os.PathLike[str], seq: int) -> int:
    """Delete whole segments of the log in ``directory`` whose records are all < ``seq``
    (never the last segment: a writer may append to it); returns how many. Safe beside a
    live writer in another process, which only ever appends to its newest segment."""
    directory = Path(directory)
    segments = _segments_of(directory)
    removed = 0
    for index, segment in enumerate(segments[:-1]):
        if int(segments[index + 1].stem) <= seq:
            segment.unlink(missing_ok=True)
            removed += 1
    if removed:
        fsync_dir(directory)
    return removed


class WalTailer:
    """Follows a log another process writes: ``poll()`` returns the whole records written
    since the last poll, in order, with their sequence numbers.

    A record still being written (short, or failing its checksum) is left for the next
    poll. Segments removed by ``truncate_segments`` are skipped. Reads by byte offset, so a
    poll costs what was written since the last one.
    """

    def __init__(self, directory: str | os.PathLike[str], after: int = 0) -> None:
        self.directory = Path(directory)
        self.after = after  # skip records <= this
        self._segment: Path | None = None
        self._offset = 0
        self._next_seq = 1

    @property
    def last_seq(self) -> int:
        """The sequence of the last record returned (or skipped) so far."""
        return self._next_seq - 1

    def poll(self, limit: int = 100_000) -> list[tuple[int, bytes]]:
        out: list[tuple[int, bytes]] = []
        while len(out) < limit:
            segments = _segments_of(self.directory)
            if not segments:
                return out
            if self._segment is None:
                self._segment, self._offset, self._next_seq = segments[0], 0, int(segments[0].stem)
            elif not self._segment.exists():
                # Truncated under us (its records were consumed): go on with the next one.
                later = [p for p in segments if int(p.stem) > int(self._segment.stem)]
                if not later:
                    return out
                self._segment, self._offset = later[0], 0
                self._next_seq = max(self._next_seq, int(later[0].stem))
            current = int(self._segment.stem)
            later = [p for p in segments if int(p.stem) > current]  # listed before reading
            got = self._read_segment(out, limit)
            if len(out) >= limit or got or not later:
                if not got:
                    return out
                continue
            # Nothing more here and a newer segment exists: this one is complete.
            self._segment, self._offset = later[0], 0
            self._next_seq = max(self._next_seq, int(later[0].stem))
        return out

    def _read_segment(self, out: list[tuple[int, bytes]], limit: int) -> int:
        assert self._segment is not None
        got = 0
        try:
            f = open(self._segment, "rb")
        except FileNotFoundError:
            return 0
        with f:
            f.seek(self._offset)
            while len(out) < limit:
                payload = _read_record(f)
                if payload is None:
                    break
                self._offset += _HEADER.size + len(payload)
                seq = self._next_seq
                self._next_seq += 1
                got += 1
                if seq > self.after:
                    out.append((seq, payload))
        return got
