"""The learner's safety gear: the manipulation guard and the circuit breaker, wired together.

``OnlineLearner`` owns one ``Safety``. It outlives a rebase (who clicks what, and whether
the layer may serve, are judged the same way for every base). What it does, per call:

* ``note_requests``: every served request gives its user tenure (``FeedbackGuard``).
* ``screen``: a joined mini-batch loses what the guard quarantines (counted by reason);
  only the rest is scored and learned, so readiness and the breaker judge kept data.
* ``judge``: a learned batch's per-example hybrid and base losses, with their users, go to
  the ``CircuitBreaker`` on the wall clock; when it opens, the layer rolls back to the
  newest ready snapshot published before the losing run began. ``poll`` moves an open
  breaker to half-open after the cool-down without traffic.
* ``serving_readiness`` / ``view``: what serving may have: nothing while the breaker is
  not closed (``ServingView.withhold``), else the newest ready snapshot.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np

from online_layer.breaker import BreakerState, BreakerStatus, CircuitBreaker
from online_layer.defences import FeedbackGuard
from online_layer.publishing import ServingView

if TYPE_CHECKING:
    from online_layer.config import OnlineLayerConfig
    from online_layer.layer import Layer
    from online_layer.readiness import Readiness
    from online_layer.served import Emitted

logger = logging.getLogger("online_layer.learner")


class Safety:
    """The guard and the breaker of one learner (see the module docstring)."""

    def __init__(
        self, cfg: OnlineLayerConfig, established_users: Callable[[str], bool] | None
    ) -> None:
        self.screening = cfg.guard.enabled
        self.guard = FeedbackGuard(cfg.guard, established_users)
        self.breaker = CircuitBreaker(cfg.breaker)
        self.rollbacks = 0

    # -- the guard ----------------------------------------------------------------------

    def note_requests(self, users: list[str], event_now: float) -> None:
        if self.screening:
            for user in users:
                self.guard.record_request(user, event_now)

    def established(self, users: list[str], event_now: float) -> np.ndarray:
        """Which of ``users`` the guard does not count as new (all, with it off)."""
        if not self.screening:
            return np.ones(len(users), dtype=bool)
        return np.fromiter((not self.guard.is_new(u, event_now) for u in users), dtype=bool,
                           count=len(users))

    def screen(self, batch: Emitted, event_now: float) -> Emitted:
        """The examples of ``batch`` that may be learned (possibly none)."""
        if not self.screening:
            return batch
        result = self.guard.screen(batch.users.tolist(), batch.items.tolist(), batch.labels,
                                   event_now)
        return batch if result.keep.all() else batch.rows(result.keep)

    # -- the breaker --------------------------------------------------------------------

    @property
    def allows_online(self) -> bool:
        return self.breaker.allows_online

    def status(self) -> BreakerStatus:
        return self.breaker.status()

    def judgement(self) -> dict[str, object]:
        """The breaker's state and the start of a losing run (None: not losing), for a
        snapshot's lineage: a sink promotes only snapshots published closed, not losing."""
        return {"state": self.breaker.state.value, "losing_since": self.breaker.losing_since}

    def _opened(self) -> int:
        return sum(n for move, n in self.breaker.transitions.items() if move.endswith("->open"))

    def judge(
        self, layer: Layer, users: list[str], hybrid_loss: np.ndarray, base_loss: np.ndarray,
        now: float,
    ) -> bool:
        """Let the breaker judge one learned batch; True when it just closed on evidence
        (the learner then publishes at once)."""
        before, opened = self.breaker.state, self._opened()
        self.breaker.observe(users, hybrid_loss, base_loss, now=now)
        return self._settle(layer, before, opened)

    def poll(self, layer: Layer, now: float) -> bool:
        """Open -> half-open after the cool-down (a timer calls it); True if just closed."""
        before, opened = self.breaker.state, self._opened()
        self.breaker.poll(now)
        return self._settle(layer, before, opened)

    def _settle(self, layer: Layer, before: BreakerState, opened_before: int) -> bool:
        if self._opened() > opened_before:
            self._roll_back(layer)
            return False
        return self.breaker.state is BreakerState.CLOSED and before is not BreakerState.CLOSED

    def force_open(self, layer: Layer, reason: str, now: float) -> str | None:
        """The operator's door: open (base alone), roll back, then cool down and test."""
        self.breaker.force_open(reason, now)
        return self._roll_back(layer)

    def _roll_back(self, layer: Layer) -> str | None:
        status = self.breaker.status()
        version = layer.rollback(before=self.breaker.losing_since)
        self.rollbacks += 1
        if version is None:
            logger.warning("online breaker open (%s); no good snapshot to roll back to: "
                           "serving runs the base alone until it closes", status.reason)
        else:
            logger.warning("online breaker open (%s); rolled the layer back to %s",
                           status.reason, version)
        return version

    # -- what serving may have ------------------------------------------------------------

    def serving_readiness(self, readiness: Readiness) -> Readiness:
        """Not ready while the breaker is not closed: a snapshot published then is neither
        served nor kept as a rollback target."""
        if readiness.ready and not self.breaker.allows_online:
            status = self.breaker.status()
            return replace(readiness, ready=False,
                           reason=f"circuit breaker {status.state}: {status.reason}")
        return readiness

    def view(self, layer: Layer, known_version: str | None) -> ServingView:
        status = self.breaker.status()
        if not self.breaker.allows_online:
            return ServingView(None, True, status.state,
                               f"circuit breaker {status.state}: {status.reason}")
        snapshot = layer.publishing.for_serving()
        if snapshot is not None and snapshot.version == known_version:
            snapshot = None
        return ServingView(snapshot, False, status.state, status.reason)
