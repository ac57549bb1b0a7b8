"""Joined examples waiting to be learned, cut into mini-batches of any size.

The join emits examples in groups (one per request whose window closed, or per feedback
call with ``emit="on_arrival"``); the learner learns them in mini-batches of
``batch_size``, or a partial one once its oldest example has waited ``max_batch_delay_s``.
Batching is transport, not modelling (``OnlineModel.learn_many`` is per example), so a
group may be split across two batches freely.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable
from typing import Any

import numpy as np

from online_layer.served import Emitted


class PendingExamples:
    """A FIFO of emitted examples; ``since`` is the wall time the oldest one arrived."""

    def __init__(self) -> None:
        self._groups: deque[Emitted] = deque()
        self.count = 0
        self.since: float | None = None

    def __len__(self) -> int:
        return self.count

    def add(self, groups: list[Emitted], now: float) -> None:
        """Queue emitted groups (empty ones are skipped)."""
        for group in groups:
            if len(group):
                if not self._groups:
                    self.since = now
                self._groups.append(group)
                self.count += len(group)

    def groups(self) -> list[Emitted]:
        """The waiting groups, oldest first (read-only use)."""
        return list(self._groups)

    def waited(self, now: float) -> float:
        """Seconds the oldest waiting example has waited (0 when none waits)."""
        return 0.0 if self.since is None else now - self.since

    def take(self, k: int) -> Emitted:
        """The first ``k`` examples (fewer if fewer wait), as one batch."""
        parts: list[Emitted] = []
        taken = 0
        while taken < k and self._groups:
            group = self._groups.popleft()
            if taken + len(group) > k:
                group, rest = group.split(k - taken)
                self._groups.appendleft(rest)
            parts.append(group)
            taken += len(group)
        self.count -= taken
        if not self._groups:
            self.since = None
        return Emitted.concat(parts)


def oldest_unlearned(entries: Iterable[Any], pending: PendingExamples) -> float | None:
    """The earliest arrival (learner clock) of accepted feedback not learned yet: waiting in
    an open join window (``entries``, ``FeedbackJoiner.pending_entries()``) or in a
    mini-batch still being filled (``pending``); None when nothing waits."""
    oldest = math.inf
    for entry in entries:
        waiting = ~entry.emitted & ~np.isnan(entry.label)
        if waiting.any():
            oldest = min(oldest, float(np.nanmin(entry.arrived[waiting])))
    for group in pending.groups():
        seen = group.arrived[np.isfinite(group.arrived)]
        if seen.size:
            oldest = min(oldest, float(seen.min()))
    return None if oldest == math.inf else oldest
