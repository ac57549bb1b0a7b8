"""What serving showed, as the learner keeps it: ``ServedRecord`` in, ``Emitted`` out.

``ServedRecord`` is serving's half of the join (one request: the items shown and the
``OnlineInputs`` they were scored with); ``Emitted`` is what the join hands the learner
(joined rows with their final labels). ``to_us`` is the one event-time conversion both
sides use. The join itself (windows, labels, the watermark) is ``online_layer.join``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np

from online_layer.errors import ServedRecordError
from online_layer.features import OnlineInputs

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)


def to_us(when: datetime | np.datetime64) -> int:
    """Microseconds since the epoch (a naive datetime is taken as UTC)."""
    if isinstance(when, np.datetime64):
        return int(when.astype("datetime64[us]").astype(np.int64))
    if isinstance(when, datetime):
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        return (when - _EPOCH) // _US
    raise ServedRecordError(f"request_time must be a datetime, got {type(when).__name__}")


@dataclass(frozen=True, eq=False)
class ServedRecord:
    """What serving showed for one request, exactly as the online layer scored it.

    Attributes
    ----------
    request_id, user_id : str
        Join keys of the feedback.
    request_time : datetime
        When the request happened (UTC; naive = UTC). Event time: a replay sets it.
    base_version : str
        The base model that scored the request.
    item_ids : tuple of str
        The items shown, in the order shown (feedback without a position is taken to be
        at its index). Record what was shown (top-k), not every candidate scored.
    inputs : OnlineInputs
        The rows as served, one per item, with the rank-time position token.
    online_version : str
        The online snapshot applied ("" on fallback); for lineage only.
    """

    request_id: str
    user_id: str
    request_time: datetime
    base_version: str
    item_ids: tuple[str, ...]
    inputs: OnlineInputs
    online_version: str = ""

    def __post_init__(self) -> None:
        for name in ("request_id", "user_id", "base_version"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise ServedRecordError(f"ServedRecord.{name} must be a non-empty string")
        if not isinstance(self.inputs, OnlineInputs):
            raise ServedRecordError("ServedRecord.inputs must be OnlineInputs")
        items = tuple(self.item_ids)
        if len(items) != len(self.inputs):
            raise ServedRecordError(
                f"ServedRecord has {len(items)} item_ids but {len(self.inputs)} input rows"
            )
        if not all(isinstance(i, str) and i for i in items) or len(set(items)) != len(items):
            raise ServedRecordError("ServedRecord.item_ids must be distinct non-empty strings")
        object.__setattr__(self, "item_ids", items)
        to_us(self.request_time)  # type check

    @property
    def base_logits(self) -> np.ndarray:
        return self.inputs.base_logit


@dataclass(frozen=True, eq=False)
class Emitted:
    """Joined examples ready to learn: the rows as served plus what happened to them."""

    inputs: OnlineInputs  # (M rows) as served, rank-time position token
    labels: np.ndarray  # (M,) float64
    positions: np.ndarray  # (M,) int64 position shown
    request_us: np.ndarray  # (M,) int64 request time
    arrived: np.ndarray  # (M,) float64 wall time the first feedback arrived (NaN: none)
    users: np.ndarray  # (M,) object: the user served (the guard and the breaker judge by user)
    items: np.ndarray  # (M,) object: the item shown

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def rows(self, part: slice | np.ndarray) -> Emitted:
        """The rows ``part`` selects (a slice, or a boolean or index array)."""
        return Emitted(
            self.inputs.take(part), self.labels[part], self.positions[part],
            self.request_us[part], self.arrived[part], self.users[part], self.items[part],
        )

    def split(self, k: int) -> tuple[Emitted, Emitted]:
        """The first ``k`` rows and the rest."""
        return self.rows(slice(0, k)), self.rows(slice(k, len(self)))

    @staticmethod
    def concat(parts: list[Emitted]) -> Emitted:
        if len(parts) == 1:
            return parts[0]
        return Emitted(
            OnlineInputs.concat([p.inputs for p in parts]),
            np.concatenate([p.labels for p in parts]),
            np.concatenate([p.positions for p in parts]),
            np.concatenate([p.request_us for p in parts]),
            np.concatenate([p.arrived for p in parts]),
            np.concatenate([p.users for p in parts]),
            np.concatenate([p.items for p in parts]),
        )
