"""A user's events file: read it, check every column a model depends on, normalise it.

:func:`load_events` is the front door for untrusted files (Parquet or CSV, format
``protos.events``): it says which column and which row is wrong, instead of letting a NaN
label or a garbled time flow silently into features and training. :func:`normalize_events`
does the same for an in-memory table (an importer's output, a feedback batch).
The workspace's hour-partitioned log of such events is ``feature_store.event_log``.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from feature_store.errors import EventsFormatError, UntrainableEventsError
from protos.events import EVENTS_SCHEMA, REQUIRED_COLUMNS, conform

__all__ = [
    "check_trainable",
    "load_events",
    "normalize_events",
    "sort_events",
]

logger = logging.getLogger(__name__)

_TS_TYPE = EVENTS_SCHEMA.field("ts").type  # timestamp[us, UTC]
_NUMERIC_RE = re.compile(r"^\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*$")


def load_events(path: str | os.PathLike[str]) -> pa.Table:
    """Read, validate and normalise a user's events file.

    Parameters
    ----------
    path
        A ``.parquet``/``.pq`` file or a ``.csv`` file (header row required) with at least
        ``user_id``, ``item_id``, ``ts``, ``label``; optional ``request_id``, ``position``
        (0-based), ``item_category`` and the other columns of ``protos.events``. Other
        columns are ignored.

    Returns
    -------
    pa.Table
        ``EVENTS_SCHEMA`` exactly, sorted stably by ``ts`` (rows with equal times keep
        their file order). Integer ids become strings; ``ts`` given as unix seconds (number
        or numeric string) or as an ISO-8601 time becomes ``timestamp[us, UTC]`` (a time
        without a zone is taken as UTC). Times finer than a microsecond (pandas' default
        ``ns`` unit) are truncated to the microsecond, with one warning per file.

    Raises
    ------
    EventsFormatError
        A required column is missing, or a value can't be used: an empty id, an unparseable
        time, a label that is NaN or outside [0, 1], a negative or fractional position. The
        message names the column and the first bad row (0-based; for a CSV also its line).
    FileNotFoundError
        ``path`` does not exist.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"events file not found: {path}")
    suffixes = "".join(path.suffixes[-2:]).lower()
    if path.suffix.lower() in (".parquet", ".pq"):
        table = pq.read_table(path)
        line_offset = None
    elif path.suffix.lower() == ".csv" or suffixes.endswith(".csv.gz"):
        table = _read_csv_as_strings(path)
        line_offset = 2  # 1-based lines, after the header
    else:
        raise EventsFormatError(
            f"{path}: unknown events file type {path.suffix!r} (use .parquet or .csv)",
            column="",
        )
    return normalize_events(table, source=str(path), line_offset=line_offset)


def _read_csv_as_strings(path: Path) -> pa.Table:
    """Every column as text, so each one is converted (and blamed) by our own rules."""
    import pyarrow.csv as pacsv

    opener = _open_text(path)
    with opener as handle:
        header = next(csv.reader(handle), None)
    if not header:
        raise EventsFormatError(f"{path}: empty CSV (no header row)", column="")
    convert = pacsv.ConvertOptions(
        column_types={name: pa.string() for name in header},
        strings_can_be_null=False,
        quoted_strings_can_be_null=False,
    )
    return pacsv.read_csv(path, convert_options=convert)


def _open_text(path: Path) -> io.TextIOBase:
    if path.suffix.lower() == ".gz":
        import gzip

        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")  # noqa: SIM115 (returned for `with`)


def normalize_events(
    table: pa.Table, *, source: str = "events", line_offset: int | None = None
) -> pa.Table:
    """Validate and convert an in-memory table the way :func:`load_events` does a file.

    ``line_offset`` (2 for a CSV with a header) adds the file line to error messages.
    Serving can use this on feedback batches from clients.
    """
    missing = [c for c in REQUIRED_COLUMNS if c not in table.column_names]
    if missing:
        raise EventsFormatError(
            f"{source}: missing required column {missing[0]!r} "
            f"(an events file needs {', '.join(REQUIRED_COLUMNS)}; it has "
            f"{', '.join(table.column_names) or 'no columns'})",
            column=missing[0],
        )
    ctx = _Ctx(source, line_offset)
    columns: dict[str, pa.Array] = {}
    for name in table.column_names:
        if name not in EVENTS_SCHEMA.names:
            continue
        col = table.column(name).combine_chunks()
        if name in ("user_id", "item_id"):
            columns[name] = _to_id(col, name, ctx, required=True)
        elif name in ("request_id", "item_category"):
            columns[name] = _to_id(col, name, ctx, required=False)
        elif name == "ts":
            columns[name] = _to_timestamp(col, ctx)
        elif name == "label":
            columns[name] = _to_label(col, ctx)
        elif name == "position":
            columns[name] = _to_position(col, ctx)
        else:
            columns[name] = _to_optional(col, name, ctx)
    out = conform(pa.table(columns))
    return sort_events(out)


def check_trainable(table: pa.Table, *, source: str = "events") -> pa.Table:
    """``table`` itself if it can train a click model, else ``UntrainableEventsError``.

    A click model learns P(click | shown) from impressions: it needs rows that were shown
    and not clicked (label < 1) as well as clicks (label > 0). A click stream without its
    impressions (every label 1), or impressions without a single click, has one kind only,
    and every fit would learn a constant. Called by the commands that train (``backtest``,
    ``demo --events``, ``train``) before any work; not by ``load_events``, which also reads
    feedback batches, where one kind of label is normal. The message is one line and says
    what the log would need.
    """
    n = table.num_rows
    if n == 0:
        raise UntrainableEventsError(
            f"{source} holds no events: a click model needs impressions, each with a label "
            "(1 clicked, 0 shown and not clicked)"
        )
    labels = table.column("label").to_numpy(zero_copy_only=False)
    if not bool(np.any(labels < 1.0)):
        raise UntrainableEventsError(
            f"{source} cannot train a click model: all {n:,} events are positives (label 1), "
            "so it has no impressions that were not clicked; it needs those as rows with "
            "label 0 (join the click stream with the impression log it came from; for "
            "ratings, label the low ones 0)"
        )
    if not bool(np.any(labels > 0.0)):
        raise UntrainableEventsError(
            f"{source} cannot train a click model: none of its {n:,} events is a positive "
            "(every label is 0); it needs the clicks too, as rows with label 1 (or a label "
            "in (0, 1])"
        )
    return table


def sort_events(table: pa.Table) -> pa.Table:
    """Stable sort by ``ts``: ties keep their order (ratings data has many)."""
    ts = table.column("ts").combine_chunks().cast(pa.int64()).to_numpy(zero_copy_only=False)
    if ts.size and np.all(ts[1:] >= ts[:-1]):
        return table
    return table.take(pa.array(np.argsort(ts, kind="stable")))


class _Ctx:
    """Formats 'column X, row i (line L)' the same way for every check."""

    def __init__(self, source: str, line_offset: int | None) -> None:
        self.source = source
        self.line_offset = line_offset

    def fail(self, column: str, row: int, problem: str, value: object = None) -> EventsFormatError:
        where = f"row {row}"
        if self.line_offset is not None:
            where += f" (line {row + self.line_offset})"
        shown = "" if value is None else f": {value!r}"
        return EventsFormatError(
            f"{self.source}: column {column!r}, {where}: {problem}{shown}", column=column, row=row
        )


def _first(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0])


def _null_mask(col: pa.Array) -> np.ndarray:
    mask: np.ndarray = col.is_null().to_numpy(zero_copy_only=False)
    return mask


def _to_id(col: pa.Array, name: str, ctx: _Ctx, *, required: bool) -> pa.Array:
    t = col.type
    if pa.types.is_dictionary(t):
        col, t = col.cast(t.value_type), t.value_type
    if pa.types.is_integer(t):
        out = col.cast(pa.string())
    elif pa.types.is_floating(t):
        values = col.to_numpy(zero_copy_only=False)
        bad = ~np.isnan(values) & (values != np.round(values))
        if bad.any():
            i = _first(bad)
            raise ctx.fail(name, i, "ids must be strings or integers, got a fraction", values[i])
        nulls = _null_mask(col) | np.isnan(values)
        filled = np.where(nulls, 0, values).astype(np.int64)
        out = pa.array(filled.astype(str), mask=nulls, type=pa.string())
    elif pa.types.is_string(t) or pa.types.is_large_string(t):
        out = col.cast(pa.string())
    else:
        raise ctx.fail(name, 0, f"ids must be strings or integers, not {t}")
    nulls = _null_mask(out)
    empty = pc.fill_null(pc.equal(pc.utf8_trim_whitespace(out), ""), False)
    empty = empty.to_numpy(zero_copy_only=False)
    if required:
        bad = nulls | empty
        if bad.any():
            raise ctx.fail(name, _first(bad), "missing value")
        return out
    # Optional text columns: an empty string means "not given".
    return pc.if_else(pa.array(empty), pa.nulls(len(out), pa.string()), out)


def _to_timestamp(col: pa.Array, ctx: _Ctx) -> pa.Array:
    t = col.type
    if pa.types.is_dictionary(t):
        col, t = col.cast(t.value_type), t.value_type
    nulls = _null_mask(col)
    if nulls.any():
        raise ctx.fail("ts", _first(nulls), "missing time")
    if pa.types.is_timestamp(t):
        if t.tz is None:
            col = pc.assume_timezone(col, "UTC")
        if t.unit == "ns":  # pandas' default unit
            nanos = col.cast(pa.int64()).to_numpy(zero_copy_only=False)
            _warn_if_truncated(nanos, ctx)
            return pa.array(nanos // 1_000, type=pa.int64()).cast(_TS_TYPE)
        return col.cast(_TS_TYPE)
    if pa.types.is_date(t):
        return col.cast(pa.timestamp("s")).cast(pa.timestamp("us")).cast(_TS_TYPE)
    if pa.types.is_integer(t) or pa.types.is_floating(t):
        seconds = col.cast(pa.float64()).to_numpy(zero_copy_only=False)
        return _seconds_to_ts(seconds, ctx, col)
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        text = np.asarray(col.to_pylist(), dtype=object)
        numeric = np.array([bool(_NUMERIC_RE.match(s)) for s in text], dtype=bool)
        micros = np.zeros(len(text), dtype=np.int64)
        if numeric.any():
            seconds = text[numeric].astype(np.float64)
            micros[numeric] = _seconds_to_micros(seconds, ctx, np.flatnonzero(numeric), text)
        if (~numeric).any():
            idx = np.flatnonzero(~numeric)
            parsed = pd.to_datetime(
                pd.Series(text[idx]), utc=True, errors="coerce", format="ISO8601"
            )
            bad = parsed.isna().to_numpy()
            if bad.any():
                i = int(idx[_first(bad)])
                raise ctx.fail("ts", i, "unparseable time (want ISO-8601 or unix seconds)", text[i])
            nanos = parsed.dt.as_unit("ns").astype("int64").to_numpy()
            _warn_if_truncated(nanos, ctx, rows=idx)
            micros[idx] = nanos // 1_000
        return pa.array(micros, type=pa.int64()).cast(_TS_TYPE)
    raise ctx.fail("ts", 0, f"times must be timestamps, unix seconds or ISO-8601 text, not {t}")


def _warn_if_truncated(nanos: np.ndarray, ctx: _Ctx, rows: np.ndarray | None = None) -> None:
    """Say once (per file) that times finer than a microsecond lose their last digits."""
    finer = nanos % 1_000 != 0
    if finer.any():
        j = _first(finer)
        row = int(rows[j]) if rows is not None else j
        logger.warning(
            "%s: column 'ts' has %s time(s) finer than a microsecond (first: row %s); "
            "truncated to microseconds",
            ctx.source, int(finer.sum()), row,
        )


def _seconds_to_micros(
    seconds: np.ndarray, ctx: _Ctx, rows: np.ndarray, shown: np.ndarray | None = None
) -> np.ndarray:
    # Beyond year ~9999 (or NaN/inf) is not a time anyone means.
    bad = ~np.isfinite(seconds) | (np.abs(seconds) > 253_402_300_799)
    if bad.any():
        j = _first(bad)
        value = shown[rows[j]] if shown is not None else seconds[j]
        raise ctx.fail("ts", int(rows[j]), "unparseable time (not a finite unix time)", value)
    return np.round(seconds * 1_000_000).astype(np.int64)


def _seconds_to_ts(seconds: np.ndarray, ctx: _Ctx, col: pa.Array) -> pa.Array:
    micros = _seconds_to_micros(seconds, ctx, np.arange(len(seconds)))
    return pa.array(micros, type=pa.int64()).cast(_TS_TYPE)


def _to_label(col: pa.Array, ctx: _Ctx) -> pa.Array:
    t = col.type
    if pa.types.is_dictionary(t):
        col, t = col.cast(t.value_type), t.value_type
    nulls = _null_mask(col)
    if nulls.any():
        raise ctx.fail("label", _first(nulls), "missing label")
    if pa.types.is_boolean(t):
        values = col.cast(pa.float64()).to_numpy(zero_copy_only=False)
    elif pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t):
        values = col.cast(pa.float64()).to_numpy(zero_copy_only=False)
    elif pa.types.is_string(t) or pa.types.is_large_string(t):
        text = pd.Series(col.to_pylist(), dtype=object)
        empty = (text.str.strip() == "").to_numpy()
        if empty.any():
            raise ctx.fail("label", _first(empty), "missing label")
        values = pd.to_numeric(text, errors="coerce").to_numpy(dtype=np.float64)
        is_nan_text = text.str.strip().str.lower().isin(["nan", "-nan", "+nan"]).to_numpy()
        bad = np.isnan(values) & ~is_nan_text
        if bad.any():
            i = _first(bad)
            raise ctx.fail("label", i, "not a number", text[i])
    else:
        raise ctx.fail("label", 0, f"labels must be numbers in [0, 1], not {t}")
    nan = np.isnan(values)
    if nan.any():
        raise ctx.fail("label", _first(nan), "label is NaN")
    out_of_range = (values < 0.0) | (values > 1.0)
    if out_of_range.any():
        i = _first(out_of_range)
        raise ctx.fail("label", i, "label outside [0, 1]", float(values[i]))
    return pa.array(values.astype(np.float32), type=pa.float32())


def _to_position(col: pa.Array, ctx: _Ctx) -> pa.Array:
    t = col.type
    if pa.types.is_dictionary(t):
        col, t = col.cast(t.value_type), t.value_type
    nulls = _null_mask(col)
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        text = pd.Series(col.to_pylist(), dtype=object)
        empty = text.isna().to_numpy() | (text.fillna("").str.strip() == "").to_numpy()
        values = pd.to_numeric(text.where(~empty, None), errors="coerce").to_numpy(np.float64)
        bad = np.isnan(values) & ~empty
        if bad.any():
            i = _first(bad)
            raise ctx.fail("position", i, "not an integer", text[i])
        nulls = empty
    elif pa.types.is_integer(t) or pa.types.is_floating(t):
        values = col.cast(pa.float64()).to_numpy(zero_copy_only=False)
        nulls = nulls | np.isnan(values)
    else:
        raise ctx.fail("position", 0, f"positions must be integers, not {t}")
    filled = np.where(nulls, 0.0, values)
    bad = (filled < 0) | (filled != np.round(filled)) | (filled > 2**31 - 1)
    if bad.any():
        i = _first(bad)
        raise ctx.fail("position", i, "positions must be 0-based non-negative integers", values[i])
    return pa.array(filled.astype(np.int32), mask=nulls, type=pa.int32())


def _to_optional(col: pa.Array, name: str, ctx: _Ctx) -> pa.Array:
    target = EVENTS_SCHEMA.field(name).type
    if pa.types.is_string(target):
        return _to_id(col, name, ctx, required=False)
    try:
        return col.cast(target)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise EventsFormatError(
            f"{ctx.source}: column {name!r} can't be read as {target}: {exc}", column=name
        ) from exc
