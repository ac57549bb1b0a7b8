"""The workspace's event log is partitioned by hour, idempotent per batch, and filtered by time."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from feature_store.event_log import list_event_hours, read_event_log, write_event_log
from feature_store.events_file import normalize_events


def hour(h: int, minute: int = 0) -> pd.Timestamp:
    return pd.Timestamp(2026, 1, 5, h, minute, tz="UTC")


def log_batch(*specs: tuple[str, pd.Timestamp]) -> pa.Table:
    return normalize_events(
        pa.table(
            {
                "user_id": ["u"] * len(specs),
                "item_id": [item for item, _ in specs],
                "ts": pa.array([ts for _, ts in specs], pa.timestamp("us", tz="UTC")),
                "label": pa.array([0.0] * len(specs), pa.float32()),
            }
        )
    )


def test_the_event_log_is_partitioned_by_hour_and_appending_the_same_batch_twice_stores_it_once(
    tmp_path: Path,
) -> None:
    batch = log_batch(("a", hour(1, 5)), ("b", hour(1, 50)), ("c", hour(3, 0)))
    first = write_event_log(batch, tmp_path)
    again = write_event_log(batch, tmp_path)  # a retried write

    assert first == again
    assert [h.hour for h in list_event_hours(tmp_path)] == [1, 3]
    assert sorted(p.parent.name for p in first) == ["hour=2026-01-05T01", "hour=2026-01-05T03"]
    assert read_event_log(tmp_path).column("item_id").to_pylist() == ["a", "b", "c"]

    write_event_log(log_batch(("d", hour(1, 30))), tmp_path)  # a different batch appends
    assert read_event_log(tmp_path).column("item_id").to_pylist() == ["a", "d", "b", "c"]


def test_replace_mode_replaces_only_the_hours_it_touches_and_reads_filter_by_time(tmp_path: Path) -> None:
    write_event_log(log_batch(("a", hour(1, 5)), ("b", hour(2, 5))), tmp_path)
    write_event_log(log_batch(("z", hour(1, 45))), tmp_path, mode="replace")

    assert read_event_log(tmp_path).column("item_id").to_pylist() == ["z", "b"]
    window = read_event_log(tmp_path, start=hour(1, 50).to_pydatetime(), end=hour(2, 5).to_pydatetime())
    assert window.num_rows == 0
    window = read_event_log(tmp_path, start=hour(1, 45).to_pydatetime(), end=hour(3).to_pydatetime())
    assert window.column("item_id").to_pylist() == ["z", "b"]
    assert np.all(np.diff(window.column("ts").cast(pa.int64()).to_numpy()) >= 0)
    with pytest.raises(ValueError, match="mode"):
        write_event_log(log_batch(("a", hour(1))), tmp_path, mode="merge")  # type: ignore[arg-type]
