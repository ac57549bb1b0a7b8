"""What serving served and what feedback it accepted, durable before each reply.

Layout (under the workspace)::

    wal/served/<replica-id>/   one write-ahead log per Ranker replica (its only writer)
    wal/feedback/              the learner's log of accepted feedback batches (its only writer)

Write path
    ``Rank`` appends one record per request (``ServedEntry``: the ``ServedRecord`` the
    learner joins to, plus the final scores, item categories and fallback reason) to its
    replica's log before it replies. The record is handed to the OS before the reply (it
    survives ``kill -9`` of the replica); an fsync runs every ``SERVED_FSYNC_SECONDS`` on a
    timer, and ``Feedback`` syncs first, so an acknowledged click is never durable while its
    impression is not. ``Feedback``: the learner validates and joins the batch, appends the
    accepted batch to ``wal/feedback`` and fsyncs it (group commit) before it answers
    ``accepted``.
Transport
    The served logs *are* how impressions reach the learner: it follows every replica's log
    (``WalTailer``) on a short timer and before each feedback batch, so an impression
    acknowledged by a replica that died since is still joined.
Restart (``LearnerDurability.start``)
    The learner restores its online champion snapshot; the snapshot's lineage
    (``durability``) says which feedback sequence it covers (every accepted event up to
    it is in the weights), the join watermark, and how many events were accepted through
    it. It then replays, in the order they were written, the served records still in the
    logs (those whose join window was open at the snapshot, and those the replayed
    feedback names) and the feedback batches after that sequence. Checkpoints (and the
    truncation of old segments) advance only after a snapshot is durable in the registry.
Counting
    ``accepted``: feedback events acknowledged as accepted, over the learner's whole life
    (restarts included). ``learned``: those whose examples are in the weights (every event
    up to the oldest one still waiting, in a join window or a mini-batch). ``pending``:
    ``accepted - learned``. ``restored``: events the snapshot restored at the last start
    covered; ``replayed``: events re-fed from the log then (``restored + replayed`` is what
    was accepted before that start);
    ``replay_lost``: replayed events the learner did not accept again (0 unless the logs
    were damaged or truncated too early). At most the one batch being learned when a
    snapshot is taken is learned twice after a restart (its sequence is not yet known).
Event log (``compact_served_log``)
    A compactor turns the logs into the workspace's hourly Parquet event log (events
    schema): one row per impression, with its final label (the largest feedback label within
    the join window; 0 without feedback) once its window has closed.
"""

from __future__ import annotations

import fcntl
import json
import logging
import math
import os
import shutil
import struct
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from protos.events import EVENTS_SCHEMA
from protos.wal import WalTailer, WriteAheadLog, read_checkpoint, truncate_segments, write_checkpoint

if TYPE_CHECKING:
    from online_layer.learner import OnlineLearner
    from online_layer.reports import FeedbackResult
    from online_layer.served import ServedRecord

__all__ = [
    "FeedbackLog",
    "LearnerDurability",
    "SERVED_FSYNC_SECONDS",
    "ServedEntry",
    "ServedLogWriter",
    "StrictClock",
    "compact_served_log",
    "decode_feedback",
    "decode_served",
    "encode_feedback",
    "encode_served",
    "feedback_dir",
    "served_root",
    "wal_root",
]

logger = logging.getLogger(__name__)

SERVED_FSYNC_SECONDS = 0.05  # a replica's served log is fsynced at least this often
INGEST_SECONDS = 0.2  # the learner follows the served logs this often (and before feedback)
COMPACT_SECONDS = 60.0  # the learner runs the compactor this often
LOCK_WAIT_SECONDS = 60.0  # a new writer waits this long for the old one's lock

_SERVED_TAG = b"S1"
_FEEDBACK_TAG = b"F1"
_VOID_TAG = b"V1"  # a feedback batch the learner refused: it holds a sequence, no events
_LEN = struct.Struct("<I")
_FEEDBACK_COLUMNS = ("request_id", "user_id", "item_id", "ts", "label", "position")


def wal_root(workspace: str | os.PathLike[str]) -> Path:
    return Path(workspace) / "wal"


def served_root(workspace: str | os.PathLike[str]) -> Path:
    return wal_root(workspace) / "served"


def feedback_dir(workspace: str | os.PathLike[str]) -> Path:
    return wal_root(workspace) / "feedback"


# ------------------------------------------------------------------------------ encoding


@dataclass(frozen=True, eq=False)
class ServedEntry:
    """One served request as logged: the learner's half of the join plus what the event
    log needs (final logits, item categories, fallback reason), in the order shown."""

    record: ServedRecord
    final_logits: np.ndarray
    item_categories: tuple[str, ...]
    fallback_reason: str
    written_at: float


def _pack(tag: bytes, header: dict[str, Any], *blobs: bytes) -> bytes:
    head = json.dumps(header, separators=(",", ":")).encode()
    return b"".join((tag, _LEN.pack(len(head)), head, *blobs))


def _unpack(payload: bytes) -> tuple[bytes, dict[str, Any], memoryview]:
    tag = payload[:2]
    (n,) = _LEN.unpack_from(payload, 2)
    header = json.loads(payload[6 : 6 + n])
    return tag, header, memoryview(payload)[6 + n :]


def encode_served(entry: ServedEntry) -> bytes:
    """A compact record: a JSON header (ids, versions, time) and the raw arrays."""
    from online_layer.served import to_us

    record = entry.record
    inputs = record.inputs
    n = len(inputs)
    header = {
        "rid": record.request_id,
        "uid": record.user_id,
        "t": to_us(record.request_time),
        "bv": record.base_version,
        "ov": record.online_version,
        "items": list(record.item_ids),
        "cats": list(entry.item_categories),
        "fb": entry.fallback_reason,
        "w": entry.written_at,
        "n": n,
        "d": inputs.n_dense,
        "k": inputs.n_sparse,
    }
    return _pack(
        _SERVED_TAG,
        header,
        inputs.base_logit.astype("<f8").tobytes(),
        np.asarray(entry.final_logits, dtype="<f8").tobytes(),
        inputs.dense.astype("<f8").tobytes(),
        inputs.sparse.astype("<i8").tobytes(),
    )


def decode_served(payload: bytes) -> ServedEntry:
    from datetime import UTC, datetime, timedelta

    from online_layer.features import OnlineInputs
    from online_layer.served import ServedRecord

    tag, h, body = _unpack(payload)
    if tag != _SERVED_TAG:
        raise ValueError(f"not a served record (tag {tag!r})")
    n, d, k = h["n"], h["d"], h["k"]
    arrays = np.frombuffer(body, dtype="<f8", count=n * (2 + d))
    base = arrays[:n]
    final = arrays[n : 2 * n]
    dense = arrays[2 * n :].reshape(n, d)
    sparse = np.frombuffer(body, dtype="<i8", count=n * k, offset=8 * n * (2 + d)).reshape(n, k)
    when = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=int(h["t"]))
    record = ServedRecord(
        request_id=h["rid"],
        user_id=h["uid"],
        request_time=when,
        base_version=h["bv"],
        item_ids=tuple(h["items"]),
        inputs=OnlineInputs(base.copy(), dense.copy(), sparse.copy()),
        online_version=h["ov"],
    )
    return ServedEntry(record, final.copy(), tuple(h["cats"]), h["fb"], float(h["w"]))


def _served_time_us(entry: ServedEntry) -> int:
    from online_layer.served import to_us

    return to_us(entry.record.request_time)


def encode_feedback(events: pa.Table, accepted: int, written_at: float) -> bytes:
    """An accepted feedback batch: a JSON header and the events as Arrow IPC."""
    columns = [c for c in _FEEDBACK_COLUMNS if c in events.column_names]
    sink = pa.BufferOutputStream()
    table = events.select(columns)
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return _pack(_FEEDBACK_TAG, {"w": written_at, "accepted": int(accepted)},
                 sink.getvalue().to_pybytes())


def decode_feedback(payload: bytes) -> tuple[dict[str, Any], pa.Table | None]:
    """``(header, events)``; events is None for a refused batch's placeholder."""
    tag, header, body = _unpack(payload)
    if tag == _VOID_TAG:
        return header, None
    if tag != _FEEDBACK_TAG:
        raise ValueError(f"not a feedback record (tag {tag!r})")
    with pa.ipc.open_stream(pa.py_buffer(body)) as reader:
        return header, reader.read_all()


# ------------------------------------------------------------------------------ writers


class DirectoryLock:
    """An exclusive ``flock`` on ``<directory>/.lock``: one writer per log directory. The
    kernel drops it when the holder dies, so a restarted writer takes over."""

    def __init__(self, directory: Path, wait_s: float = LOCK_WAIT_SECONDS) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(directory / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() > deadline:
                    os.close(self._fd)
                    raise TimeoutError(f"{directory} is locked by another writer") from None
                time.sleep(0.1)

    def release(self) -> None:
        if self._fd >= 0:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = -1


def is_locked(directory: Path) -> bool:
    """Whether a live writer holds ``directory``'s lock."""
    path = directory / ".lock"
    if not path.exists():
        return False
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def _write_writer_info(directory: Path, **extra: Any) -> None:
    from protos.atomic import write_json_atomic

    write_json_atomic(directory / "writer.json", {"pid": os.getpid(), "started_at": time.time(),
                                                  **extra})


def replica_id() -> str:
    """This Serve replica's unique id (a random one outside Serve)."""
    try:
        from ray import serve

        return str(serve.get_replica_context().replica_id.unique_id)
    except Exception:
        return uuid.uuid4().hex[:12]


class ServedLogWriter:
    """One Ranker replica's served log: append before the reply, fsync on a timer."""

    def __init__(self, workspace: str | os.PathLike[str], replica: str | None = None,
                 fsync_s: float = SERVED_FSYNC_SECONDS) -> None:
        self.replica = replica or replica_id()
        self.directory = served_root(workspace) / self.replica
        self._lock = DirectoryLock(self.directory)
        self._wal = WriteAheadLog(self.directory)
        _write_writer_info(self.directory, replica=self.replica)
        self._stop = threading.Event()
        self._fsync_s = fsync_s
        self._thread = threading.Thread(target=self._run, name="served-log-fsync", daemon=True)
        self._thread.start()

    def append(self, entry: ServedEntry) -> int:
        """Hand the record to the OS (survives the process's death); returns its sequence."""
        return self._wal.append(encode_served(entry), durable=False)

    def sync(self) -> int:
        """fsync everything appended so far (cheap when nothing is new)."""
        if self._wal.last_seq == self._wal.written_seq:
            return self._wal.last_seq
        return self._wal.sync()

    def _run(self) -> None:
        while not self._stop.wait(self._fsync_s):
            try:
                self.sync()
            except Exception:
                logger.exception("fsync of the served log failed; retrying")

    def close(self) -> None:
        self._stop.set()
        self._wal.close()
        self._lock.release()


class FeedbackLog:
    """The learner's log of accepted feedback (fsynced before ``accepted`` is answered)."""

    def __init__(self, workspace: str | os.PathLike[str]) -> None:
        self.directory = feedback_dir(workspace)
        self._lock = DirectoryLock(self.directory)
        self._wal = WriteAheadLog(self.directory)
        _write_writer_info(self.directory, role="learner")

    @property
    def last_seq(self) -> int:
        return self._wal.last_seq

    def append(self, events: pa.Table, accepted: int) -> int:
        return self._wal.append(encode_feedback(events, accepted, time.time()))

    def append_void(self) -> int:
        return self._wal.append(_pack(_VOID_TAG, {"w": time.time()}))

    def close(self) -> None:
        self._wal.close()
        self._lock.release()


# ----------------------------------------------------------------------------- learner side


class StrictClock:
    """``time.time`` that never repeats or goes back: each feedback batch gets its own
    arrival time, so the learner's oldest waiting arrival names a batch."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.last = 0.0

    def __call__(self) -> float:
        with self._lock:
            now = time.time()
            self.last = now if now > self.last else math.nextafter(self.last, math.inf)
            return self.last


@dataclass
class _Batch:
    seq: int
    arrived_by: float  # the batch's arrival time is <= this
    accepted: int


@dataclass
class _ServedProgress:
    tailer: WalTailer
    marks: deque[tuple[int, int]] = field(default_factory=deque)  # (seq, running max t_us)
    max_t_us: int = -(2**62)


class LearnerDurability:
    """The learner's write-ahead duties (module docstring): follow the served logs, log
    accepted feedback, replay on start, checkpoint after durable snapshots, count."""

    def __init__(self, workspace: str | os.PathLike[str], learner: OnlineLearner,
                 clock: StrictClock) -> None:
        self.workspace = Path(workspace)
        self._learner = learner
        self._clock = clock
        cfg = learner.config
        self._window_us = int(cfg.join_window_s * 1e6)
        self._skew_us = int(cfg.max_clock_skew_s * 1e6)
        self._log = FeedbackLog(workspace)
        self._lock = threading.Lock()  # ingest + learn + append, in one order
        self._track = threading.Lock()  # leaf lock: the counters below
        self._batches: deque[_Batch] = deque()
        self._learned_through = 0  # events accepted up to the learned prefix
        self._learned_seq = 0
        self._accepted = 0
        self.replayed = 0
        self.replay_lost = 0
        self.replayed_served = 0
        self.durable_seq = 0
        self.restored = 0  # events the restored snapshot covered
        self._served: dict[str, _ServedProgress] = {}
        self._seen_ids: set[str] = set()

    # -- start ----------------------------------------------------------------------------
    def start(self, covered: dict[str, Any] | None) -> None:
        """Replay what the restored snapshot (lineage ``durability``, or None) lacks."""
        covered = covered or {}
        after = int(covered.get("feedback_seq", 0))
        through = int(covered.get("accepted_through", 0))
        snapshot_wm = covered.get("watermark_us")
        with self._lock:
            self._accepted = self._learned_through = self.restored = through
            self._learned_seq = self.durable_seq = after
            tail: list[tuple[float, int, int, pa.Table | None, int]] = []
            for seq, payload in WalTailer(self._log.directory, after=after).poll(10**9):
                header, table = decode_feedback(payload)
                tail.append((float(header["w"]), 1, seq, table, int(header.get("accepted", 0))))
            wanted = {rid for *_, table, _ in tail if table is not None
                      for rid in table.column("request_id").to_pylist()}
            served: list[tuple[float, int, int, Any, int]] = []
            for directory in self._served_dirs():
                progress = self._progress(directory)
                for seq, payload in progress.tailer.poll(10**9):
                    entry = decode_served(payload)
                    t_us = self._note_served(progress, seq, entry)
                    if (snapshot_wm is None or t_us + self._window_us > int(snapshot_wm)
                            or entry.record.request_id in wanted):
                        served.append((entry.written_at, 0, seq, entry, 0))
            events = sorted(served + tail, key=lambda e: (e[0], e[1]))
            pending: list[ServedRecord] = []
            for _, kind, seq, payload, original in events:
                if kind == 0:
                    pending.append(payload.record)
                    continue
                if pending:
                    self._record_served(pending)
                    pending = []
                if payload is None:
                    continue
                result = self._learn(payload)
                self._note_batch(seq, original)
                self.replayed += result.accepted
                self.replay_lost += max(0, original - result.accepted)
            if pending:
                self._record_served(pending)
        if tail or served:
            logger.info(
                "replayed %d served records and %d feedback batches after sequence %d: "
                "%d events re-learned, %d lost", self.replayed_served, len(tail), after,
                self.replayed, self.replay_lost,
            )

    # -- the served logs -----------------------------------------------------------------
    def _served_dirs(self) -> list[Path]:
        root = served_root(self.workspace)
        return sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []

    def _progress(self, directory: Path) -> _ServedProgress:
        key = directory.name
        progress = self._served.get(key)
        if progress is None:
            progress = self._served[key] = _ServedProgress(WalTailer(directory))
        return progress

    def _note_served(self, progress: _ServedProgress, seq: int, entry: ServedEntry) -> int:
        t_us = _served_time_us(entry)
        progress.max_t_us = max(progress.max_t_us, t_us)
        progress.marks.append((seq, progress.max_t_us))
        return t_us

    def _record_served(self, records: list[ServedRecord]) -> None:
        fresh = [r for r in records if r.request_id not in self._seen_ids]
        self._seen_ids.update(r.request_id for r in fresh)
        if len(self._seen_ids) > 1_000_000:
            self._seen_ids.clear()
        if fresh:
            self.replayed_served += len(fresh)
            self._learner.record_served(fresh)

    def ingest_served(self) -> int:
        """Hand the learner every served record written since the last call."""
        with self._lock:
            return self._ingest_locked()

    def _ingest_locked(self) -> int:
        records: list[ServedRecord] = []
        for directory in self._served_dirs():
            progress = self._progress(directory)
            for seq, payload in progress.tailer.poll():
                try:
                    entry = decode_served(payload)
                except Exception:
                    logger.exception("skipping an unreadable served record %s/%d",
                                     directory.name, seq)
                    continue
                self._note_served(progress, seq, entry)
                records.append(entry.record)
        if records:
            fresh = [r for r in records if r.request_id not in self._seen_ids]
            self._seen_ids.update(r.request_id for r in fresh)
            if fresh:
                self._learner.record_served(fresh)
        return len(records)

    # -- feedback -------------------------------------------------------------------------
    def _learn(self, events: pa.Table) -> FeedbackResult:
        return self._learner.add_feedback(events)

    def _note_batch(self, seq: int, accepted: int) -> None:
        with self._track:
            self._batches.append(_Batch(seq, self._clock.last, accepted))
            self._accepted += accepted

    def feedback(self, events: pa.Table) -> FeedbackResult:
        """Join and learn one batch; if accepted, log it durably before returning."""
        with self._lock:
            self._ingest_locked()  # an impression is known before its click
            result = self._learn(events)
            if result.rejected is None and result.accepted > 0:
                seq = self._log.append(events, result.accepted)
                self._note_batch(seq, result.accepted)
            return result

    # -- checkpoints ----------------------------------------------------------------------
    def _learned_prefix(self) -> tuple[int, int]:
        """(last sequence whose events are all learned, events accepted through it)."""
        _, oldest = self._learner.durability_marks()
        with self._track:
            while self._batches and (oldest is None or self._batches[0].arrived_by < oldest):
                batch = self._batches.popleft()
                self._learned_seq = batch.seq
                self._learned_through += batch.accepted
            return self._learned_seq, self._learned_through

    def lineage(self) -> dict[str, Any]:
        """What a snapshot taken now covers (goes into its lineage as ``durability``)."""
        watermark, _ = self._learner.durability_marks()
        seq, through = self._learned_prefix()
        return {"feedback_seq": seq, "accepted_through": through, "watermark_us": watermark}

    def persisted(self, covered: dict[str, Any]) -> None:
        """A snapshot covering ``covered`` is durable: checkpoint, drop old segments."""
        seq = int(covered["feedback_seq"])
        self.durable_seq = max(self.durable_seq, seq)
        write_checkpoint(self._log.directory, "learner", self.durable_seq)
        keep_from = min(self.durable_seq, read_checkpoint(self._log.directory, "compactor"))
        truncate_segments(self._log.directory, keep_from + 1)
        watermark = covered.get("watermark_us")
        if watermark is None:
            return
        cutoff = int(watermark) - 2 * (self._window_us + self._skew_us)
        with self._track:
            for key, progress in list(self._served.items()):
                done = 0
                while progress.marks and progress.marks[0][1] < cutoff:
                    done = progress.marks.popleft()[0]
                if not done:
                    continue
                directory = served_root(self.workspace) / key
                write_checkpoint(directory, "learner", done)
                compacted = read_checkpoint(directory, "compactor")
                truncate_segments(directory, min(done, compacted) + 1)
                last = progress.tailer.last_seq
                if done >= last and compacted >= last and not is_locked(directory):
                    # A replica that is gone, and everything it logged is used: drop it.
                    shutil.rmtree(directory, ignore_errors=True)
                    del self._served[key]

    def counters(self) -> dict[str, int]:
        _, learned = self._learned_prefix()
        with self._track:
            accepted = self._accepted
        return {
            "accepted": accepted,
            "learned": learned,
            "pending": accepted - learned,
            "restored": self.restored,
            "replayed": self.replayed,
            "replay_lost": self.replay_lost,
            "replayed_served": self.replayed_served,
            "feedback_seq": self._log.last_seq,
            "durable_seq": self.durable_seq,
        }

    def close(self) -> None:
        self._log.close()


class DurableSink:
    """Wraps the registry sink: each snapshot's lineage records what it covers, and the
    logs are checkpointed once the registry holds it."""

    def __init__(self, inner: Any, registry: Any) -> None:
        self._inner = inner
        self._registry = registry
        self.durability: LearnerDurability | None = None

    def __call__(self, version: str, blob: bytes, lineage: dict[str, Any]) -> None:
        durability = self.durability
        covered = durability.lineage() if durability is not None else None
        self._inner(version, blob, {**lineage, "durability": covered})
        if durability is None or covered is None:
            return
        champion = self._registry.champion("online")
        if champion is not None and champion.lineage.get("learner_version") == version:
            durability.persisted(covered)


# ------------------------------------------------------------------------------ compactor


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def served_events(entries: Iterable[ServedEntry], labels: dict[tuple[str, str], list[tuple[int, float]]],
                  window_us: int) -> pa.Table:
    """Impressions in the events schema, each with its final label (largest within the
    window after the request; 0 without feedback)."""
    cols: dict[str, list[Any]] = {name: [] for name in EVENTS_SCHEMA.names}
    for entry in entries:
        record = entry.record
        t_us = _served_time_us(entry)
        base = _sigmoid(record.inputs.base_logit)
        final = _sigmoid(np.asarray(entry.final_logits, dtype=np.float64))
        for position, item in enumerate(record.item_ids):
            got = [label for ts, label in labels.get((record.request_id, item), ())
                   if ts <= t_us + window_us]
            cols["user_id"].append(record.user_id)
            cols["item_id"].append(item)
            cols["ts"].append(t_us)
            cols["label"].append(max(got) if got else 0.0)
            cols["request_id"].append(record.request_id)
            cols["position"].append(position)
            cols["item_category"].append(
                entry.item_categories[position] if position < len(entry.item_categories) else None
            )
            cols["base_version"].append(record.base_version)
            cols["online_version"].append(record.online_version)
            cols["base_score"].append(float(base[position]))
            cols["final_score"].append(float(final[position]))
            cols["fallback_reason"].append(entry.fallback_reason)
            cols["true_ctr"].append(None)
    arrays = []
    for f in EVENTS_SCHEMA:
        values = cols[f.name]
        if f.name == "ts":
            arrays.append(pa.array(values, pa.int64()).cast(f.type))
        else:
            arrays.append(pa.array(values, f.type))
    return pa.Table.from_arrays(arrays, schema=EVENTS_SCHEMA)


def compact_served_log(
    workspace: str | os.PathLike[str],
    events_dir: str | os.PathLike[str],
    join_window_s: float,
    *,
    close_all: bool = False,
) -> int:
    """Append the impressions whose join window has closed (event time: the latest request
    or feedback time in the logs) to the hourly event log, with their final labels;
    returns the rows written. ``close_all`` writes every impression now (shutdown, tests):
    feedback arriving later is then not in the log. Safe to run beside serving, and twice
    at once (a lock); each replica log's progress is its ``compactor`` checkpoint, and part
    files are named by content, so a crash between writing and checkpointing writes nothing
    twice."""
    from feature_store.event_log import write_event_log

    root = wal_root(workspace)
    root.mkdir(parents=True, exist_ok=True)
    lock = DirectoryLock(root, wait_s=LOCK_WAIT_SECONDS)
    try:
        window_us = int(join_window_s * 1e6)
        fb_dir = feedback_dir(workspace)
        fb_after = read_checkpoint(fb_dir, "compactor") if fb_dir.is_dir() else 0
        feedback: list[tuple[int, float]] = []
        labels: dict[tuple[str, str], list[tuple[int, float]]] = {}
        watermark = -(2**62)
        if fb_dir.is_dir():
            for seq, payload in WalTailer(fb_dir, after=fb_after).poll(10**9):
                header, table = decode_feedback(payload)
                feedback.append((seq, float(header["w"])))
                if table is None:
                    continue
                ts = table.column("ts").cast(pa.int64()).to_numpy(zero_copy_only=False)
                if len(ts):
                    watermark = max(watermark, int(ts.max()))
                for rid, item, t, label in zip(
                    table.column("request_id").to_pylist(), table.column("item_id").to_pylist(),
                    ts.tolist(), table.column("label").to_pylist(), strict=True,
                ):
                    labels.setdefault((rid, item), []).append((int(t), float(label)))
        per_dir: list[tuple[Path, list[tuple[int, ServedEntry]]]] = []
        root_served = served_root(workspace)
        for directory in sorted(p for p in root_served.iterdir() if p.is_dir()) if root_served.is_dir() else []:
            after = read_checkpoint(directory, "compactor")
            entries = [(seq, decode_served(p)) for seq, p in WalTailer(directory, after=after).poll(10**9)]
            for _, entry in entries:
                watermark = max(watermark, _served_time_us(entry))
            per_dir.append((directory, entries))
        written = 0
        first_open: list[float] = []
        for directory, entries in per_dir:
            closed: list[ServedEntry] = []
            last = 0
            for seq, entry in entries:
                if not close_all and _served_time_us(entry) + window_us > watermark:
                    first_open.append(entry.written_at)
                    break
                closed.append(entry)
                last = seq
            if closed:
                table = served_events(closed, labels, window_us)
                write_event_log(table, events_dir)
                written += table.num_rows
                write_checkpoint(directory, "compactor", last)
        if fb_dir.is_dir() and feedback:
            bound = min(first_open) if first_open else math.inf
            done = 0
            for seq, w in feedback:  # the prefix written before any impression still open
                if w >= bound:
                    break
                done = seq
            if done:
                write_checkpoint(fb_dir, "compactor", done)
        if written:
            logger.info("compacted %d served impressions into %s", written, events_dir)
        return written
    finally:
        lock.release()
