"""The learner's write-ahead duties: follow the served logs, log accepted feedback before
answering, replay what the restored snapshot lacks, checkpoint after durable snapshots, and
count (``accepted == learned + pending`` over restarts). The logs, their layout and the
guarantees are described in ``serving.served_log``.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import threading
import time
from collections import deque
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from protos.wal import WalTailer, read_checkpoint, truncate_segments, write_checkpoint
from serving.served_log import (
    FeedbackLog,
    ServedEntry,
    decode_feedback,
    decode_served,
    is_locked,
    served_root,
    served_time_us,
)

if TYPE_CHECKING:
    from online_layer.learner import OnlineLearner
    from online_layer.reports import FeedbackResult
    from online_layer.served import ServedRecord

__all__ = ["DurableSink", "LearnerDurability", "StrictClock"]

_UNKNOWN = object()
COUNTERS_MAX_AGE_S = 1.0  # the learned/pending counters may be this stale

logger = logging.getLogger(__name__)

class StrictClock:
    """``time.time`` that never repeats or goes back: each feedback batch gets its own
    arrival time, so the learner's oldest waiting arrival names a batch."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.last = 0.0

    def __call__(self) -> float:
        with self._lock:
            now = time.time()
            self.last = now if now > self.last else math.nextafter(self.last, math.inf)
            return self.last


@dataclass
class _Batch:
    seq: int
    arrived_by: float  # the batch's arrival time is <= this
    accepted: int


@dataclass
class _ServedProgress:
    tailer: WalTailer
    marks: deque[tuple[int, int]] = field(default_factory=deque)  # (seq, running max t_us)
    max_t_us: int = -(2**62)


class LearnerDurability:
    """The learner's write-ahead duties (module docstring): follow the served logs, log
    accepted feedback, replay on start, checkpoint after durable snapshots, count."""

    def __init__(self, workspace: str | os.PathLike[str], learner: OnlineLearner,
                 clock: StrictClock) -> None:
        self.workspace = Path(workspace)
        self._learner = learner
        self._clock = clock
        cfg = learner.config
        self._window_us = int(cfg.join_window_s * 1e6)
        self._skew_us = int(cfg.max_clock_skew_s * 1e6)
        self._log = FeedbackLog(workspace)
        self._lock = threading.Lock()  # ingest + learn + append, in one order
        self._track = threading.Lock()  # leaf lock: the counters below
        self._batches: deque[_Batch] = deque()
        self._learned_through = 0  # events accepted up to the learned prefix
        self._learned_seq = 0
        self._accepted = 0
        self.replayed = 0
        self.replay_lost = 0
        self.replayed_served = 0
        self.durable_seq = 0
        self.restored = 0  # events the restored snapshot covered
        self._prefix_at = -math.inf
        self._served: dict[str, _ServedProgress] = {}
        # request id -> the base that served it (bounded): routes records and feedback to the
        # layer of that base (the champion's, the canary's) or drops them (a retired base).
        self._base_of: dict[str, str] = {}
        self.canary: OnlineLearner | None = None  # the canary base's own layer, if any
        self.other_base_rows = 0  # feedback rows for a base no layer corrects now (dropped)

    @property
    def lock(self) -> threading.Lock:
        """Held while feedback is ingested and learned: a base swap holds it too."""
        return self._lock

    # -- start ----------------------------------------------------------------------------
    def start(self, covered: dict[str, Any] | None) -> None:
        """Replay what the restored snapshot (lineage ``durability``, or None) lacks."""
        covered = covered or {}
        after = int(covered.get("feedback_seq", 0))
        through = int(covered.get("accepted_through", 0))
        snapshot_wm = covered.get("watermark_us")
        with self._lock:
            self._accepted = self._learned_through = self.restored = through
            self._learned_seq = self.durable_seq = after
            tail: list[tuple[float, int, int, pa.Table | None, int]] = []
            for seq, payload in WalTailer(self._log.directory, after=after).poll(10**9):
                header, table = decode_feedback(payload)
                tail.append((float(header["w"]), 1, seq, table, int(header.get("accepted", 0))))
            wanted = {rid for *_, table, _ in tail if table is not None
                      for rid in table.column("request_id").to_pylist()}
            served: list[tuple[float, int, int, Any, int]] = []
            for directory in self._served_dirs():
                progress = self._progress(directory)
                for seq, payload in progress.tailer.poll(10**9):
                    entry = decode_served(payload)
                    t_us = self._note_served(progress, seq, entry)
                    if (snapshot_wm is None or t_us + self._window_us > int(snapshot_wm)
                            or entry.record.request_id in wanted):
                        served.append((entry.written_at, 0, seq, entry, 0))
            events = sorted(served + tail, key=lambda e: (e[0], e[1]))
            pending: list[ServedRecord] = []
            for _, kind, seq, payload, original in events:
                if kind == 0:
                    pending.append(payload.record)
                    continue
                if pending:
                    self._record_served(pending)
                    pending = []
                if payload is None:
                    continue
                result = self._learn(payload)
                self._note_batch(seq, original)
                self.replayed += result.accepted
                self.replay_lost += max(0, original - result.accepted)
            if pending:
                self._record_served(pending)
        if tail or served:
            logger.info(
                "replayed %d served records and %d feedback batches after sequence %d: "
                "%d events re-learned, %d lost", self.replayed_served, len(tail), after,
                self.replayed, self.replay_lost,
            )

    # -- the served logs -----------------------------------------------------------------
    def _served_dirs(self) -> list[Path]:
        root = served_root(self.workspace)
        return sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []

    def _progress(self, directory: Path) -> _ServedProgress:
        key = directory.name
        progress = self._served.get(key)
        if progress is None:
            progress = self._served[key] = _ServedProgress(WalTailer(directory))
        return progress

    def _note_served(self, progress: _ServedProgress, seq: int, entry: ServedEntry) -> int:
        t_us = served_time_us(entry)
        progress.max_t_us = max(progress.max_t_us, t_us)
        progress.marks.append((seq, progress.max_t_us))
        return t_us

    def _record_served(self, records: list[ServedRecord]) -> None:
        self.replayed_served += self._route_records(records)

    def _route_records(self, records: list[ServedRecord]) -> int:
        """Hand each new record to the layer of the base that served it; returns how many
        were new. Records of a base no layer corrects now (a retired champion, an aborted
        candidate) are remembered for routing their feedback, and not learned."""
        fresh = [r for r in records if r.request_id not in self._base_of]
        if len(self._base_of) + len(fresh) > 1_000_000:
            for key in list(self._base_of)[: len(self._base_of) // 2]:
                del self._base_of[key]
        for record in fresh:
            self._base_of[record.request_id] = record.base_version
        champion = [r for r in fresh if r.base_version == self._learner.base_version]
        if champion:
            self._learner.record_served(champion)
        canary = self.canary
        if canary is not None:
            mine = [r for r in fresh if r.base_version == canary.base_version]
            if mine:
                canary.record_served(mine)
        return len(fresh)

    def ingest_served(self) -> int:
        """Hand the learner every served record written since the last call."""
        with self._lock:
            return self._ingest_locked()

    def _ingest_locked(self) -> int:
        records: list[ServedRecord] = []
        for directory in self._served_dirs():
            progress = self._progress(directory)
            for seq, payload in progress.tailer.poll():
                try:
                    entry = decode_served(payload)
                except Exception:
                    logger.exception("skipping an unreadable served record %s/%d",
                                     directory.name, seq)
                    continue
                self._note_served(progress, seq, entry)
                records.append(entry.record)
        if records:
            self._route_records(records)
        return len(records)

    # -- feedback -------------------------------------------------------------------------
    def _learn(self, events: pa.Table) -> FeedbackResult:
        """Each row goes to the layer of the base that served its request: the champion's,
        the canary's, or none (a retired or aborted base: dropped and counted, never
        refused, so a client's batch that straddles a promotion is not lost whole). Rows
        of requests never served go to the champion layer, which refuses them."""
        canary = self.canary
        champion_base = self._learner.base_version
        bases = [self._base_of.get(rid) for rid in events.column("request_id").to_pylist()]
        canary_base = canary.base_version if canary is not None else None
        if all(b is None or b == champion_base for b in bases):
            return self._learner.add_feedback(events)
        to_canary = np.fromiter((b is not None and b == canary_base for b in bases), bool, len(bases))
        elsewhere = np.fromiter(
            (b is not None and b not in (canary_base, champion_base) for b in bases), bool, len(bases))
        to_champion = ~(to_canary | elsewhere)
        if to_champion.any():
            result = self._learner.add_feedback(events.filter(pa.array(to_champion)))
        else:
            from online_layer.reports import FeedbackResult as Result

            result = Result(accepted=0, dropped=0, rejected=None, detail="", batches_learned=0)
        if result.rejected is not None:
            return result  # a batch is rejected whole: the canary learns none of it either
        canary_rows = int(to_canary.sum())
        accepted, dropped, learned = result.accepted, result.dropped, result.batches_learned
        if canary_rows and canary is not None:
            part = canary.add_feedback(events.filter(pa.array(to_canary)))
            if part.rejected is None:
                accepted += part.accepted
                dropped += part.dropped
                learned += part.batches_learned
            else:
                dropped += canary_rows
                logger.warning("canary layer refused %d rows: %s", canary_rows, part.detail)
        other = int(elsewhere.sum())
        self.other_base_rows += other
        return replace(result, accepted=accepted, dropped=dropped + other, batches_learned=learned)

    def _note_batch(self, seq: int, accepted: int) -> None:
        with self._track:
            self._batches.append(_Batch(seq, self._clock.last, accepted))
            self._accepted += accepted

    def feedback(self, events: pa.Table) -> FeedbackResult:
        """Join and learn one batch; if accepted, log it durably before returning."""
        with self._lock:
            self._ingest_locked()  # an impression is known before its click
            result = self._learn(events)
            if result.rejected is None and result.accepted > 0:
                seq = self._log.append(events, result.accepted)
                self._note_batch(seq, result.accepted)
            return result

    # -- checkpoints ----------------------------------------------------------------------
    def _learned_prefix(self, max_age_s: float = 0.0) -> tuple[int, int]:
        """(last sequence whose events are all learned, events accepted through it); with
        ``max_age_s``, a result that old may be reused (the scan visits every open join
        window; a stale answer only under-counts what is learned)."""
        now = time.monotonic()
        if max_age_s and now - self._prefix_at < max_age_s:
            with self._track:
                return self._learned_seq, self._learned_through
        self._prefix_at = now
        _, oldest = self._learner.durability_marks()
        if self.canary is not None:
            _, canary_oldest = self.canary.durability_marks()
            if canary_oldest is not None:
                oldest = canary_oldest if oldest is None else min(oldest, canary_oldest)
        with self._track:
            while self._batches and (oldest is None or self._batches[0].arrived_by < oldest):
                batch = self._batches.popleft()
                self._learned_seq = batch.seq
                self._learned_through += batch.accepted
            return self._learned_seq, self._learned_through

    def lineage(self) -> dict[str, Any]:
        """What a snapshot taken now covers (goes into its lineage as ``durability``)."""
        watermark, _ = self._learner.durability_marks()
        seq, through = self._learned_prefix()
        return {"feedback_seq": seq, "accepted_through": through, "watermark_us": watermark}

    def persisted(self, covered: dict[str, Any]) -> None:
        """A snapshot covering ``covered`` is durable: checkpoint, drop old segments."""
        seq = int(covered["feedback_seq"])
        self.durable_seq = max(self.durable_seq, seq)
        write_checkpoint(self._log.directory, "learner", self.durable_seq)
        keep_from = min(self.durable_seq, read_checkpoint(self._log.directory, "compactor"))
        truncate_segments(self._log.directory, keep_from + 1)
        watermark = covered.get("watermark_us")
        if watermark is None:
            return
        cutoff = int(watermark) - 2 * (self._window_us + self._skew_us)
        with self._track:
            for key, progress in list(self._served.items()):
                done = 0
                while progress.marks and progress.marks[0][1] < cutoff:
                    done = progress.marks.popleft()[0]
                if not done:
                    continue
                directory = served_root(self.workspace) / key
                write_checkpoint(directory, "learner", done)
                compacted = read_checkpoint(directory, "compactor")
                truncate_segments(directory, min(done, compacted) + 1)
                last = progress.tailer.last_seq
                if done >= last and compacted >= last and not is_locked(directory):
                    # A replica that is gone, and everything it logged is used: drop it.
                    shutil.rmtree(directory, ignore_errors=True)
                    del self._served[key]

    def counters(self, max_age_s: float = 0.0) -> dict[str, int]:
        """The counters (module docstring of ``serving.served_log``); ``max_age_s`` lets a
        frequent caller (``Status``) reuse a scan that recent."""
        _, learned = self._learned_prefix(max_age_s=max_age_s)
        with self._track:
            accepted = self._accepted
        return {
            "accepted": accepted,
            "learned": learned,
            "pending": accepted - learned,
            "restored": self.restored,
            "replayed": self.replayed,
            "replay_lost": self.replay_lost,
            "replayed_served": self.replayed_served,
            "feedback_seq": self._log.last_seq,
            "durable_seq": self.durable_seq,
        }

    def close(self) -> None:
        self._log.close()


class DurableSink:
    """Wraps the registry sink: each snapshot's lineage records what it covers, and the
    logs are checkpointed once the registry holds it."""

    def __init__(self, inner: Any, registry: Any) -> None:
        self._inner = inner
        self._registry = registry
        self.durability: LearnerDurability | None = None

    def __call__(self, version: str, blob: bytes, lineage: dict[str, Any]) -> None:
        durability = self.durability
        if durability is None or not self._may_keep(lineage):
            self._inner(version, blob, lineage)
            return
        covered = durability.lineage()
        # The registry sink keeps only some snapshots (ready ones, one per interval): its
        # last persisted time tells whether this one was kept, without reading the registry.
        before = getattr(self._inner, "_last_at", _UNKNOWN)
        self._inner(version, blob, {**lineage, "durability": covered})
        after = getattr(self._inner, "_last_at", _UNKNOWN)
        if after is _UNKNOWN:
            champion = self._registry.champion("online")
            kept = champion is not None and champion.lineage.get("learner_version") == version
        else:
            kept = after is not None and after != before
        if kept:
            durability.persisted(covered)

    def _may_keep(self, lineage: dict[str, Any]) -> bool:
        """Whether the registry sink may keep this snapshot (ready, and its interval has
        passed): only then is the learner's state scanned for what it covers."""
        if not lineage.get("readiness", {}).get("ready", False):
            return False
        last = getattr(self._inner, "_last_at", None)
        interval = getattr(self._inner, "_min_interval", 0.0)
        clock = getattr(self._inner, "_clock", None)
        return last is None or clock is None or clock() - last >= interval
