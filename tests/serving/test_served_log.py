"""The served and feedback logs: encoding, following, replay after a crash, compaction.

In-process (no Ray): real ``OnlineLearner``s, real logs on disk; a "crash" is a second
learner built on the same workspace while the first is simply abandoned.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from feature_store.event_log import read_event_log
from online_layer.learner import OnlineLearner
from online_layer.validation import to_table
from protos.wal import WalTailer, WriteAheadLog
from serving.durability import LearnerDurability, StrictClock
from serving.served_events import compact_served_log
from serving.served_log import (
    ServedEntry,
    ServedLogWriter,
    decode_feedback,
    decode_served,
    encode_feedback,
    encode_served,
    feedback_dir,
)

from tests.online_layer.ol_helpers import EMBEDDING_DIM, START, small_config, world_for


def _learner(clock: StrictClock, **overrides) -> OnlineLearner:
    cfg = {"emit": "on_arrival", "batch_size": 16, "max_batch_delay_s": 1e9, **overrides}
    return OnlineLearner(small_config(**cfg), "base-1", EMBEDDING_DIM, clock=clock)


def _entry(record, fallback: str = "") -> ServedEntry:
    final = record.inputs.base_logit + 0.25
    cats = tuple(f"cat-{i % 3}" for i in range(len(record.item_ids)))
    return ServedEntry(record, final, cats, fallback, 1234.5)


def _stream(n: int, seed: int = 0):
    learner = _learner(StrictClock())
    world = world_for(learner, seed=seed)
    return [(record, to_table(events)) for record, events in world.stream(n, START)]


def test_a_served_record_round_trips_exactly() -> None:
    (record, _), = _stream(1)
    entry = decode_served(encode_served(_entry(record, "FALLBACK_REASON_ONLINE_STALE")))
    got = entry.record
    assert (got.request_id, got.user_id, got.base_version, got.item_ids) == (
        record.request_id, record.user_id, record.base_version, record.item_ids)
    assert got.request_time == record.request_time
    np.testing.assert_array_equal(got.inputs.dense, record.inputs.dense)
    np.testing.assert_array_equal(got.inputs.sparse, record.inputs.sparse)
    np.testing.assert_array_equal(got.inputs.base_logit, record.inputs.base_logit)
    np.testing.assert_array_equal(entry.final_logits, record.inputs.base_logit + 0.25)
    assert entry.fallback_reason == "FALLBACK_REASON_ONLINE_STALE"
    assert entry.written_at == 1234.5


def test_a_feedback_batch_round_trips() -> None:
    (_, events), = _stream(1)
    header, table = decode_feedback(encode_feedback(events, 3, 99.0))
    assert header == {"w": 99.0, "accepted": 3}
    assert table is not None and table.to_pylist() == events.select(table.column_names).to_pylist()


def test_the_tailer_follows_a_writer_across_segments_and_truncation(tmp_path: Path) -> None:
    log = WriteAheadLog(tmp_path, segment_bytes=64)
    tail = WalTailer(tmp_path)
    for i in range(5):
        log.append(b"a%02d" % i * 8, durable=False)
    assert [s for s, _ in tail.poll()] == [1, 2, 3, 4, 5]
    assert tail.poll() == []
    log.close()
    with open(sorted(tmp_path.glob("*.wal"))[-1], "ab") as f:
        f.write(b"\x05\x00\x00")  # a record being written: left for later
    assert tail.poll() == []
    log2 = WriteAheadLog(tmp_path, segment_bytes=64)  # reopen cuts it
    for i in range(5, 12):
        log2.append(b"b%02d" % i * 8)
    log2.truncate_before(6)  # the segments before the one holding 6 (already read)
    assert [s for s, _ in tail.poll()] == list(range(6, 13))
    late = WalTailer(tmp_path)  # a new reader starts at the oldest segment kept
    seqs = [s for s, _ in late.poll()]
    assert seqs[-1] == 12 and seqs == list(range(seqs[0], 13)) and seqs[0] <= 6
    log2.close()


def _serve(writer: ServedLogWriter, stream) -> None:
    for record, _ in stream:
        writer.append(_entry(record))


def test_a_restarted_learner_replays_every_accepted_event(tmp_path: Path) -> None:
    stream = _stream(30)
    writer = ServedLogWriter(tmp_path, replica="r1")
    _serve(writer, stream)
    clock = StrictClock()
    first = LearnerDurability(tmp_path, _learner(clock), clock)
    first.start(None)
    accepted = 0
    for _, events in stream[:20]:
        result = first.feedback(events)
        assert result.rejected is None, result
        accepted += result.accepted
    before = first.counters()
    assert before["accepted"] == accepted
    assert before["learned"] + before["pending"] == accepted
    first._log.close()  # the crash: nothing else is flushed or handed over

    clock2 = StrictClock()
    second = LearnerDurability(tmp_path, _learner(clock2), clock2)
    second.start(None)
    after = second.counters()
    assert after["accepted"] == accepted
    assert after["replayed"] == accepted and after["replay_lost"] == 0
    assert after["learned"] + after["pending"] == accepted
    # Feedback for requests served before the crash still joins.
    for _, events in stream[20:]:
        result = second.feedback(events)
        assert result.rejected is None and result.accepted == events.num_rows
    second._learner.flush()
    final = second.counters()
    assert final["pending"] == 0 and final["learned"] == final["accepted"]
    writer.close()
    second.close()


def test_a_snapshot_covers_a_prefix_and_only_the_tail_is_replayed(tmp_path: Path) -> None:
    stream = _stream(24)
    writer = ServedLogWriter(tmp_path, replica="r1")
    _serve(writer, stream)
    clock = StrictClock()
    learner = _learner(clock)
    first = LearnerDurability(tmp_path, learner, clock)
    first.start(None)
    for _, events in stream[:12]:
        first.feedback(events)
    learner.flush()  # everything so far is learned: a snapshot now covers it all
    covered = first.lineage()
    assert covered["feedback_seq"] == 12 and covered["accepted_through"] == first.counters()["accepted"]
    first.persisted(covered)
    for _, events in stream[12:18]:
        first.feedback(events)
    total = first.counters()["accepted"]
    first._log.close()

    clock2 = StrictClock()
    second = LearnerDurability(tmp_path, _learner(clock2), clock2)
    second.start(covered)
    after = second.counters()
    assert after["accepted"] == total
    assert after["replayed"] == total - covered["accepted_through"]
    assert after["replay_lost"] == 0
    for _, events in stream[18:]:
        assert second.feedback(events).rejected is None
    writer.close()
    second.close()


def test_feedback_refused_by_the_learner_is_not_logged(tmp_path: Path) -> None:
    clock = StrictClock()
    durability = LearnerDurability(tmp_path, _learner(clock), clock)
    durability.start(None)
    (_, events), = _stream(1)
    result = durability.feedback(events)  # never served: unknown_id
    assert result.rejected == "unknown_id"
    assert durability.counters()["accepted"] == 0
    assert durability.counters()["feedback_seq"] == 0
    durability.close()


def test_the_compactor_writes_closed_impressions_with_final_labels(tmp_path: Path) -> None:
    stream = _stream(10)
    writer = ServedLogWriter(tmp_path, replica="r1")
    _serve(writer, stream)
    clock = StrictClock()
    durability = LearnerDurability(tmp_path, _learner(clock), clock)
    durability.start(None)
    for _, events in stream:
        durability.feedback(events)
    events_dir = tmp_path / "events"
    window = 60.0
    # Event time has not passed the last requests' windows: only earlier ones are written.
    first = compact_served_log(tmp_path, events_dir, window)
    last_t = stream[-1][0].request_time
    log = read_event_log(events_dir)
    assert log.num_rows == first
    assert all(t <= last_t - timedelta(seconds=window) for t in log.column("ts").to_pylist())
    rest = compact_served_log(tmp_path, events_dir, window, close_all=True)
    assert compact_served_log(tmp_path, events_dir, window, close_all=True) == 0  # idempotent
    log = read_event_log(events_dir)
    shown = sum(len(r.item_ids) for r, _ in stream)
    assert log.num_rows == first + rest == shown
    labels: dict[tuple[str, str], float] = {}
    for _, events in stream:
        for row in events.to_pylist():
            key = (row["request_id"], row["item_id"])
            labels[key] = max(labels.get(key, 0.0), row["label"])
    rows = log.to_pylist()
    for row in rows:
        assert row["label"] == pytest.approx(labels.get((row["request_id"], row["item_id"]), 0.0))
        assert row["base_version"] == "base-1" and row["fallback_reason"] == ""
        assert 0.0 < row["base_score"] < 1.0 and row["final_score"] > row["base_score"]
    by_request: dict[str, list[tuple[int, str]]] = {}
    for row in rows:
        by_request.setdefault(row["request_id"], []).append((row["position"], row["item_id"]))
    for record, _ in stream:
        assert [i for _, i in sorted(by_request[record.request_id])] == list(record.item_ids)
    assert isinstance(log, pa.Table)
    writer.close()
    durability.close()


def test_two_writers_cannot_share_a_replica_log(tmp_path: Path) -> None:
    import serving.served_log as served_log

    writer = ServedLogWriter(tmp_path, replica="same")
    with pytest.raises(TimeoutError):
        served_log.DirectoryLock(writer.directory, wait_s=0.2)
    writer.close()
    assert feedback_dir(tmp_path).name == "feedback"


READY = {"readiness": {"ready": True}}


class _KeepingSink:
    """Stands in for ``RegistrySnapshotSink``: keeps every other snapshot."""

    def __init__(self) -> None:
        self._last_at: float | None = None
        self.calls = 0
        self.lineages: list[dict] = []

    def __call__(self, version: str, blob: bytes, lineage: dict) -> None:
        self.calls += 1
        if self.calls % 2:
            self._last_at = float(self.calls)
            self.lineages.append(lineage)


def test_checkpoints_advance_only_for_snapshots_the_registry_kept(tmp_path: Path) -> None:
    from protos.wal import read_checkpoint
    from serving.durability import DurableSink

    stream = _stream(12)
    writer = ServedLogWriter(tmp_path, replica="r1")
    _serve(writer, stream)
    clock = StrictClock()
    learner = _learner(clock)
    durability = LearnerDurability(tmp_path, learner, clock)
    durability.start(None)
    inner = _KeepingSink()
    sink = DurableSink(inner, registry=None)
    sink.durability = durability
    for _, events in stream[:6]:
        durability.feedback(events)
    learner.flush()
    sink("v1", b"", READY)  # kept
    assert inner.lineages[-1]["durability"]["feedback_seq"] == 6
    assert read_checkpoint(feedback_dir(tmp_path), "learner") == 6
    for _, events in stream[6:]:
        durability.feedback(events)
    learner.flush()
    sink("v2", b"", READY)  # not kept: the checkpoint stays
    assert read_checkpoint(feedback_dir(tmp_path), "learner") == 6
    sink("v3", b"", READY)
    assert read_checkpoint(feedback_dir(tmp_path), "learner") == 12
    sink("v4", b"", {"readiness": {"ready": False}})  # never kept: nothing is scanned
    assert "durability" not in inner.lineages[-1] or inner.lineages[-1]["durability"]["feedback_seq"] == 12
    writer.close()
    durability.close()
