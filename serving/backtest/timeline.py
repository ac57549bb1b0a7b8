"""The backtest's calendar: the warm-up, the evaluation steps, and the slice of the log replayed."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pyarrow as pa

from serving.backtest.config import BacktestConfig
from serving.backtest.errors import BacktestDataError

__all__ = ["DAY", "Timeline", "make_timeline", "select_window"]

DAY = timedelta(days=1)


@dataclass(frozen=True)
class Timeline:
    """Where training-only ends and the evaluation days lie.

    ``origin`` is the UTC midnight of the first event; evaluation starts ``warmup`` later and
    runs in whole steps (``step``, a day by default) up to the one holding the last event.
    """

    origin: datetime
    eval_start: datetime
    eval_end: datetime
    days: tuple[datetime, ...]
    step: timedelta = DAY


def make_timeline(
    first_ts: datetime, last_ts: datetime, warmup: timedelta, step: timedelta = DAY
) -> Timeline:
    """Evaluation steps (days by default) for a log spanning ``[first_ts, last_ts]``.

    Raises:
        BacktestDataError: the warm-up leaves no event to evaluate.
    """
    origin = datetime(first_ts.year, first_ts.month, first_ts.day, tzinfo=UTC)
    eval_start = origin + warmup
    if last_ts < eval_start:
        raise BacktestDataError(
            f"the events span {first_ts:%Y-%m-%d %H:%M} .. {last_ts:%Y-%m-%d %H:%M}, all inside "
            f"the warm-up (ends {eval_start:%Y-%m-%d %H:%M}): shorten --warmup or pass a longer log"
        )
    n_days = int((last_ts - eval_start) // step) + 1
    days = tuple(eval_start + i * step for i in range(n_days))
    return Timeline(origin, eval_start, eval_start + n_days * step, days, step)


def select_window(table: pa.Table, cfg: BacktestConfig) -> pa.Table:
    """Apply ``start``/``end``/``max_events`` to a ts-sorted events table.

    Raises:
        BacktestDataError: nothing is left.
    """
    import pyarrow.compute as pc

    n_in = table.num_rows
    if cfg.start is not None:
        table = table.filter(pc.greater_equal(table["ts"], pa.scalar(cfg.start, table.schema.field("ts").type)))
    if cfg.end is not None:
        table = table.filter(pc.less(table["ts"], pa.scalar(cfg.end, table.schema.field("ts").type)))
    if cfg.max_events is not None and table.num_rows > cfg.max_events:
        table = table.slice(0, cfg.max_events)
    if table.num_rows == 0:
        raise BacktestDataError(
            f"no events left of {n_in} after --start {cfg.start} / --end {cfg.end} / --max-events"
        )
    return table
