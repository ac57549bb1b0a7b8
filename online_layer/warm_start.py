"""Already featurized examples handed to the learner (``ReplayBatch``), and their checks.

A new layer can be warm-started from recent events that the caller re-scored with the new
base (``OnlineLearner.rebase(..., replay=...)``), or catch up with ``learn_replay``. Each
batch is checked like feedback (base version, widths, finite values, labels, positions)
and rejected whole, with a ``RejectReason``, if it fails.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from online_layer.features import OnlineFeaturizer, OnlineInputs
from online_layer.validation import BatchRejected, RejectReason, check_served_inputs


@dataclass(frozen=True, eq=False)
class ReplayBatch:
    """Already featurized examples to learn (warm start of a new layer, or catch-up).

    ``inputs`` are the rows as served (any position token); ``positions`` the positions
    shown (-1 or None: unknown); ``event_time`` (datetime64) buckets the progressive
    metrics by day.
    """

    base_version: str
    inputs: OnlineInputs
    labels: np.ndarray
    positions: np.ndarray | None = None
    event_time: np.ndarray | None = None


class CheckedReplay(NamedTuple):
    """A replay batch that passed: labels float64, positions int64 (-1: unknown), days."""

    inputs: OnlineInputs
    labels: np.ndarray
    positions: np.ndarray
    days: np.ndarray  # datetime64[D], NaT where unknown


def check_replay(
    batch: ReplayBatch, base_version: str, featurizer: OnlineFeaturizer, max_position: int
) -> CheckedReplay:
    """The batch as plain arrays, if a layer correcting ``base_version`` may learn it.

    Raises
    ------
    BatchRejected
        ``schema_skew``, ``base_version``, ``non_finite`` or ``out_of_range``.
    """
    if not isinstance(batch, ReplayBatch):
        raise BatchRejected(
            RejectReason.SCHEMA_SKEW, f"expected ReplayBatch, got {type(batch).__name__}"
        )
    n = len(batch.inputs)
    if batch.base_version != base_version:
        raise BatchRejected(
            RejectReason.BASE_VERSION,
            f"replay batch is for base {batch.base_version!r}; this layer corrects "
            f"base {base_version!r}",
            n,
        )
    problem = check_served_inputs(batch.inputs, featurizer)
    if problem is not None:
        raise BatchRejected(problem[0], problem[1], n)
    labels = np.asarray(batch.labels, dtype=np.float64)
    if labels.shape != (n,):
        raise BatchRejected(
            RejectReason.SCHEMA_SKEW, f"labels have shape {labels.shape}, expected ({n},)", n
        )
    if not np.isfinite(labels).all():
        raise BatchRejected(RejectReason.NON_FINITE, "a replay label is NaN or inf", n)
    if ((labels < 0) | (labels > 1)).any():
        raise BatchRejected(RejectReason.OUT_OF_RANGE, "a replay label is outside [0, 1]", n)
    if batch.positions is None:
        positions = np.full(n, -1, dtype=np.int64)
    else:
        positions = np.asarray(batch.positions)
        if positions.shape != (n,) or not np.issubdtype(positions.dtype, np.integer):
            raise BatchRejected(RejectReason.SCHEMA_SKEW, f"positions must be {n} integers", n)
        if (positions > max_position).any():
            raise BatchRejected(RejectReason.OUT_OF_RANGE, "a replay position is too large", n)
        positions = positions.astype(np.int64)
    if batch.event_time is None:
        days = np.full(n, np.datetime64("NaT"), dtype="datetime64[D]")
    else:
        days = np.asarray(batch.event_time).astype("datetime64[D]")
        if days.shape != (n,):
            raise BatchRejected(RejectReason.SCHEMA_SKEW, f"event_time must have {n} entries", n)
    return CheckedReplay(batch.inputs, labels, positions, days)
