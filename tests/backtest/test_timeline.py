"""Where the warm-up ends and the evaluation steps fall; the --start/--end/--max-events window."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pytest

from protos.events import conform
from serving.backtest.config import BacktestConfig
from serving.backtest.errors import BacktestDataError
from serving.backtest.timeline import make_timeline, select_window

T0 = datetime(2019, 11, 24, 0, 0, 17, tzinfo=UTC)


def test_timeline_starts_at_the_first_midnight_plus_warmup():
    t = make_timeline(T0, T0 + timedelta(days=6, hours=23), timedelta(days=2))
    assert t.origin == datetime(2019, 11, 24, tzinfo=UTC)
    assert t.eval_start == datetime(2019, 11, 26, tzinfo=UTC)
    assert len(t.days) == 5 and t.eval_end == datetime(2019, 12, 1, tzinfo=UTC)
    weekly = make_timeline(T0, T0 + timedelta(days=30), timedelta(days=2), step=timedelta(days=7))
    assert [d.day for d in weekly.days] == [26, 3, 10, 17, 24]


def test_timeline_refuses_a_log_inside_the_warmup():
    with pytest.raises(BacktestDataError, match="shorten --warmup"):
        make_timeline(T0, T0 + timedelta(days=1), timedelta(days=2))


def _events(n: int) -> pa.Table:
    ts = [T0 + timedelta(hours=i) for i in range(n)]
    return conform(pa.table({"user_id": ["u"] * n, "item_id": ["i"] * n,
                             "ts": pa.array(ts, pa.timestamp("us", tz="UTC")), "label": [0.0] * n}))


def test_select_window():
    table = _events(48)
    cfg = BacktestConfig.from_dict({"start": "2019-11-24T10:00", "end": "2019-11-25T10:00"})
    out = select_window(table, cfg)
    assert out.num_rows == 24
    assert out["ts"][0].as_py() == datetime(2019, 11, 24, 10, 0, 17, tzinfo=UTC)
    assert select_window(table, BacktestConfig(max_events=5)).num_rows == 5
    with pytest.raises(BacktestDataError, match="no events left"):
        select_window(table, BacktestConfig.from_dict({"start": "2020-01-01"}))
