"""The circuit breaker: judges the online layer against the base alone on the same events.

Why: the layer learns from the outside world while it serves, so it is the part that can
hurt users fastest. Every learned mini-batch is first scored by the hybrid and by the base
alone (test-then-train); the breaker keeps a rolling window of the per-example log-loss
difference ``hybrid - base`` and opens when the layer has been worse by more than
``trip_margin`` nats for ``sustained_judgements`` judgements in a row, worse with
confidence: the one-sided lower bound of the judgement (``confidence_z`` standard errors below
it) must clear the margin. Why the bound and not the point: an honest layer that ties the base
scatters around zero by about a standard error (~0.002 nats on the demo's 4,000-event window),
so a point rule at a margin of that size took a tied layer off serving by chance, and kept it
off through half-open tests that ask the same noisy question. While it is open,
serving runs the base alone (``FALLBACK_REASON_BREAKER_OPEN``) and the learner rolls back to
its last good snapshot. After ``cooldown_seconds`` it goes half-open: the (rolled-back)
layer is judged again on ``half_open_events`` fresh events, still without serving, and the
breaker closes if it is no longer shown worse (the same rule), or opens for another cool-down.

Data an attacker cannot dominate: the window is judged per user, not per event. Each
example's difference is clipped to ``loss_clip`` nats, each user's differences are averaged,
and the judgement is the mean over users after dropping the ``trim_share`` highest and
lowest users; it needs ``min_users`` distinct users. Its standard error is the spread of the
kept users' means over the square root of their number (users are the independent units). A flood from a few accounts (up to
``trim_share`` of the users) can neither trip the breaker on an honest layer nor hide a
poisoned one. The price: a loss confined to fewer users than that share does not trip it
(the manipulation defences bound what such a group can do to the layer).

States and transitions are values, counted in ``transitions``, and logged; time comes from
the caller (event or wall clock), so the breaker is deterministic under test.

>>> b = CircuitBreaker(BreakerConfig(window_events=100, min_events=50, min_users=5,
...                                  sustained_judgements=1, cooldown_seconds=10,
...                                  half_open_events=50))
>>> users = [f"u{i % 10}" for i in range(100)]
>>> b.observe(users, hybrid_loss=[0.5] * 100, base_loss=[0.3] * 100, now=0.0).state
'open'
>>> b.observe(users, [0.3] * 100, [0.3] * 100, now=5.0).state   # still cooling down
'open'
>>> b.observe(users, [0.3] * 100, [0.3] * 100, now=11.0).state  # cool-down over: judged again
'closed'
"""

from __future__ import annotations

import logging
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum

import numpy as np

__all__ = ["BreakerConfig", "BreakerState", "BreakerStatus", "CircuitBreaker", "trimmed_user_mean",
           "trimmed_user_mean_and_se"]

logger = logging.getLogger(__name__)


class BreakerState(str, Enum):
    """``closed``: the layer serves. ``open``: base alone. ``half_open``: judged, not served."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True)
class BreakerConfig:
    """When the breaker judges, trips and recovers (settings table ``[online_layer.breaker]``).

    Times are the learner's wall clock. Defaults fit the demo's scale: a judgement needs
    1,000 paired events from 50 users, so the breaker says nothing on a trickle, and a
    layer losing by 0.002 nats/example for three batches in a row is taken off serving.

    Attributes:
        enabled: False never opens (the losses are still judged and reported).
        window_events: Paired losses kept in the rolling window.
        min_events: No judgement on fewer events (a few examples say nothing).
        min_users: No judgement on fewer distinct users (a few accounts must not decide).
        trim_share: Share of users dropped at each end before averaging over users.
        loss_clip: Largest |hybrid - base| one example may count, in nats.
        trip_margin: Nats per example by which the layer must be worse to count as losing.
        confidence_z: Standard errors the judgement's lower bound sits below its point; the
            layer loses when that bound clears ``trip_margin`` (1.645: one-sided 95%; 0: the
            point alone decides).
        sustained_judgements: Consecutive losing judgements before the breaker opens.
        cooldown_seconds: Time open before the half-open test starts.
        half_open_events: Fresh events the half-open test judges on.
    """

    enabled: bool = True
    window_events: int = 4000
    min_events: int = 1000
    min_users: int = 50
    trim_share: float = 0.1
    loss_clip: float = 1.0
    trip_margin: float = 0.002
    confidence_z: float = 1.645
    sustained_judgements: int = 3
    cooldown_seconds: float = 30.0
    half_open_events: int = 1000

    def __post_init__(self) -> None:
        if not isinstance(self.enabled, bool):
            raise ValueError("breaker enabled must be true or false")
        for name in ("window_events", "min_events", "min_users", "sustained_judgements",
                     "half_open_events"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"breaker {name} must be an integer, got {value!r}")
        for name in ("trim_share", "loss_clip", "trip_margin", "confidence_z", "cooldown_seconds"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
                raise ValueError(f"breaker {name} must be a number, got {value!r}")
        if self.window_events < 1 or self.min_events < 1 or self.half_open_events < 1:
            raise ValueError("breaker window_events, min_events and half_open_events must be >= 1")
        if self.min_events > self.window_events or self.half_open_events > self.window_events:
            raise ValueError("breaker min_events and half_open_events must be <= window_events")
        if not 0.0 <= self.trim_share < 0.5:
            raise ValueError(f"breaker trim_share must be in [0, 0.5), got {self.trim_share}")
        if self.loss_clip <= 0:
            raise ValueError(f"breaker loss_clip must be > 0, got {self.loss_clip}")
        if self.min_users < 1 or self.sustained_judgements < 1:
            raise ValueError("breaker min_users and sustained_judgements must be >= 1")
        if self.trip_margin < 0 or self.cooldown_seconds < 0 or self.confidence_z < 0:
            raise ValueError("breaker trip_margin, confidence_z and cooldown_seconds must be >= 0")


@dataclass(frozen=True)
class BreakerStatus:
    """What operators see: the state, why, and the last judgement."""

    state: str
    reason: str
    excess_loss: float | None  # trimmed per-user mean of hybrid - base (nats/example)
    events: int
    users: int
    opened_at: float | None
    transitions: dict[str, int] = field(default_factory=dict)


def trimmed_user_mean(users: Sequence[str], excess: np.ndarray, trim_share: float) -> float:
    """Mean over users of each user's mean ``excess``, the ``trim_share`` highest and lowest
    users dropped (at least one user is kept).

    >>> users = ["a", "a", "b", "c", "d", "e", "f", "g", "h", "i", "j"]
    >>> excess = np.array([9.0, 9.0, 0, 0, 0, 0, 0, 0, 0, 0, -1.0])
    >>> trimmed_user_mean(users, excess, trim_share=0.1)
    0.0
    """
    return trimmed_user_mean_and_se(users, excess, trim_share)[0]


def trimmed_user_mean_and_se(
    users: Sequence[str], excess: np.ndarray, trim_share: float
) -> tuple[float, float]:
    """``trimmed_user_mean`` and its standard error (Tukey and McLaughlin's): the standard
    deviation of the users' means winsorized at the trim, over ``(1 - 2 * share) * sqrt(users)``.
    Why winsorized: the kept means alone are the middle of the spread, so their deviation
    understates the trimmed mean's noise: a bound built on it tripped a layer 0.004 nats inside
    the margin in 6 of 50 seeded runs of 30 judgements, the winsorized one in 2 of 100.
    0 with fewer than two users.

    >>> mean, se = trimmed_user_mean_and_se(["a", "b", "c", "d"], np.array([0.0, 1, 2, 3]), 0.0)
    >>> round(mean, 3), round(se, 3)
    (1.5, 0.645)
    """
    codes, inverse = np.unique(np.asarray(users, dtype=object), return_inverse=True)
    sums = np.bincount(inverse, weights=excess, minlength=len(codes))
    counts = np.bincount(inverse, minlength=len(codes))
    per_user = np.sort(sums / counts)
    cut = int(len(per_user) * trim_share)
    if len(per_user) - 2 * cut < 1:
        cut = 0
    kept = per_user[cut : len(per_user) - cut]
    if len(per_user) < 2:
        return float(kept.mean()), 0.0
    winsorized = np.clip(per_user, kept[0], kept[-1])
    share = cut / len(per_user)
    se = float(winsorized.std(ddof=1) / ((1.0 - 2.0 * share) * np.sqrt(len(per_user))))
    return float(kept.mean()), se


class CircuitBreaker:
    """Closed / open / half-open over the layer's paired progressive losses (module doc)."""

    def __init__(self, config: BreakerConfig | None = None) -> None:
        self.config = config or BreakerConfig()
        self._users: deque[str] = deque(maxlen=self.config.window_events)
        self._excess: deque[float] = deque(maxlen=self.config.window_events)
        self._state = BreakerState.CLOSED
        self._losing = 0
        self._opened_at: float | None = None
        self._half_open_seen = 0
        self._reason = "no judgement yet"
        self._last_excess: float | None = None
        self._losing_since: float | None = None
        self.transitions: Counter[str] = Counter()

    @property
    def state(self) -> BreakerState:
        return self._state

    @property
    def losing_since(self) -> float | None:
        """When the current run of losing judgements began (None: the layer is not losing).
        Snapshots published before it are the rollback's candidates for "last good"."""
        return self._losing_since

    @property
    def allows_online(self) -> bool:
        """True when serving may apply the online correction."""
        return self._state is BreakerState.CLOSED

    def observe(
        self,
        users: Sequence[str],
        hybrid_loss: Sequence[float] | np.ndarray,
        base_loss: Sequence[float] | np.ndarray,
        now: float,
    ) -> BreakerStatus:
        """Add one scored mini-batch (per-example losses, same events) and judge.

        Non-finite losses are ignored (a NaN must not trip or hide anything).
        """
        hybrid = np.asarray(hybrid_loss, dtype=np.float64)
        base = np.asarray(base_loss, dtype=np.float64)
        if hybrid.shape != base.shape or hybrid.shape != (len(users),):
            raise ValueError(
                f"breaker: users, hybrid_loss and base_loss must have one length, got "
                f"{len(users)}, {hybrid.shape}, {base.shape}"
            )
        finite = np.isfinite(hybrid) & np.isfinite(base)
        if self._state is BreakerState.OPEN and not self.poll(now):
            return self.status()
        for user, h, b, ok in zip(users, hybrid, base, finite, strict=True):
            if ok:
                self._users.append(str(user))
                self._excess.append(float(h - b))
        if self._state is BreakerState.HALF_OPEN:
            self._half_open_seen += int(finite.sum())
            if self._half_open_seen < self.config.half_open_events:
                return self.status()
        self._judge(now)
        return self.status()

    def poll(self, now: float) -> bool:
        """Move from open to half-open once the cool-down is over (also called on a timer,
        so the state is right without traffic); True when the breaker is not open."""
        if self._state is BreakerState.OPEN:
            if self._opened_at is None or now - self._opened_at < self.config.cooldown_seconds:
                return False
            self._move(BreakerState.HALF_OPEN, "cool-down over: judging again", now)
            self._users.clear()
            self._excess.clear()
            self._half_open_seen = 0
        return True

    def _judge(self, now: float) -> None:
        cfg = self.config
        n = len(self._excess)
        distinct = len(set(self._users))
        if n < cfg.min_events or distinct < cfg.min_users:
            self._reason = f"not enough data to judge ({n} events, {distinct} users)"
            return
        clipped = np.clip(np.fromiter(self._excess, dtype=np.float64, count=n),
                          -cfg.loss_clip, cfg.loss_clip)
        excess, se = trimmed_user_mean_and_se(list(self._users), clipped, cfg.trim_share)
        self._last_excess = excess
        lower = excess - cfg.confidence_z * se
        losing = lower > cfg.trip_margin
        if self._state is BreakerState.HALF_OPEN:
            if losing:
                self._open(f"half-open test: still worse than the base by {excess:.4f} nats "
                           f"(lower bound {lower:.4f})", now)
            else:
                self._losing = 0
                self._losing_since = None
                self._move(BreakerState.CLOSED, f"half-open test passed ({excess:+.4f} nats, "
                           f"lower bound {lower:+.4f})", now)
            return
        if losing and self._losing == 0:
            self._losing_since = now
        self._losing = self._losing + 1 if losing else 0
        if not losing:
            self._losing_since = None
        if self._losing >= cfg.sustained_judgements and cfg.enabled:
            self._open(
                f"worse than the base by {excess:.4f} nats/example (lower bound {lower:.4f}) "
                f"for {self._losing} judgements in a row",
                now,
            )
        else:
            self._reason = f"layer vs base {excess:+.4f} nats/example (lower bound {lower:+.4f})"

    def _open(self, reason: str, now: float) -> None:
        self._opened_at = now
        if self._losing_since is None:
            self._losing_since = now
        self._losing = 0
        self._move(BreakerState.OPEN, reason, now)

    def _move(self, state: BreakerState, reason: str, now: float) -> None:
        previous = self._state
        self._state = state
        self._reason = reason
        self.transitions[f"{previous.value}->{state.value}"] += 1
        log = logger.warning if state is BreakerState.OPEN else logger.info
        log("online breaker %s -> %s at %.1f: %s", previous.value, state.value, now, reason)

    def force_open(self, reason: str, now: float) -> None:
        """Open by operator decision (the same path as a trip: base alone, then cool-down)."""
        self._open(f"opened by operator: {reason}", now)

    def reset(self) -> None:
        """Forget the window and close (a new layer for a new base starts unjudged)."""
        self._users.clear()
        self._excess.clear()
        self._losing = 0
        self._losing_since = None
        self._opened_at = None
        self._last_excess = None
        if self._state is not BreakerState.CLOSED:
            self._move(BreakerState.CLOSED, "reset for a new layer", 0.0)
        self._reason = "no judgement yet"

    def status(self) -> BreakerStatus:
        return BreakerStatus(
            state=self._state.value,
            reason=self._reason,
            excess_loss=self._last_excess,
            events=len(self._excess),
            users=len(set(self._users)),
            opened_at=self._opened_at,
            transitions=dict(self.transitions),
        )
