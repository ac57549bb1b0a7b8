"""What the model saw, in the event log: the served-feature columns, their encoding in the
served log (old records still decode), the compactor's rows, one row per impression for
training, and the event log's lag for ``Status``.

In-process, no Ray: real logs on disk, real Parquet.
"""

from __future__ import annotations

import dataclasses

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from feature_store.event_log import dedupe_impressions, read_event_log, write_event_log
from feature_store.events_file import load_events
from online_layer.features import OnlineInputs
from online_layer.served import ServedRecord
from protos.events import EVENTS_SCHEMA, REQUIRED_COLUMNS, SERVED_COLUMNS
from protos.wal import WriteAheadLog
from serving.served_events import (
    FeedbackLabels,
    compact_served_log,
    event_log_lag_seconds,
    online_inputs_of,
    served_events,
)
from serving.served_log import ServedEntry, ServedLogWriter, decode_served, encode_served

WHEN = datetime(2026, 12, 1, 10, 30, 0, 250, tzinfo=UTC)

# A served record as the code before the served-feature columns wrote it (ServedEntry with
# record, final logits, categories, fallback, written_at; no features, no propensity).
OLD_RECORD = bytes.fromhex(
    "5331a60000007b22726964223a227265712d31222c22756964223a22752d31222c2274223a3137393631323130303030"
    "30303235302c226276223a22626173652d30303031222c226f76223a226f6e6c696e652d37222c226974656d73223a5b"
    "22692d31222c22692d32225d2c2263617473223a5b226361742d61222c22225d2c226662223a22222c2277223a313730"
    "303030303030302e352c226e223a322c2264223a332c226b223a327d000000000000e03f000000000000f4bf00000000"
    "0000e83f000000000000f0bf000000000000f03f0000000000000040000000000000084000000000000010c000000000"
    "0000c03f00000000000018400700000000000000080000000000000009000000000000000a00000000000000"
)
OLD_INPUTS = OnlineInputs(
    np.array([0.5, -1.25]),
    np.array([[1.0, 2.0, 3.0], [-4.0, 0.125, 6.0]]),
    np.array([[7, 8], [9, 10]]),
)


def _record(request_id: str = "req-1", when: datetime = WHEN, items=("i-1", "i-2")) -> ServedRecord:
    n = len(items)
    inputs = OnlineInputs(
        OLD_INPUTS.base_logit[:n], OLD_INPUTS.dense[:n], OLD_INPUTS.sparse[:n]
    )
    return ServedRecord(request_id=request_id, user_id="u-1", request_time=when,
                        base_version="base-0001", item_ids=tuple(items), inputs=inputs,
                        online_version="online-7")


def _entry(request_id: str = "req-1", when: datetime = WHEN, *, propensity=None) -> ServedEntry:
    user = np.array([1.5, 2.0, 0.25, 3.0, 4.0, 0.5], dtype=np.float32)
    items = np.arange(20, dtype=np.float32).reshape(2, 10) / 8
    return ServedEntry(_record(request_id, when), np.array([0.75, -1.0]), ("cat-a", ""),
                       "FALLBACK_REASON_ONLINE_ABSENT", 1700000000.5,
                       user_features=user, item_features=items, propensity=propensity)


def test_a_record_written_before_the_feature_columns_still_decodes() -> None:
    entry = decode_served(OLD_RECORD)
    record = entry.record
    assert (record.request_id, record.user_id, record.base_version, record.online_version) == (
        "req-1", "u-1", "base-0001", "online-7")
    assert record.item_ids == ("i-1", "i-2") and record.request_time == WHEN
    np.testing.assert_array_equal(record.inputs.base_logit, OLD_INPUTS.base_logit)
    np.testing.assert_array_equal(record.inputs.dense, OLD_INPUTS.dense)
    np.testing.assert_array_equal(record.inputs.sparse, OLD_INPUTS.sparse)
    np.testing.assert_array_equal(entry.final_logits, [0.75, -1.0])
    assert entry.item_categories == ("cat-a", "") and entry.written_at == 1700000000.5
    assert entry.user_features is None and entry.item_features is None
    assert entry.propensity is None
    # ... and the compactor writes it with nulls for what was not logged, propensity 1.
    row = served_events([entry], FeedbackLabels(), 0).to_pylist()[0]
    assert row["user_features"] is None and row["item_features"] is None
    assert row["propensity"] == 1.0 and row["online_base_logit"] == 0.5
    assert row["online_dense"] == [1.0, 2.0, 3.0] and row["online_sparse"] == [7, 8]


def test_features_and_propensities_round_trip_and_old_readers_still_read_the_rest() -> None:
    entry = _entry(propensity=np.array([0.9, 0.25]))
    payload = encode_served(entry)
    got = decode_served(payload)
    np.testing.assert_array_equal(got.user_features, entry.user_features)
    np.testing.assert_array_equal(got.item_features, entry.item_features)
    np.testing.assert_array_equal(got.propensity, [0.9, 0.25])
    assert got.user_features.dtype == np.float32 and got.item_features.shape == (2, 10)
    # The original blocks come first, unchanged: a reader of the old layout decodes them.
    assert payload.startswith(OLD_RECORD[:2]) and OLD_RECORD[-64:] in payload
    without = decode_served(encode_served(ServedEntry(entry.record, entry.final_logits,
                                                      entry.item_categories, "", 1.0)))
    assert without.user_features is None and without.propensity is None


def test_the_compactor_writes_what_the_model_saw(tmp_path: Path) -> None:
    writer = ServedLogWriter(tmp_path, replica="r1")
    writer.append(_entry("a"))
    writer.append(_entry("b", WHEN + timedelta(seconds=1), propensity=np.array([0.5, 0.125])))
    writer.sync()
    events_dir = tmp_path / "events"
    assert compact_served_log(tmp_path, events_dir, 60.0, close_all=True) == 4
    log = read_event_log(events_dir)
    assert log.schema == EVENTS_SCHEMA
    rows = log.to_pylist()
    assert [(r["request_id"], r["position"]) for r in rows] == [("a", 0), ("a", 1), ("b", 0), ("b", 1)]
    entry = _entry()
    for row in rows:
        p = row["position"]
        assert row["user_features"] == entry.user_features.tolist()
        assert row["item_features"] == entry.item_features[p].tolist()
        assert row["online_dense"] == OLD_INPUTS.dense[p].tolist()
        assert row["online_sparse"] == OLD_INPUTS.sparse[p].tolist()
        assert row["online_base_logit"] == OLD_INPUTS.base_logit[p]
        assert row["fallback_reason"] == "FALLBACK_REASON_ONLINE_ABSENT"
    assert [r["propensity"] for r in rows] == [1.0, 1.0, 0.5, 0.125]
    inputs = online_inputs_of(log)
    np.testing.assert_array_equal(inputs.dense, np.vstack([OLD_INPUTS.dense] * 2))
    np.testing.assert_array_equal(inputs.sparse, np.vstack([OLD_INPUTS.sparse] * 2))
    np.testing.assert_array_equal(inputs.base_logit, np.tile(OLD_INPUTS.base_logit, 2))
    writer.close()


def test_online_inputs_need_rows_written_by_serving() -> None:
    table = pa.table({"user_id": ["u"], "item_id": ["i"], "ts": pa.array([0], pa.timestamp("us", tz="UTC")),
                      "label": pa.array([0.0], pa.float32())})
    from protos.events import conform

    with pytest.raises(ValueError, match="online_base_logit"):
        online_inputs_of(conform(table))


def _events(request_ids, items, labels) -> pa.Table:
    n = len(items)
    return pa.table({
        "user_id": ["u"] * n,
        "item_id": items,
        "ts": pa.array(list(range(n)), pa.int64()).cast(pa.timestamp("us", tz="UTC")),
        "label": pa.array(labels, pa.float32()),
        "request_id": pa.array(request_ids, pa.string()),
    })


def test_an_impression_logged_twice_trains_once_with_its_joined_label() -> None:
    table = _events(["r1", "r1", "r2", "r1", None, None], ["a", "b", "a", "a", "a", "a"],
                    [0.0, 1.0, 0.0, 1.0, 0.0, 1.0])
    out = dedupe_impressions(table)
    assert out.column("request_id").to_pylist() == ["r1", "r1", "r2", None, None]
    assert out.column("item_id").to_pylist() == ["a", "b", "a", "a", "a"]
    assert out.column("label").to_pylist() == [1.0, 1.0, 0.0, 0.0, 1.0]  # r1/a: max of its copies
    assert out.column("ts").to_pylist() == table.column("ts").to_pylist()[:3] + table.column("ts").to_pylist()[4:]
    unique = _events(["r1", "r2"], ["a", "a"], [0.0, 1.0])
    assert dedupe_impressions(unique) is unique


def test_a_user_file_and_an_old_log_without_the_served_columns_still_load(tmp_path: Path) -> None:
    path = tmp_path / "mine.parquet"
    pq.write_table(pa.table({"user_id": [1, 2], "item_id": ["x", "y"], "ts": [1_700_000_000, 1_700_000_060],
                             "label": [1.0, 0.0]}), path)
    events = load_events(path)
    assert events.schema == EVENTS_SCHEMA and set(REQUIRED_COLUMNS) <= set(events.column_names)
    for name in SERVED_COLUMNS:
        assert events.column(name).null_count == 2
    # A part written before the columns existed (the old schema) reads with them null.
    old_schema = pa.schema([f for f in EVENTS_SCHEMA if f.name not in SERVED_COLUMNS])
    hour = tmp_path / "log" / "hour=2023-11-14T22"
    hour.mkdir(parents=True)
    pq.write_table(events.select(old_schema.names).cast(old_schema), hour / "part-old.parquet")
    log = read_event_log(tmp_path / "log")
    assert log.schema == EVENTS_SCHEMA and log.num_rows == 2
    assert log.column("propensity").null_count == 2
    write_event_log(log, tmp_path / "log")  # and the new schema appends beside it
    assert read_event_log(tmp_path / "log").num_rows == 4
    # A reader may leave columns unread: those asked for, in that order, absent ones null.
    some = read_event_log(tmp_path / "log", columns=["label", "propensity", "user_id"])
    assert some.column_names == ["label", "propensity", "user_id"] and some.num_rows == 4
    assert some.column("propensity").null_count == 4
    assert some.column("user_id").to_pylist() == read_event_log(tmp_path / "log").column("user_id").to_pylist()
    with pytest.raises(ValueError, match="not an events column"):
        read_event_log(tmp_path / "log", columns=["nope"])


def test_the_event_log_lag_is_the_age_of_its_newest_event(tmp_path: Path) -> None:
    log_dir = tmp_path / "events"
    assert event_log_lag_seconds(log_dir, now=100.0) == -1.0
    log_dir.mkdir()
    (log_dir / "hour=2026-12-01T11").mkdir()  # an hour without parts does not count
    assert event_log_lag_seconds(log_dir, now=100.0) == -1.0
    t0 = datetime(2026, 12, 1, 9, 59, 30, 500_000, tzinfo=UTC).timestamp()
    write_event_log(_events(["r1", "r2"], ["a", "b"], [0.0, 1.0]).set_column(
        2, "ts", pa.array([int((t0 - 3600) * 1e6), int(t0 * 1e6)], pa.int64()).cast(
            pa.timestamp("us", tz="UTC"))), log_dir)
    assert event_log_lag_seconds(log_dir, now=t0 + 12.25) == pytest.approx(12.25)
    later = t0 + 3600.0  # a newer hour's part moves it
    write_event_log(_events(["r3"], ["c"], [0.0]).set_column(
        2, "ts", pa.array([int(later * 1e6)], pa.int64()).cast(pa.timestamp("us", tz="UTC"))), log_dir)
    assert event_log_lag_seconds(log_dir, now=later + 1.0) == pytest.approx(1.0)


def test_the_wal_holds_new_and_old_records_side_by_side(tmp_path: Path) -> None:
    """A replica upgraded in place appends new records after old ones: both decode."""
    log = WriteAheadLog(tmp_path / "wal" / "served" / "r1")
    log.append(OLD_RECORD)
    log.append(encode_served(_entry("b", WHEN + timedelta(seconds=1))))
    log.close()
    assert compact_served_log(tmp_path, tmp_path / "events", 60.0, close_all=True) == 4
    rows = read_event_log(tmp_path / "events").to_pylist()
    assert [r["user_features"] is None for r in rows] == [True, True, False, False]


def _clicks(request_id: str, item: str, when: datetime) -> pa.Table:
    return pa.table({
        "request_id": [request_id], "user_id": ["u-1"], "item_id": [item],
        "ts": pa.array([when], pa.timestamp("us", tz="UTC")),
        "label": pa.array([1.0], pa.float32()), "position": pa.array([0], pa.int32()),
    })


def test_a_compaction_redone_after_a_crash_writes_nothing_twice(tmp_path: Path) -> None:
    from protos.wal import write_checkpoint
    from serving.served_log import FeedbackLog

    writer = ServedLogWriter(tmp_path, replica="r1")
    feedback = FeedbackLog(tmp_path)
    writer.append(_entry("a"))
    writer.append(_entry("b", WHEN + timedelta(seconds=1)))
    feedback.append(_clicks("a", "i-2", WHEN + timedelta(seconds=2)), 1)
    events_dir = tmp_path / "events"
    assert compact_served_log(tmp_path, events_dir, 60.0, close_all=True) == 4
    parts = sorted(events_dir.rglob("*.parquet"))
    # The crash: the rows are written, the checkpoints (the replica log's, then the
    # feedback log's) are not. Meanwhile more is served, and a click arrives for a request
    # whose rows were already written.
    write_checkpoint(writer.directory, "compactor", 0)
    write_checkpoint(feedback.directory, "compactor", 0)
    writer.append(_entry("c", WHEN + timedelta(seconds=3)))
    feedback.append(_clicks("b", "i-1", WHEN + timedelta(seconds=4)), 1)
    compact_served_log(tmp_path, events_dir, 60.0, close_all=True)  # redoes exactly a, b
    assert sorted(events_dir.rglob("*.parquet")) == parts
    assert compact_served_log(tmp_path, events_dir, 60.0, close_all=True) == 2  # then c
    log = read_event_log(events_dir)
    keys = list(zip(log.column("request_id").to_pylist(), log.column("item_id").to_pylist()))
    assert len(keys) == len(set(keys)) == 6
    labels = dict(zip(keys, log.column("label").to_pylist()))
    assert labels[("a", "i-2")] == 1.0 and labels[("b", "i-1")] == 0.0  # as first written
    writer.close()
    feedback.close()


def test_a_new_bases_warm_start_labels_its_impressions_as_the_compactor_does(tmp_path: Path) -> None:
    from serving.served_log import FeedbackLog
    from serving.warm_replay import warm_start_batches

    writer = ServedLogWriter(tmp_path, replica="r1")
    feedback = FeedbackLog(tmp_path)
    writer.append(_entry("a"))  # closed, clicked on i-2 in its window
    writer.append(_entry("b", WHEN + timedelta(seconds=1)))  # closed, a click after its window
    other = _entry("c", WHEN + timedelta(seconds=2))
    writer.append(ServedEntry(dataclasses.replace(other.record, base_version="base-0002"),
                              other.final_logits, other.item_categories, "", 1.0))
    writer.append(_entry("d", WHEN + timedelta(seconds=200)))  # its window still open
    writer.sync()
    feedback.append(_clicks("a", "i-2", WHEN + timedelta(seconds=2)), 1)
    feedback.append(_clicks("b", "i-1", WHEN + timedelta(seconds=150)), 1)
    batches = list(warm_start_batches(tmp_path, "base-0001", join_window_s=60.0))
    request_at = {np.datetime64(WHEN.replace(tzinfo=None) + timedelta(seconds=s), "us"): rid
                  for rid, s in (("a", 0), ("b", 1), ("c", 2), ("d", 200))}
    replayed = {(request_at[t], item): y for b in batches
                for t, item, y in zip(b.event_time, b.item_ids.tolist(), b.labels.tolist(), strict=True)}
    assert replayed == {("a", "i-1"): 0.0, ("a", "i-2"): 1.0, ("b", "i-1"): 0.0, ("b", "i-2"): 0.0}
    assert all(b.base_version == "base-0001" for b in batches)
    events_dir = tmp_path / "events"
    compact_served_log(tmp_path, events_dir, 60.0, close_all=True)
    log = read_event_log(events_dir)
    compacted = {(r["request_id"], r["item_id"]): r["label"] for r in log.to_pylist()}
    assert all(compacted[key] == label for key, label in replayed.items())
    writer.close()
    feedback.close()


def test_the_interleaving_team_round_trips_and_lands_in_the_event_log(tmp_path: Path) -> None:
    interleaved = dataclasses.replace(_entry("c"), team=np.array([2, 1], dtype=np.int8))
    got = decode_served(encode_served(interleaved))
    assert got.team is not None and got.team.tolist() == [2, 1]
    assert decode_served(OLD_RECORD).team is None and decode_served(encode_served(_entry())).team is None
    writer = ServedLogWriter(tmp_path, replica="r1")
    writer.append(_entry("a"))
    writer.append(interleaved)
    writer.sync()
    assert compact_served_log(tmp_path, tmp_path / "events", 60.0, close_all=True) == 4
    rows = read_event_log(tmp_path / "events").to_pylist()
    assert [(r["request_id"], r["interleave_team"], r["propensity"]) for r in rows] == [
        ("a", None, 1.0), ("a", None, 1.0), ("c", 2, None), ("c", 1, None)]
