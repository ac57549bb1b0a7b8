"""A user's events file is validated, converted and sorted by time."""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from feature_store.errors import EventsFormatError
from feature_store.events_file import load_events
from protos.events import EVENTS_SCHEMA

GOOD_CSV = """user_id,item_id,ts,label,position,item_category,extra
7,100,1767600000,1,0,news,x
8,101,2026-01-05T07:59:00Z,0,1,,y
7,102,1767600000,0.5,,sport,z
9,100,2026-01-05 06:00:00,0,2,news,w
"""


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_a_good_csv_is_converted_and_sorted_stably_by_time(tmp_path: Path) -> None:
    table = load_events(write(tmp_path, "events.csv", GOOD_CSV))

    assert table.schema == EVENTS_SCHEMA
    # 1767600000 = 2026-01-05T08:00Z: rows 0 and 2 tie and keep their file order.
    frame = table.to_pandas()
    assert frame["user_id"].tolist() == ["9", "8", "7", "7"]
    assert frame["item_id"].tolist() == ["100", "101", "100", "102"]
    assert frame["ts"].tolist() == [
        pd.Timestamp("2026-01-05 06:00", tz="UTC"),
        pd.Timestamp("2026-01-05 07:59", tz="UTC"),
        pd.Timestamp("2026-01-05 08:00", tz="UTC"),
        pd.Timestamp("2026-01-05 08:00", tz="UTC"),
    ]
    assert frame["label"].tolist() == [0.0, 0.0, 1.0, 0.5]
    assert frame["position"].tolist()[:3] == [2, 1, 0] and pd.isna(frame["position"].iloc[3])
    assert frame["item_category"].tolist() == ["news", None, "news", "sport"]


def test_a_parquet_file_with_integer_ids_and_naive_times_is_read_as_utc(tmp_path: Path) -> None:
    path = tmp_path / "events.parquet"
    pq.write_table(
        pa.table(
            {
                "user_id": pa.array([1, 2], pa.int64()),
                "item_id": pa.array([10, 11], pa.int32()),
                "ts": pa.array([datetime(2026, 1, 5, 9), datetime(2026, 1, 5, 8)], pa.timestamp("ms")),
                "label": pa.array([True, False]),
            }
        ),
        path,
    )
    table = load_events(path)
    assert table.column("user_id").to_pylist() == ["2", "1"]
    assert table.column("ts").to_pylist()[0] == datetime(2026, 1, 5, 8, tzinfo=timezone.utc)
    assert table.column("label").to_pylist() == [0.0, 1.0]


# Each bad file: (column named, 0-based first bad row, text that must appear).
BAD_ROWS = [
    ("missing_column", {"user_id": ["a", "b"], "item_id": ["x", "y"], "ts": [1.0, 2.0]}, "label", None, "missing required column"),
    ("bad_time", {"user_id": ["a", "b", "c"], "item_id": ["x", "y", "z"], "ts": ["2026-01-05T00:00:00Z", "2026-01-05T01:00:00Z", "yesterday"], "label": [0, 1, 0]}, "ts", 2, "unparseable time"),
    ("label_above_one", {"user_id": ["a", "b"], "item_id": ["x", "y"], "ts": [1.0, 2.0], "label": [1.0, 1.5]}, "label", 1, "outside [0, 1]"),
    ("negative_label", {"user_id": ["a", "b"], "item_id": ["x", "y"], "ts": [1.0, 2.0], "label": [-1.0, 0.0]}, "label", 0, "outside [0, 1]"),
    ("nan_label", {"user_id": ["a", "b", "c"], "item_id": ["x", "y", "z"], "ts": [1.0, 2.0, 3.0], "label": [0.0, 1.0, float("nan")]}, "label", 2, "NaN"),
    ("empty_user", {"user_id": ["a", ""], "item_id": ["x", "y"], "ts": [1.0, 2.0], "label": [0.0, 1.0]}, "user_id", 1, "missing value"),
]


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
@pytest.mark.parametrize(("case", "columns", "column", "row", "text"), BAD_ROWS, ids=[c[0] for c in BAD_ROWS])
def test_a_bad_file_names_the_column_and_the_first_bad_row(
    tmp_path: Path, fmt: str, case: str, columns: dict, column: str, row: int | None, text: str
) -> None:
    path = tmp_path / f"{case}.{fmt}"
    if fmt == "csv":
        pd.DataFrame(columns).to_csv(path, index=False, na_rep="NaN")
    else:
        pq.write_table(pa.table(columns), path)  # a real NaN, not a null

    with pytest.raises(EventsFormatError) as caught:
        load_events(path)

    err = caught.value
    assert isinstance(err, ValueError)
    assert err.column == column and err.row == row
    message = str(err)
    assert repr(column) in message and text in message
    if row is not None:
        assert f"row {row}" in message
        if fmt == "csv":
            assert f"line {row + 2}" in message  # the header is line 1


def test_a_fractional_position_and_an_unknown_suffix_are_rejected(tmp_path: Path) -> None:
    path = write(tmp_path, "pos.csv", "user_id,item_id,ts,label,position\na,x,1,0,0\nb,y,2,1,1.5\n")
    with pytest.raises(EventsFormatError, match=r"'position', row 1 \(line 3\)"):
        load_events(path)
    with pytest.raises(EventsFormatError, match="unknown events file type"):
        load_events(write(tmp_path, "events.json", "{}"))


NS_TIMES = [
    "2026-01-05T08:00:00.123456789",  # sub-microsecond digits: truncated, not rounded
    "2026-01-05T07:00:00.000000999",
    "2026-01-05T09:00:00.000001000",  # a whole microsecond: kept as is
]


@pytest.mark.parametrize("tz", ["UTC", None], ids=["utc", "naive"])
def test_a_pandas_parquet_file_with_nanosecond_times_is_truncated_to_microseconds_with_one_warning(
    tmp_path: Path, tz: str | None, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "events.parquet"
    ts = pd.to_datetime(pd.Series(NS_TIMES))
    if tz is not None:
        ts = ts.dt.tz_localize(tz)
    frame = pd.DataFrame({"user_id": ["a", "b", "c"], "item_id": ["x", "y", "z"], "ts": ts, "label": [1, 0, 1]})
    frame.to_parquet(path, index=False)  # pandas' default unit: ns
    assert pq.read_schema(path).field("ts").type.unit == "ns"

    with caplog.at_level(logging.WARNING, logger="feature_store.events_file"):
        table = load_events(path)

    assert table.schema == EVENTS_SCHEMA
    micros = table.column("ts").cast(pa.int64()).to_pylist()
    second = 1_767_600_000 * 1_000_000  # 2026-01-05T08:00Z in microseconds
    assert micros == [second - 3_600_000_000, second + 123_456, second + 3_600_000_001]
    assert table.column("item_id").to_pylist() == ["y", "x", "z"]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    message = warnings[0].getMessage()
    assert str(path) in message and "2 time(s)" in message and "truncated to microseconds" in message


def test_nanosecond_times_without_finer_digits_load_without_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "events.parquet"
    frame = pd.DataFrame(
        {"user_id": ["a"], "item_id": ["x"], "ts": pd.to_datetime(["2026-01-05T08:00:00.5"], utc=True), "label": [1]}
    )
    frame.to_parquet(path, index=False)

    with caplog.at_level(logging.WARNING, logger="feature_store.events_file"):
        table = load_events(path)

    assert table.column("ts").to_pylist() == [datetime(2026, 1, 5, 8, 0, 0, 500_000, tzinfo=timezone.utc)]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
