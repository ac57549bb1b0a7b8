"""Served records and feedback batches in, joined examples out, everything counted.

``FeedbackIntake`` is the learner's front door: it checks a feedback batch
(``online_layer.validation``), joins its rows to what was served (``online_layer.join``)
and returns the examples whose labels are final (``Emitted``); a batch that fails is
rejected whole, counted by reason and logged. It outlives a base version: after a rebase
the join still knows the retired requests, so their late feedback is dropped, not refused.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from online_layer.errors import ServedRecordError
from online_layer.join import FeedbackJoiner
from online_layer.reports import FeedbackCounts, FeedbackResult
from online_layer.served import Emitted, ServedRecord
from online_layer.validation import (
    BatchRejected,
    FeedbackEvents,
    check_feedback,
    check_served_inputs,
    to_table,
)

if TYPE_CHECKING:
    from online_layer.config import OnlineLayerConfig
    from online_layer.features import OnlineFeaturizer

# Rejections are logged as the learner's: that is where an operator looks for them.
logger = logging.getLogger("online_layer.learner")


class FeedbackIntake:
    """The join and the feedback counters of one learner (see the module docstring)."""

    def __init__(self, cfg: OnlineLayerConfig) -> None:
        self.max_position = cfg.max_position
        self.joiner = FeedbackJoiner(
            cfg.join_window_s,
            cfg.max_clock_skew_s,
            cfg.max_pending_requests,
            cfg.emit,
            cfg.implicit_negatives,
            cfg.max_served_ahead_s,
            max_closed=cfg.max_closed_requests,
            max_pending_rows=cfg.max_pending_rows,
        )
        self.max_id_chars = cfg.max_id_chars
        self.counts = FeedbackCounts()

    def reject(self, rejection: BatchRejected) -> None:
        """Count and log a rejected batch (feedback, replay, or a flooded mini-batch)."""
        self.counts.reject(rejection)
        logger.warning("rejected a batch of %d rows: %s: %s", rejection.rows,
                       rejection.reason.value, rejection.detail)

    def served(
        self, records: Sequence[ServedRecord], featurizer: OnlineFeaturizer, now: float
    ) -> tuple[list[Emitted], list[ServedRecord]]:
        """Keep served records for joining; returns examples emitted by windows they close,
        and the records kept. A record with an id longer than ``max_id_chars`` is not kept
        (counted ``served_refused["id_too_long"]``): ids must never grow the learner.

        Raises
        ------
        ServedRecordError
            Something that is not a ``ServedRecord``; nothing is kept then.
        """
        for record in records:
            if not isinstance(record, ServedRecord):
                raise ServedRecordError(
                    f"record_served takes ServedRecord objects, got {type(record).__name__}"
                )
        emitted: list[Emitted] = []
        kept: list[ServedRecord] = []
        limit = self.max_id_chars
        for record in records:
            if (
                len(record.request_id) > limit
                or len(record.user_id) > limit
                or any(len(item) > limit for item in record.item_ids)
            ):
                self.counts.served_refused["id_too_long"] += 1
                continue
            problem = check_served_inputs(record.inputs, featurizer)
            emitted.extend(self.joiner.add(record, problem, now))
            kept.append(record)
        return emitted, kept

    def feedback(
        self, events: FeedbackEvents, base_version: str, now: float
    ) -> tuple[FeedbackResult, list[Emitted]]:
        """Check and join one feedback batch that arrived at ``now``; returns what happened
        (``batches_learned`` is 0: the learner fills it in) and the examples emitted."""
        try:
            table = to_table(events)
            columns = check_feedback(table, self.max_position)
            plan = self.joiner.plan(columns, base_version)
        except BatchRejected as rejection:
            self.reject(rejection)
            return FeedbackResult(0, 0, rejection.reason.value, rejection.detail, 0), []
        emitted, dropped = self.joiner.apply(plan, now)
        self.counts.dropped.update(dropped)
        accepted = len(plan.rows) - dropped.get("duplicate", 0)
        self.counts.accepted_rows += accepted
        return FeedbackResult(accepted, sum(dropped.values()), None, "", 0), emitted

    def retire(self, unlearned: int) -> int:
        """A rebase: forget every pending request; the labelled rows they held and the
        ``unlearned`` examples of the old layer are counted ``retired``. Returns the total."""
        retired = self.joiner.retire_all() + unlearned
        self.counts.dropped["retired"] += retired
        return retired
