"""Where ``freshrank train`` gets its rows and its training time.

Either a training-set file, or the workspace's event log joined point-in-time with the
feature store's features (``feature_store.training_set``), with the ``[feature_store]``
settings the command loaded, so a non-default ``ctr_prior`` reaches the training set
exactly as it reaches the features and serving.

``--as-of`` is ``data-end`` (the hour after the newest event: the default, so training
works on a log that ended in the past), ``now`` (the start of the current UTC hour) or a
time (``protos.timeparse.parse_time``).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from base_model.errors import TrainingDataError
from protos.errors import FailedPrecondition
from protos.events import EVENTS_SCHEMA, SERVED_COLUMNS
from protos.timeparse import floor_hour, parse_time

if TYPE_CHECKING:
    from feature_store.config import FeatureStoreConfig

__all__ = [
    "DATA_END",
    "NOW",
    "TRAINING_COLUMNS",
    "as_of_for_table",
    "history_times",
    "log_span",
    "parse_as_of",
    "table_span",
    "training_set_from_log",
]

DATA_END, NOW = "data-end", "now"
#: The events columns a training set built from the log keeps.
TRAINING_COLUMNS: tuple[str, ...] = tuple(c for c in EVENTS_SCHEMA.names if c not in SERVED_COLUMNS)
#: Days of events read before the training time beyond ``train_days`` (the validation day
#: and a margin for the data gates' look-back).
MARGIN_DAYS = 2


def parse_as_of(text: str, data_end: datetime | None) -> datetime:
    """``data-end`` (needs ``data_end``), ``now`` (this UTC hour's start) or a time."""
    if text == DATA_END:
        if data_end is None:
            raise TrainingDataError("no events: there is no data end to train as of")
        return data_end
    if text == NOW:
        return floor_hour(datetime.now(UTC))
    try:
        return parse_time(text)
    except ValueError as exc:
        raise TrainingDataError(f"--as-of: {exc}, or '{DATA_END}'") from exc


def _end_of(newest: datetime) -> datetime:
    """The hour after ``newest``: the whole last hour is in."""
    return floor_hour(newest) + timedelta(hours=1)


def as_of_for_table(text: str, table: pa.Table) -> datetime:
    """``--as-of`` for a training-set file: ``data-end`` is the hour after its newest row."""
    span = table_span(table)
    return parse_as_of(text, _end_of(span[1]) if span else None)


def table_span(table: pa.Table) -> tuple[datetime, datetime] | None:
    """The first and last ``ts`` of ``table`` (aware UTC), None if it is empty."""
    if table.num_rows == 0:
        return None
    bounds = pc.min_max(table.column("ts"))
    first, last = bounds["min"].as_py(), bounds["max"].as_py()
    return parse_time(first), parse_time(last)


def log_span(fs: FeatureStoreConfig) -> tuple[datetime, datetime] | None:
    """The first and last event of the workspace's event log (reads two hours of it)."""
    from feature_store.event_log import list_event_hours, read_event_log

    hours = list_event_hours(fs.events_dir)
    if not hours:
        return None
    one = timedelta(hours=1)
    head = table_span(read_event_log(fs.events_dir, start=hours[0], end=hours[0] + one,
                                     columns=["ts"]))
    tail = table_span(read_event_log(fs.events_dir, start=hours[-1], end=hours[-1] + one,
                                     columns=["ts"]))
    if head is None or tail is None:
        return None
    return head[0], tail[1]


def training_set_from_log(
    fs: FeatureStoreConfig, as_of: str, train_days: int
) -> tuple[pa.Table, datetime]:
    """The events of the ``train_days + 2`` days before the training time, one row per
    impression (``feature_store.event_log.dedupe_impressions``: an impression logged twice
    by serving counts once, with its joined label), with point-in-time features, and that
    training time. Rows written by serving (``serving.served_events``) carry their labels
    as joined within the join window. Every events column is kept except what the model
    saw (``protos.events.SERVED_COLUMNS``: the base trains on point-in-time features, and
    those lists would multiply the rows' size).

    Raises:
        TrainingDataError: no event log, or a malformed ``as_of``.
        FailedPrecondition: the features were never computed.
    """
    from feature_store.errors import WorkspaceError
    from feature_store.event_log import dedupe_impressions, list_event_hours, read_event_log
    from feature_store.training_set import build_training_set

    hours = list_event_hours(fs.events_dir)
    if not hours:
        raise TrainingDataError(
            f"{fs.events_dir} has no event log: add events first (`freshrank data load FILE` or "
            "`freshrank simulate`), or pass --training-set PATH.parquet"
        )
    end = parse_as_of(as_of, hours[-1] + timedelta(hours=1))
    start = end - timedelta(days=train_days + MARGIN_DAYS)
    try:
        rows = dedupe_impressions(read_event_log(fs.events_dir, start=start, end=end,
                                                 columns=TRAINING_COLUMNS))
        table = build_training_set(fs, rows)
    except WorkspaceError as exc:
        raise FailedPrecondition(f"{exc} (`freshrank features compute`)") from exc
    return table, end


def history_times(fs: FeatureStoreConfig, as_of: datetime, train_days: int) -> np.ndarray:
    """Event times of the weeks before the rows ``training_set_from_log`` reads (one per
    impression, as there): the data gates' reference for what a day and an hour of this log
    usually hold (``base_model.seasonal``). Empty when the log holds nothing earlier."""
    from base_model.seasonal import HISTORY_WEEKS
    from feature_store.event_log import dedupe_impressions, read_event_log

    end = as_of - timedelta(days=train_days + MARGIN_DAYS)
    start = end - timedelta(weeks=HISTORY_WEEKS + 1)
    rows = dedupe_impressions(read_event_log(fs.events_dir, start=start, end=end,
                                             columns=["ts", "request_id", "item_id", "label"]))
    return rows.column("ts").cast(pa.timestamp("us")).to_numpy().astype("datetime64[us]")
