"""Checks that stand between live feedback and the weights.

A feedback batch (one ``add_feedback`` call) that fails any check is rejected whole: none of
its rows joins, nothing is learned, and the weights stay bit-identical. A mini-batch of
joined examples is checked once more for its label rate just before it is learned, and is
dropped whole if it fails. The reasons, in the order they are checked:

``schema_skew``   not an events table, a column the learner needs is missing, a column of
                  the wrong type or not in ``protos.events.EVENTS_SCHEMA``; or a served
                  record whose feature widths differ from the model's.
``malformed_id``  a null, empty or over-long request, user or item id.
``non_finite``    a null, NaN or infinite label or time; or served inputs with NaN/inf.
``out_of_range``  a label outside [0, 1], a position below 0 or above ``max_position``, a
                  time far ahead of the learner's clock or before its request; a hashed
                  index outside the table.
``unknown_id``    feedback for a request that was never served, an item it did not serve,
                  or another user than the one served.
``base_version``  feedback or a served record for another base version than the layer's.
``label_flood``   (mini-batch) a label rate far outside its recent range: a click flood, or
                  with ``label_rate_two_sided`` a drought.

Rows for requests whose join window has already closed are not a rejection: they are
dropped and counted (``late``, or ``retired`` after a rebase).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any, TypeAlias

import numpy as np
import pyarrow as pa

from online_layer.errors import OnlineLayerError
from protos.events import EVENTS_SCHEMA

if TYPE_CHECKING:
    from online_layer.features import OnlineFeaturizer, OnlineInputs

# One feedback batch as callers hand it over: an events-schema Arrow table (or record
# batch), or a list of event dicts (``{"request_id": ..., "ts": datetime, ...}``).
FeedbackEvents: TypeAlias = "pa.Table | pa.RecordBatch | Sequence[Mapping[str, Any]]"

MAX_ID_LENGTH = 512


def short_id(value: object, limit: int = 64) -> str:
    """``repr`` of an id for a message, cut to about ``limit`` characters (an attacker's
    4 MB id must not come back as a 4 MB message, nor be logged whole).

    >>> short_id("x" * 100, limit=10)
    "'xxxxxxxxxx'... (100 chars)"
    """
    if isinstance(value, str) and len(value) > limit:
        return f"{value[:limit]!r}... ({len(value)} chars)"
    return repr(value)


# Columns the learner cannot join without (request_id is optional in the events contract,
# but feedback that cannot be joined to what was served cannot be learned).
JOIN_COLUMNS: tuple[str, ...] = ("request_id", "user_id", "item_id", "ts", "label")


class RejectReason(str, Enum):
    """Why a feedback batch was rejected (values are the counter names in reports)."""

    SCHEMA_SKEW = "schema_skew"
    MALFORMED_ID = "malformed_id"
    NON_FINITE = "non_finite"
    OUT_OF_RANGE = "out_of_range"
    UNKNOWN_ID = "unknown_id"
    BASE_VERSION = "base_version"
    LABEL_FLOOD = "label_flood"


class BatchRejected(OnlineLayerError):
    """Raised inside the learner to abandon a batch; carries the reason and the detail."""

    def __init__(self, reason: RejectReason, detail: str, rows: int = 0) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail
        self.rows = rows


@dataclass(frozen=True, eq=False)
class FeedbackColumns:
    """A feedback batch after the schema and value checks, as plain arrays.

    ``position`` is -1 where the event gave none; ``base_version`` is None when the table
    has no such column (or only nulls in it).
    """

    request_id: list[str]
    user_id: list[str]
    item_id: list[str]
    ts_us: np.ndarray  # (N,) int64 microseconds since the epoch, UTC
    label: np.ndarray  # (N,) float64 in [0, 1]
    position: np.ndarray  # (N,) int64, -1 = unknown
    base_version: list[str | None] | None

    def __len__(self) -> int:
        return len(self.request_id)


def _is_string(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_null(t)


def _type_ok(name: str, t: pa.DataType) -> bool:
    if name == "ts":
        return pa.types.is_timestamp(t)
    if name == "label":
        return pa.types.is_floating(t) or pa.types.is_integer(t)
    if name == "position":
        return pa.types.is_integer(t) or pa.types.is_null(t)
    expected = EVENTS_SCHEMA.field(name).type
    if pa.types.is_string(expected):
        return _is_string(t)
    if pa.types.is_list(expected):  # what serving logged (features, inputs): lists or nulls
        return pa.types.is_null(t) or (
            pa.types.is_list(t) and (pa.types.is_floating(t.value_type) or pa.types.is_integer(t.value_type))
        )
    return pa.types.is_floating(t) or pa.types.is_integer(t) or pa.types.is_null(t)


def to_table(events: FeedbackEvents | object) -> pa.Table:
    """An Arrow table from a table, record batch, or list of dicts in the events format.

    Raises
    ------
    BatchRejected
        ``schema_skew`` for anything else, or rows Arrow cannot put in one schema.
    """
    if isinstance(events, pa.Table):
        return events
    if isinstance(events, pa.RecordBatch):
        return pa.Table.from_batches([events])
    if isinstance(events, Sequence) and not isinstance(events, (str, bytes)):
        if not all(isinstance(row, Mapping) for row in events):
            raise BatchRejected(RejectReason.SCHEMA_SKEW, "a list of events must hold mappings")
        # Columns from the union of keys: ``pa.Table.from_pylist`` would take the first
        # row's keys and silently drop a field that only later rows carry.
        names: dict[str, None] = {}
        for row in events:
            names.update(dict.fromkeys(row))
        try:
            return pa.table({name: pa.array([row.get(name) for row in events]) for name in names})
        except (pa.ArrowException, TypeError, ValueError) as exc:
            raise BatchRejected(
                RejectReason.SCHEMA_SKEW, f"events do not fit one schema: {exc}", len(events)
            ) from exc
    raise BatchRejected(
        RejectReason.SCHEMA_SKEW,
        f"feedback must be an Arrow table or a list of dicts, got {type(events).__name__}",
    )


def check_feedback(table: pa.Table, max_position: int) -> FeedbackColumns:
    """Schema, id and value checks of one feedback batch (no state is consulted).

    Raises
    ------
    BatchRejected
        With the first failing reason (see the module docstring) and a detail naming the
        column and the first bad row.
    """
    n = table.num_rows
    missing = [c for c in JOIN_COLUMNS if c not in table.column_names]
    if missing:
        raise BatchRejected(
            RejectReason.SCHEMA_SKEW, f"missing column(s): {', '.join(missing)}", n
        )
    unknown = [c for c in table.column_names if c not in EVENTS_SCHEMA.names]
    if unknown:
        raise BatchRejected(
            RejectReason.SCHEMA_SKEW,
            f"column(s) not in the events schema: {', '.join(unknown)}",
            n,
        )
    for name in table.column_names:
        t = table.schema.field(name).type
        if not _type_ok(name, t):
            raise BatchRejected(
                RejectReason.SCHEMA_SKEW,
                f"column {name!r} has type {t}; the events schema says "
                f"{EVENTS_SCHEMA.field(name).type}",
                n,
            )

    ids: dict[str, list[str]] = {}
    for name in ("request_id", "user_id", "item_id"):
        values = table.column(name).to_pylist()
        for row, value in enumerate(values):
            if not value or len(value) > MAX_ID_LENGTH:
                raise BatchRejected(
                    RejectReason.MALFORMED_ID,
                    f"{name} at row {row} is {short_id(value)}: ids must be 1..{MAX_ID_LENGTH} chars",
                    n,
                )
        ids[name] = values

    label_col = table.column("label")
    label = label_col.cast(pa.float64()).fill_null(math.nan).to_numpy(zero_copy_only=False)
    bad = ~np.isfinite(label)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise BatchRejected(
            RejectReason.NON_FINITE, f"label at row {row} is {label_col[row].as_py()!r}", n
        )
    ts_col = table.column("ts")
    if ts_col.null_count:
        row = int(np.flatnonzero(ts_col.is_null().to_numpy(zero_copy_only=False))[0])
        raise BatchRejected(RejectReason.NON_FINITE, f"ts at row {row} is null", n)
    ts_us = (
        ts_col.cast(pa.timestamp("us", tz="UTC")).cast(pa.int64()).to_numpy(zero_copy_only=False)
    )
    out = (label < 0.0) | (label > 1.0)
    if out.any():
        row = int(np.flatnonzero(out)[0])
        raise BatchRejected(
            RejectReason.OUT_OF_RANGE, f"label at row {row} is {label[row]}: not in [0, 1]", n
        )
    if "position" in table.column_names and not pa.types.is_null(table.schema.field("position").type):
        position = (
            table.column("position").cast(pa.int64()).fill_null(-1).to_numpy(zero_copy_only=False)
        )
        nulls = table.column("position").is_null().to_numpy(zero_copy_only=False)
        out = ((position < 0) & ~nulls) | (position > max_position)
        if out.any():
            row = int(np.flatnonzero(out)[0])
            raise BatchRejected(
                RejectReason.OUT_OF_RANGE,
                f"position at row {row} is {position[row]}: not in [0, {max_position}]",
                n,
            )
    else:
        position = np.full(n, -1, dtype=np.int64)
    base_version = None
    if "base_version" in table.column_names and table.column("base_version").null_count < n:
        base_version = table.column("base_version").to_pylist()
    return FeedbackColumns(
        request_id=ids["request_id"],
        user_id=ids["user_id"],
        item_id=ids["item_id"],
        ts_us=np.ascontiguousarray(ts_us, dtype=np.int64),
        label=np.ascontiguousarray(label, dtype=np.float64),
        position=np.ascontiguousarray(position, dtype=np.int64),
        base_version=base_version,
    )


def check_served_inputs(
    inputs: OnlineInputs, featurizer: OnlineFeaturizer
) -> tuple[RejectReason, str] | None:
    """Why rows as served cannot be learned by a layer with this featurizer, or None.

    Used on ``record_served`` (the problem is kept with the record and rejects its
    feedback batches) and on replay batches.
    """
    f = featurizer
    if inputs.n_dense != f.n_dense or inputs.n_sparse != f.n_sparse:
        return (
            RejectReason.SCHEMA_SKEW,
            f"served inputs have {inputs.n_dense} dense / {inputs.n_sparse} sparse "
            f"columns; the layer has {f.n_dense} / {f.n_sparse}",
        )
    if not inputs.all_finite():
        return RejectReason.NON_FINITE, "served inputs hold NaN or inf"
    if inputs.sparse.size and (
        inputs.sparse.min() < 0 or inputs.sparse.max() >= (1 << f.hash_bits)
    ):
        return RejectReason.OUT_OF_RANGE, "served inputs hold a hashed index outside the table"
    return None


class LabelRateGuard:
    """Rejects a mini-batch whose label rate is far outside the recent rate (a click flood).

    It looks at the mini-batch about to be learned, not at how feedback happened to be
    chunked (clicks and impressions may arrive in separate calls). The recent rate is an
    exponentially weighted mean over every checked batch, rejected ones included, with a
    half-life in events: a burst is rejected, while a lasting shift of the true rate is
    accepted after about a half-life instead of locking the learner out for good. A batch
    of ``m`` examples with mean label ``r`` is a flood when, with ``p`` the recent rate and
    ``se = sqrt(max(p (1 - p), 1e-4) / m)``::

        r > factor * p + z * se

    and (only if ``two_sided``) a drought when ``r < p / factor - z * se``. Until
    ``min_events`` examples were seen it only learns the rate. Both emission policies
    (``online_layer.join``) give batches with the stream's true label mix, so the
    comparison is like with like.
    """

    def __init__(
        self, halflife: float, min_events: int, factor: float, z: float, two_sided: bool = False
    ) -> None:
        self.halflife = halflife
        self.min_events = min_events
        self.factor = factor
        self.z = z
        self.two_sided = two_sided
        self.rate = 0.0
        self.events = 0
        self._weighted_sum = 0.0  # exponentially weighted sum of labels ...
        self._weight = 0.0  # ... and of counts: their ratio has no start-up bias

    def verdict(self, labels: np.ndarray) -> str | None:
        """None if the batch is plausible, else why not (changes nothing)."""
        m = labels.shape[0]
        if m == 0 or self.events < self.min_events:
            return None
        p = self.rate
        r = float(labels.mean())
        se = math.sqrt(max(p * (1.0 - p), 1e-4) / m)
        upper = self.factor * p + self.z * se
        if r > upper:
            return f"label rate {r:.4f} over {m} examples is above {upper:.4f} (recent rate {p:.4f})"
        lower = p / self.factor - self.z * se
        if self.two_sided and r < lower:
            return f"label rate {r:.4f} over {m} examples is below {lower:.4f} (recent rate {p:.4f})"
        return None

    def observe(self, labels: np.ndarray) -> str | None:
        """``verdict`` of the batch, then fold it into the recent rate."""
        verdict = self.verdict(labels)
        m = labels.shape[0]
        if m:
            keep = 0.5 ** (m / self.halflife)
            self._weighted_sum = keep * self._weighted_sum + float(labels.sum())
            self._weight = keep * self._weight + m
            self.rate = self._weighted_sum / self._weight
            self.events += m
        return verdict
