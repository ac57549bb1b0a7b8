"""Defences against manipulated feedback that leave honest freshness intact.

Why: validation (``online_layer.validation``) refuses what is malformed, but a coordinated
campaign sends perfectly valid feedback: thousands of made-up users, each ranking a target
item among others and clicking only the target, moved it from the bottom to the top for
every real user. No single batch looks wrong. What sets the campaign apart from a real
breaking-news burst is *who* clicks: the campaign's users are new (no history before it),
and each of them only ever clicks the target; a real burst comes from users the system
already knows, who also engage elsewhere.

So the guard screens every joined example before it is learned:

``user_cap``          a user's examples (and clicks) beyond ``max_examples_per_user``
                      (``max_clicks_per_user``, and ``max_clicks_per_user_item`` on any one
                      item) in the window are not learned: a few accounts with many
                      clicks each cannot move the layer far;
``item_cap``          new users' clicks on one item beyond ``max_new_user_clicks_per_item``
                      in the window are not learned: before a burst is evident, the first
                      accounts of a campaign cannot lift the target far either;
``new_user_budget``   examples from *new* users (first seen less than ``new_user_seconds``
                      ago, or fewer than ``new_user_requests`` requests) may make up at most
                      ``new_user_share`` of what is learned in the window; the excess is
                      quarantined: many made-up users cannot outvote the known ones;
``coordinated_burst`` an item whose clicks in the window (all screened clicks, kept or
                      quarantined) come mostly from new users (``burst_new_share``, at
                      least ``burst_min_users`` of them) has its new users' clicks
                      quarantined until the window forgets them, and every example of
                      those new users (the campaign's impressions elsewhere too).

Quarantined examples are counted by reason and kept for review; nothing is learned from
them. The correction itself is bounded at scoring time (``clip_correction``), so even what
gets through moves a score by at most ``max_correction`` logits.

Memory is bounded: the guard remembers at most ``max_tracked_users`` users (oldest
forgotten first) and the window's examples only.

>>> guard = FeedbackGuard(GuardConfig(new_user_seconds=60, new_user_requests=2,
...                                   new_user_share=0.5, burst_min_users=5))
>>> for u in ("alice", "bob"):
...     guard.record_request(u, now=0.0); guard.record_request(u, now=1.0)
>>> for i in range(10):
...     guard.record_request(f"bot{i}", now=100.0)
>>> users = ["alice", "bob"] + [f"bot{i}" for i in range(10)]
>>> result = guard.screen(users, ["x"] * 12, [1.0] * 12, now=101.0)
>>> int(result.keep.sum()), result.counts
(2, {'coordinated_burst': 10})
"""

from __future__ import annotations

import logging
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["FeedbackGuard", "GuardConfig", "ScreenResult", "clip_correction"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class GuardConfig:
    """Bounds on what any group of users can teach the online layer (module doc).

    Settings table ``[online_layer.guard]``. Times are the learner's event time (its join
    watermark, which no request can move more than ``max_served_ahead_s`` past the wall
    clock), so a replay screens like live traffic. Defaults fit the demo's scale (tens of
    thousands of events a day, hundreds of users): a real user makes far fewer than
    ``max_examples_per_user`` examples in six hours. ``enabled = false`` turns the screen
    off (``max_correction`` still applies).
    """

    enabled: bool = True
    window_seconds: float = 6 * 3600.0
    max_examples_per_user: int = 500
    max_clicks_per_user: int = 50
    max_clicks_per_user_item: int = 4
    new_user_seconds: float = 24 * 3600.0
    new_user_requests: int = 5
    new_user_share: float = 0.2
    burst_new_share: float = 0.6
    burst_min_users: int = 10
    max_new_user_clicks_per_item: int = 2
    max_correction: float = 2.0
    max_tracked_users: int = 200_000
    max_window_examples: int = 1_000_000

    def __post_init__(self) -> None:
        if not isinstance(self.enabled, bool):
            raise ValueError("online_layer guard enabled must be true or false")
        for name in ("window_seconds", "new_user_seconds", "max_correction"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"online_layer guard {name} must be > 0")
        for name in ("max_examples_per_user", "max_clicks_per_user", "max_clicks_per_user_item",
                     "new_user_requests",
                     "burst_min_users", "max_new_user_clicks_per_item", "max_tracked_users",
                     "max_window_examples"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"online_layer guard {name} must be >= 1")
        for name in ("new_user_share", "burst_new_share"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                raise ValueError(f"online_layer guard {name} must be in [0, 1]")


def clip_correction(base_logit: np.ndarray, logit: np.ndarray, max_correction: float) -> np.ndarray:
    """``base + clip(logit - base, -max, +max)``: what the layer may change, bounded.

    >>> clip_correction(np.array([0.0, 1.0]), np.array([5.0, 0.5]), 2.0).tolist()
    [2.0, 0.5]
    """
    return base_logit + np.clip(logit - base_logit, -max_correction, max_correction)


@dataclass
class ScreenResult:
    """Which examples of a batch may be learned, and why the others may not."""

    keep: np.ndarray  # (N,) bool
    counts: dict[str, int] = field(default_factory=dict)


@dataclass
class _UserState:
    first_seen: float
    requests: int = 0


class FeedbackGuard:
    """Screens joined examples against per-user caps, a new-user budget and bursts."""

    def __init__(
        self,
        config: GuardConfig | None = None,
        established: Callable[[str], bool] | None = None,
    ) -> None:
        self.config = config or GuardConfig()
        # Users the system knew before this guard started (serving passes the base model's
        # training vocabulary): never new, so a restart does not make everyone a stranger.
        self._established = established
        self._users: OrderedDict[str, _UserState] = OrderedDict()
        # The window's learned examples: (time, user, item, clicked, new_user).
        self._window: deque[tuple[float, str, str, bool, bool]] = deque()
        self._per_user: Counter[str] = Counter()
        self._clicks_per_user: Counter[str] = Counter()
        self._clicks_per_pair: Counter[tuple[str, str]] = Counter()
        self._new_clicks_kept: Counter[str] = Counter()  # learned new-user clicks per item
        self._new_examples = 0
        # Every click screened in the window, kept or not: (time, user, item, new_user).
        # Burst evidence counts quarantined clicks too, so the new-user budget cannot hide
        # a campaign from the burst check by keeping most of its users out.
        self._clicks_seen: deque[tuple[float, str, str, bool]] = deque()
        self._item_clicks: Counter[str] = Counter()
        self._item_new_clicks: Counter[str] = Counter()
        self._item_new_users: dict[str, Counter[str]] = {}
        self.quarantined: Counter[str] = Counter()

    # -- what serving tells the guard ---------------------------------------------------
    def record_request(self, user_id: str, now: float) -> None:
        """Count one Rank call for ``user_id`` (its tenure starts at its first request)."""
        state = self._users.get(user_id)
        if state is None:
            state = _UserState(first_seen=now)
            self._users[user_id] = state
            if len(self._users) > self.config.max_tracked_users:
                self._users.popitem(last=False)
        else:
            self._users.move_to_end(user_id)
        state.requests += 1

    def is_new(self, user_id: str, now: float) -> bool:
        """A user the guard does not know, or knows only briefly or from few requests."""
        if self._established is not None and self._established(user_id):
            return False
        state = self._users.get(user_id)
        if state is None:
            return True
        cfg = self.config
        return now - state.first_seen < cfg.new_user_seconds or state.requests < cfg.new_user_requests

    # -- screening ----------------------------------------------------------------------
    def screen(
        self,
        users: Sequence[str],
        items: Sequence[str],
        labels: Sequence[float] | np.ndarray,
        now: float,
    ) -> ScreenResult:
        """Decide, example by example, what may be learned; remember what is kept."""
        self._forget(now)
        cfg = self.config
        n = len(users)
        if len(items) != n or len(labels) != n:
            raise ValueError(
                f"guard: users, items and labels must have one length, got {n}, "
                f"{len(items)}, {len(labels)}"
            )
        keep = np.zeros(n, dtype=bool)
        counts: Counter[str] = Counter()
        clicked = np.asarray(labels, dtype=np.float64) >= 0.5
        new = [self.is_new(u, now) for u in users]
        # Burst detection looks at the batch together with the window: a campaign arrives
        # in one batch as easily as in a slow drip.
        for user, item, click, is_new in zip(users, items, clicked, new, strict=True):
            if click:
                self._see_click(now, user, item, is_new)
        bursting = {
            item
            for item, new_users in self._item_new_users.items()
            if len(new_users) >= cfg.burst_min_users
            and self._item_new_clicks[item] >= cfg.burst_new_share * self._item_clicks[item]
        }
        # A new user who clicked a bursting item is one of the campaign: none of its
        # examples is learned (its impressions elsewhere would push the other items down).
        campaign: set[str] = set()
        for item in bursting:
            campaign.update(self._item_new_users[item])
        learned = len(self._window)
        for i, (user, item, click, is_new) in enumerate(zip(users, items, clicked, new, strict=True)):
            if self._per_user[user] >= cfg.max_examples_per_user or (
                click
                and (
                    self._clicks_per_user[user] >= cfg.max_clicks_per_user
                    or self._clicks_per_pair[(user, item)] >= cfg.max_clicks_per_user_item
                )
            ):
                counts["user_cap"] += 1
                continue
            if is_new and ((click and item in bursting) or user in campaign):
                counts["coordinated_burst"] += 1
                continue
            if is_new and click and self._new_clicks_kept[item] >= cfg.max_new_user_clicks_per_item:
                counts["item_cap"] += 1
                continue
            if is_new and (self._new_examples + 1) > cfg.new_user_share * (learned + 1):
                counts["new_user_budget"] += 1
                continue
            keep[i] = True
            learned += 1
            self._remember(now, user, item, bool(click), is_new)
        if counts:
            self.quarantined.update(counts)
            logger.warning("feedback guard quarantined %s of %s examples: %s",
                           sum(counts.values()), n, dict(counts))
        return ScreenResult(keep=keep, counts=dict(counts))

    def _see_click(self, now: float, user: str, item: str, is_new: bool) -> None:
        self._clicks_seen.append((now, user, item, is_new))
        self._item_clicks[item] += 1
        if is_new:
            self._item_new_clicks[item] += 1
            self._item_new_users.setdefault(item, Counter())[user] += 1
        while len(self._clicks_seen) > self.config.max_window_examples:
            self._forget_click()

    def _forget_click(self) -> None:
        _, user, item, is_new = self._clicks_seen.popleft()
        _decrement(self._item_clicks, item)
        if is_new:
            _decrement(self._item_new_clicks, item)
            users = self._item_new_users.get(item)
            if users is not None:
                _decrement(users, user)
                if not users:
                    del self._item_new_users[item]

    def _remember(self, now: float, user: str, item: str, click: bool, is_new: bool) -> None:
        self._window.append((now, user, item, click, is_new))
        while len(self._window) > self.config.max_window_examples:
            self._drop_oldest()
        self._per_user[user] += 1
        if is_new:
            self._new_examples += 1
        if click:
            self._clicks_per_user[user] += 1
            self._clicks_per_pair[(user, item)] += 1
            if is_new:
                self._new_clicks_kept[item] += 1

    def _forget(self, now: float) -> None:
        horizon = now - self.config.window_seconds
        while self._window and self._window[0][0] < horizon:
            self._drop_oldest()
        while self._clicks_seen and self._clicks_seen[0][0] < horizon:
            self._forget_click()

    def _drop_oldest(self) -> None:
        _, user, item, click, is_new = self._window.popleft()
        _decrement(self._per_user, user)
        if is_new:
            self._new_examples -= 1
        if click:
            _decrement(self._clicks_per_user, user)
            _decrement(self._clicks_per_pair, (user, item))
            if is_new:
                _decrement(self._new_clicks_kept, item)

    def report(self) -> dict[str, int]:
        """Quarantined examples by reason, since start."""
        return dict(self.quarantined)


def _decrement(counter: Counter[Any], key: Any) -> None:
    counter[key] -= 1
    if counter[key] <= 0:
        del counter[key]
