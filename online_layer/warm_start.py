"""Already featurized examples handed to the learner (``ReplayBatch``), and their checks.

A new layer can be warm-started from recent events that the caller re-scored with the new
base (``OnlineLearner.rebase(..., replay=...)``), or catch up with ``learn_replay``. Each
batch is checked like feedback (base version, widths, finite values, labels, positions,
ids) and rejected whole, with a ``RejectReason``, if it fails.

A replay is logged traffic, so it can hold a campaign as easily as live feedback can: it
is learned through the same door (``as_emitted`` turns it into joined examples), screened
by the manipulation guard, checked for a click flood, and judged by the circuit breaker.
The guard needs to know who clicked what, so while it is on a batch must carry
``user_ids`` and ``item_ids`` (refused ``schema_skew`` without them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from online_layer.features import OnlineFeaturizer, OnlineInputs
from online_layer.served import Emitted
from online_layer.validation import BatchRejected, RejectReason, check_served_inputs


@dataclass(frozen=True, eq=False)
class ReplayBatch:
    """Already featurized examples to learn (warm start of a new layer, or catch-up).

    ``inputs`` are the rows as served (any position token); ``positions`` the positions
    shown (-1 or None: unknown); ``event_time`` (datetime64) buckets the progressive
    metrics by day. ``user_ids`` and ``item_ids`` (one string per row) say who was shown
    what: the manipulation guard screens the replay by them (required while it is on).
    """

    base_version: str
    inputs: OnlineInputs
    labels: np.ndarray
    positions: np.ndarray | None = None
    event_time: np.ndarray | None = None
    user_ids: np.ndarray | None = None
    item_ids: np.ndarray | None = None


class CheckedReplay(NamedTuple):
    """A replay batch that passed: labels float64, positions int64 (-1: unknown), days,
    user and item ids (object arrays; "" where the batch named none)."""

    inputs: OnlineInputs
    labels: np.ndarray
    positions: np.ndarray
    days: np.ndarray  # datetime64[D], NaT where unknown
    users: np.ndarray
    items: np.ndarray


def _ids(values: np.ndarray | None, n: int, name: str, max_chars: int) -> np.ndarray:
    if values is None:
        return np.full(n, "", dtype=object)
    ids = np.asarray(values, dtype=object)
    if ids.shape != (n,) or not all(isinstance(v, str) and 0 < len(v) <= max_chars for v in ids):
        raise BatchRejected(
            RejectReason.SCHEMA_SKEW,
            f"{name} must be {n} non-empty strings of at most {max_chars} characters", n,
        )
    return ids


def check_replay(
    batch: ReplayBatch,
    base_version: str,
    featurizer: OnlineFeaturizer,
    max_position: int,
    require_ids: bool = False,
    max_id_chars: int = 512,
) -> CheckedReplay:
    """The batch as plain arrays, if a layer correcting ``base_version`` may learn it.
    ``require_ids``: the batch must name its users and items (the guard is on).

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
    if require_ids and (batch.user_ids is None or batch.item_ids is None):
        raise BatchRejected(
            RejectReason.SCHEMA_SKEW,
            "replay batches must carry user_ids and item_ids while the manipulation guard "
            "is on: a replay is screened like live feedback", n,
        )
    users = _ids(batch.user_ids, n, "user_ids", max_id_chars)
    items = _ids(batch.item_ids, n, "item_ids", max_id_chars)
    return CheckedReplay(batch.inputs, labels, positions, days, users, items)


def as_emitted(checked: CheckedReplay, featurizer: OnlineFeaturizer, batch_size: int) -> list[Emitted]:
    """The checked replay as joined examples in mini-batches of ``batch_size``: scored with
    the rank-time position token (as serving scored them), learned with the positions
    given; request times from the event days (NaT where unknown), arrivals unknown."""
    inputs, labels, positions, days, users, items = checked
    request_us = days.astype("datetime64[us]").astype(np.int64)  # NaT stays NaT
    out = []
    for start in range(0, len(inputs), batch_size):
        part = slice(start, start + batch_size)
        n = labels[part].shape[0]
        out.append(Emitted(
            featurizer.with_positions(inputs.take(part), None), labels[part],
            positions[part], request_us[part], np.full(n, np.nan), users[part], items[part],
        ))
    return out
