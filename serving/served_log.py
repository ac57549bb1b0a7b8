"""What serving served and what feedback it accepted, durable before each reply.

Layout (under the workspace)::

    wal/served/<replica-id>/   one write-ahead log per Ranker replica (its only writer)
    wal/feedback/              the learner's log of accepted feedback batches (its only writer)

Write path
    ``Rank`` appends one record per request (``ServedEntry``, built by ``served_entry``:
    the ``ServedRecord`` the learner joins to, plus the final scores, item categories,
    fallback reason, the dense features as served and the propensities) to its
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
Restart (``serving.durability.LearnerDurability.start``)
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
Event log (``serving.served_events.compact_served_log``)
    A compactor turns the logs into the workspace's hourly Parquet event log (events
    schema): one row per impression, with its final label (the largest feedback label within
    the join window; 0 without feedback) once its window has closed, and what the model saw
    (the dense features as served, the online inputs, the propensity:
    ``protos.events``), exactly once (its intent checkpoints). Records written before the
    feature blocks existed still decode (their rows have those columns null).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import struct
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from protos.wal import WriteAheadLog

if TYPE_CHECKING:
    from online_layer.served import ServedRecord
    from serving.ranking import RankOutcome

__all__ = [
    "DirectoryLock",
    "FeedbackLog",
    "SERVED_FSYNC_SECONDS",
    "ServedEntry",
    "ServedLogWriter",
    "decode_feedback",
    "decode_served",
    "encode_feedback",
    "encode_served",
    "feedback_dir",
    "served_entry",
    "is_locked",
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
    log needs (final logits, item categories, fallback reason, and the features as served),
    in the order shown.

    Attributes:
        user_features: ``(len(USER_FEATURES),)`` float32, the user's dense features the base
            scored with; None when not logged (records written before they were).
        item_features: ``(n_shown, len(ITEM_FEATURES))`` float32, one row per shown item;
            None when not logged.
        propensity: ``(n_shown,)`` probability each item was shown at its position; None:
            the deterministic policy (1.0 each).
        team: ``(n_shown,)`` the interleaving team of each shown item
            (``serving.interleaving``); None: the request was not interleaved.
    """

    record: ServedRecord
    final_logits: np.ndarray
    item_categories: tuple[str, ...]
    fallback_reason: str
    written_at: float
    user_features: np.ndarray | None = None
    item_features: np.ndarray | None = None
    propensity: np.ndarray | None = None
    team: np.ndarray | None = None


def served_entry(outcome: RankOutcome, written_at: float,
                 team: np.ndarray | None = None) -> ServedEntry:
    """What ``Rank`` logs for ``outcome``: the shown items (top-k, in the order shown)
    with their inputs, scores, categories and features as served, the fallback reason
    (the ``FallbackReason`` name; "" when the online correction applied) and, for an
    interleaved request, the team of each shown item."""
    from online_layer.served import ServedRecord
    from protos.freshrank.v1 import ranking_pb2

    query = outcome.query
    shown = outcome.order
    index = shown.tolist()
    record = ServedRecord(
        request_id=query.request_id,
        user_id=query.user_id,
        request_time=query.request_time,
        base_version=outcome.base_version,
        item_ids=tuple(query.item_ids[i] for i in index),
        inputs=outcome.inputs.take(shown),
        online_version=outcome.online_version if outcome.fallback is None else "",
    )
    fallback = ("" if outcome.fallback is None
                else ranking_pb2.FallbackReason.Name(outcome.fallback.reason))
    categories = outcome.item_categories
    items = outcome.item_features
    return ServedEntry(
        record,
        outcome.final_logits[shown],
        tuple(str(categories[i]) if categories[i] is not None else "" for i in index)
        if len(categories) == len(query.item_ids) else (),
        fallback,
        written_at,
        user_features=outcome.user_features,
        item_features=None if items is None else np.asarray(items)[shown],
        propensity=outcome.propensity[shown] if outcome.propensity is not None else None,
        team=None if team is None else np.asarray(team, dtype=np.int8).reshape(len(index)),
    )


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
    # Optional blocks follow the original four, each announced in the header, so a
    # reader of the original layout still decodes a new record (it stops after sparse)
    # and a record without them (written before they existed) still decodes here.
    extra: list[bytes] = []
    if entry.user_features is not None and entry.item_features is not None:
        user = np.asarray(entry.user_features, dtype="<f4").reshape(-1)
        items = np.asarray(entry.item_features, dtype="<f4").reshape(n, -1)
        header["fu"], header["fi"] = int(user.shape[0]), int(items.shape[1])
        extra += [user.tobytes(), items.tobytes()]
    if entry.propensity is not None:
        header["p"] = 1
        extra.append(np.asarray(entry.propensity, dtype="<f8").reshape(n).tobytes())
    if entry.team is not None:  # a few small ints: in the header, not a block
        header["team"] = [int(t) for t in np.asarray(entry.team).reshape(n)]
    return _pack(
        _SERVED_TAG,
        header,
        inputs.base_logit.astype("<f8").tobytes(),
        np.asarray(entry.final_logits, dtype="<f8").tobytes(),
        inputs.dense.astype("<f8").tobytes(),
        inputs.sparse.astype("<i8").tobytes(),
        *extra,
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
    offset = 8 * n * (2 + d)
    sparse = np.frombuffer(body, dtype="<i8", count=n * k, offset=offset).reshape(n, k)
    offset += 8 * n * k
    user = items = propensity = None
    if "fu" in h:
        fu, fi = int(h["fu"]), int(h["fi"])
        user = np.frombuffer(body, dtype="<f4", count=fu, offset=offset).astype(np.float32)
        offset += 4 * fu
        items = np.frombuffer(body, dtype="<f4", count=n * fi, offset=offset).reshape(n, fi)
        items = items.astype(np.float32)
        offset += 4 * n * fi
    if h.get("p"):
        propensity = np.frombuffer(body, dtype="<f8", count=n, offset=offset).astype(np.float64)
    team = np.asarray(h["team"], dtype=np.int8) if "team" in h else None
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
    return ServedEntry(record, final.copy(), tuple(h["cats"]), h["fb"], float(h["w"]),
                       user_features=user, item_features=items, propensity=propensity, team=team)


def served_time_us(entry: ServedEntry) -> int:
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
