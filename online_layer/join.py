"""Joins feedback to what was served, and decides when a shown item becomes an example.

Serving records, per request, the items it showed and the ``OnlineInputs`` it scored them
with (``ServedRecord``). Feedback names ``(request_id, item_id)``. Each shown item that got
feedback waits for its final label until its request's join window closes:

* its label is the largest label received within the window (a click after the
  impression event turns it positive);
* it is emitted (handed to the learner) according to the ``emit`` policy: when the window
  closes (``window_close``), or as soon as its feedback arrives, that label being final
  (``on_arrival``); with ``implicit_negatives``, shown items that got no feedback at all
  are emitted as label 0 when the window closes.

Time here is event time: the watermark is the latest request or feedback time seen, so a
replay of last week behaves like live traffic. Feedback for a request whose window has
closed (or that was retired by a rebase) is dropped and counted, not an error; feedback
for a request never served is (``unknown_id``).
"""

from __future__ import annotations

import hashlib
import heapq
import logging
import math
from collections import Counter, OrderedDict
from dataclasses import dataclass

import numpy as np

from online_layer.served import Emitted, ServedRecord, to_us
from online_layer.validation import BatchRejected, FeedbackColumns, RejectReason, short_id

# ``ServedRecord``, ``Emitted`` and ``to_us`` live in ``online_layer.served``; they are
# named here too because serving imports ``ServedRecord`` from the join.
__all__ = ["Emitted", "FeedbackJoiner", "JoinPlan", "ServedRecord", "to_us"]

logger = logging.getLogger(__name__)


class _Entry:
    """One served request waiting for feedback."""

    __slots__ = ("record", "ts_us", "expires_us", "index", "label", "position", "arrived",
                 "emitted", "problem")

    def __init__(
        self,
        record: ServedRecord,
        ts_us: int,
        expires_us: int,
        problem: tuple[RejectReason, str] | None,
    ) -> None:
        k = len(record.item_ids)
        self.record = record
        self.ts_us = ts_us
        self.expires_us = expires_us
        self.index = {item: row for row, item in enumerate(record.item_ids)}
        self.label = np.full(k, np.nan)
        self.position = np.arange(k, dtype=np.int64)
        self.arrived = np.full(k, np.nan)
        self.emitted = np.zeros(k, dtype=bool)
        self.problem = problem

    def emit(self, rows: np.ndarray) -> Emitted:
        self.emitted[rows] = True
        labels = self.label[rows]
        return Emitted(
            self.record.inputs.take(rows),
            np.where(np.isnan(labels), 0.0, labels),
            self.position[rows].copy(),
            np.full(rows.shape[0], self.ts_us, dtype=np.int64),
            self.arrived[rows].copy(),
            np.full(rows.shape[0], self.record.user_id, dtype=object),
            np.asarray(self.record.item_ids, dtype=object)[rows],
        )

    def closing_rows(self, implicit_negatives: bool) -> np.ndarray:
        waiting = ~self.emitted
        if not implicit_negatives:
            waiting &= ~np.isnan(self.label)
        return np.flatnonzero(waiting)


@dataclass(frozen=True, eq=False)
class JoinPlan:
    """The checked rows of one feedback batch: which entry and row each one updates."""

    entries: list[_Entry]
    rows: list[int]
    labels: np.ndarray
    positions: np.ndarray
    max_ts_us: int
    dropped: Counter[str]


class FeedbackJoiner:
    """Served records waiting for feedback, keyed by request id (see the module docstring)."""

    def __init__(
        self,
        join_window_s: float,
        max_clock_skew_s: float,
        max_pending: int,
        emit: str = "window_close",
        implicit_negatives: bool = False,
        max_ahead_s: float | None = None,
        max_closed: int = 400_000,
        max_pending_rows: int | None = None,
    ) -> None:
        self.window_us = int(round(join_window_s * 1e6))
        self.ahead_us = None if max_ahead_s is None else int(round(max_ahead_s * 1e6))
        # Request or feedback times clamped to the wall clock + ``max_ahead_s``.
        self.clamped_future = 0
        self.skew_us = int(round(max_clock_skew_s * 1e6))
        self.max_pending = max_pending
        # Rows (shown items) bound the memory, not requests: one request may carry a
        # thousand candidates (~490 bytes each here with a 32-wide base).
        self.max_pending_rows = max_pending_rows
        self.pending_rows = 0
        self.emit = emit
        self.implicit_negatives = implicit_negatives
        self.watermark_us: int | None = None
        self.closed_early = 0
        self._entries: dict[str, _Entry] = {}
        self._heap: list[tuple[int, int, str]] = []
        self._seq = 0
        # Request ids whose window closed, and why ("late" or "retired"), so that feedback
        # for them is dropped rather than rejected as unknown. Bounded in count, and each
        # kept as a 64-bit digest (``_closed_key``), so long ids cost no more than short.
        self._closed: OrderedDict[int, str] = OrderedDict()
        self._closed_capacity = max_closed

    @property
    def pending_requests(self) -> int:
        return len(self._entries)

    def pending_entries(self) -> list[_Entry]:
        """The requests whose window is open (read-only use: durability marks)."""
        return list(self._entries.values())

    def _ceiling(self, ts_us: int, now_s: float | None) -> int:
        """``ts_us``, or the latest time the wall clock ``now_s`` allows (counted)."""
        if now_s is None or self.ahead_us is None:
            return ts_us
        ceiling = int(now_s * 1e6) + self.ahead_us
        if ts_us > ceiling:
            self.clamped_future += 1
            return ceiling
        return ts_us

    def _advance(self, ts_us: int) -> None:
        if self.watermark_us is None or ts_us > self.watermark_us:
            self.watermark_us = ts_us

    @property
    def closed_remembered(self) -> int:
        """How many closed request ids the join remembers (at most ``max_closed``)."""
        return len(self._closed)

    def _remember_closed(self, request_id: str, why: str) -> None:
        key = _closed_key(request_id)
        self._closed[key] = why
        self._closed.move_to_end(key)
        while len(self._closed) > self._closed_capacity:
            self._closed.popitem(last=False)

    def add(
        self,
        record: ServedRecord,
        problem: tuple[RejectReason, str] | None,
        now_s: float | None = None,
    ) -> list[Emitted]:
        """Keep a served record for joining; returns examples emitted by closing windows.

        ``now_s`` is the learner's wall clock: a request time more than ``max_ahead_s``
        past it is clamped there (a request "from next year" would otherwise move the
        watermark and close every current window).
        """
        ts_us = self._ceiling(to_us(record.request_time), now_s)
        old = self._entries.get(record.request_id)
        if old is not None:
            logger.warning("request %s was recorded twice; keeping the first", record.request_id)
            return []
        entry = _Entry(record, ts_us, ts_us + self.window_us, problem)
        self._entries[record.request_id] = entry
        self.pending_rows += len(record.item_ids)
        self._seq += 1
        heapq.heappush(self._heap, (entry.expires_us, self._seq, record.request_id))
        self._closed.pop(_closed_key(record.request_id), None)
        self._advance(ts_us)
        out = self.close_expired()
        while len(self._entries) > self.max_pending or (
            self.max_pending_rows is not None and self.pending_rows > self.max_pending_rows
        ):
            out.extend(self._close_next(early=True))
        return out

    def plan(self, cols: FeedbackColumns, base_version: str) -> JoinPlan:
        """Check every row against the served records; changes nothing.

        Raises
        ------
        BatchRejected
            ``unknown_id``, ``base_version``, ``out_of_range`` (times), or the problem of a
            malformed served record (``schema_skew``, ``non_finite``, ``out_of_range``).
        """
        n = len(cols)
        entries: list[_Entry] = []
        rows: list[int] = []
        keep: list[int] = []
        dropped: Counter[str] = Counter()
        horizon = None if self.watermark_us is None else self.watermark_us + self.skew_us
        for i in range(n):
            rid = cols.request_id[i]
            entry = self._entries.get(rid)
            if entry is None:
                why = self._closed.get(_closed_key(rid))
                if why is not None:
                    dropped[why] += 1
                    continue
                raise BatchRejected(
                    RejectReason.UNKNOWN_ID, f"request_id {short_id(rid)} at row {i} was never served", n
                )
            row = entry.index.get(cols.item_id[i])
            if row is None:
                raise BatchRejected(
                    RejectReason.UNKNOWN_ID,
                    f"item_id {short_id(cols.item_id[i])} at row {i} was not served in request "
                    f"{short_id(rid)}",
                    n,
                )
            if cols.user_id[i] != entry.record.user_id:
                raise BatchRejected(
                    RejectReason.UNKNOWN_ID,
                    f"user_id {short_id(cols.user_id[i])} at row {i} differs from the user "
                    f"served in request {short_id(rid)}",
                    n,
                )
            if cols.base_version is not None:
                claimed = cols.base_version[i]
                if claimed is not None and claimed != entry.record.base_version:
                    raise BatchRejected(
                        RejectReason.BASE_VERSION,
                        f"row {i} claims base {claimed!r}; request {short_id(rid)} was served by "
                        f"base {entry.record.base_version!r}",
                        n,
                    )
            if entry.record.base_version != base_version:
                raise BatchRejected(
                    RejectReason.BASE_VERSION,
                    f"request {short_id(rid)} at row {i} was served by base "
                    f"{entry.record.base_version!r}; this layer corrects base {base_version!r}",
                    n,
                )
            if entry.problem is not None:
                reason, detail = entry.problem
                raise BatchRejected(reason, f"request {short_id(rid)} at row {i}: {detail}", n)
            ts = int(cols.ts_us[i])
            if ts < entry.ts_us - self.skew_us:
                raise BatchRejected(
                    RejectReason.OUT_OF_RANGE,
                    f"ts at row {i} is {ts - entry.ts_us} us before its request",
                    n,
                )
            if horizon is not None and ts > horizon:
                ahead = (ts - (horizon - self.skew_us)) / 1e6
                raise BatchRejected(
                    RejectReason.OUT_OF_RANGE,
                    f"ts at row {i} is {ahead:.0f} s ahead of the "
                    f"learner's clock (limit {self.skew_us / 1e6:.0f} s)",
                    n,
                )
            entries.append(entry)
            rows.append(row)
            keep.append(i)
        idx = np.asarray(keep, dtype=np.int64)
        return JoinPlan(
            entries=entries,
            rows=rows,
            labels=cols.label[idx],
            positions=cols.position[idx],
            max_ts_us=int(cols.ts_us[idx].max()) if idx.size else -1,
            dropped=dropped,
        )

    def apply(self, plan: JoinPlan, arrived: float) -> tuple[list[Emitted], Counter[str]]:
        """Record a checked batch's labels; returns emitted examples and dropped rows."""
        dropped = Counter(plan.dropped)
        ready: dict[int, tuple[_Entry, list[int]]] = {}
        for entry, row, label, position in zip(
            plan.entries, plan.rows, plan.labels, plan.positions, strict=True
        ):
            if entry.emitted[row]:
                dropped["duplicate"] += 1
                continue
            previous = entry.label[row]
            entry.label[row] = label if math.isnan(previous) else max(previous, label)
            if position >= 0:
                entry.position[row] = position
            if math.isnan(entry.arrived[row]):
                entry.arrived[row] = arrived
            if self.emit == "on_arrival":
                ready.setdefault(id(entry), (entry, []))[1].append(row)
        out = []
        for entry, rows in ready.values():
            out.append(entry.emit(np.unique(np.asarray(rows, dtype=np.int64))))
        if plan.max_ts_us >= 0:
            self._advance(self._ceiling(plan.max_ts_us, arrived))
        out.extend(self.close_expired())
        return out, dropped

    def advance(self, ts_us: int, now_s: float | None = None) -> list[Emitted]:
        """Move the watermark (e.g. to "now" on an idle live stream) and close windows."""
        self._advance(self._ceiling(ts_us, now_s))
        return self.close_expired()

    def _close_next(self, early: bool = False) -> list[Emitted]:
        while self._heap:
            _, _, rid = heapq.heappop(self._heap)
            entry = self._entries.pop(rid, None)
            if entry is None:
                continue
            self.pending_rows -= len(entry.record.item_ids)
            if early:
                self.closed_early += 1
            self._remember_closed(rid, "late")
            rows = entry.closing_rows(self.implicit_negatives)
            return [entry.emit(rows)] if rows.size else []
        return []

    def close_expired(self) -> list[Emitted]:
        """Emit and forget every request whose window has closed at the watermark."""
        out: list[Emitted] = []
        if self.watermark_us is None:
            return out
        while self._heap and self._heap[0][0] <= self.watermark_us:
            out.extend(self._close_next())
        return out

    def close_all(self) -> list[Emitted]:
        """Close every window now (end of a stream or a replay)."""
        out: list[Emitted] = []
        while self._heap:
            out.extend(self._close_next())
        return out

    def retire_all(self) -> int:
        """Forget every pending request (a rebase); returns the labelled rows dropped."""
        dropped = 0
        for rid, entry in self._entries.items():
            dropped += int((~entry.emitted & ~np.isnan(entry.label)).sum())
            self._remember_closed(rid, "retired")
        self._entries.clear()
        self._heap.clear()
        self.pending_rows = 0
        return dropped


def _closed_key(request_id: str) -> int:
    """A 64-bit digest of a request id: a collision (odds ~n^2 / 2^65) only turns one
    unknown id's refusal into a drop."""
    return int.from_bytes(hashlib.blake2b(request_id.encode(), digest_size=8).digest(), "little")
