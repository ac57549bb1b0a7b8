"""Baselines with no model at all, scored on the same events as the policies (issue 18).

- ``constant``: the click rate of every event learned so far (one number for everyone).
- ``item_rate``: the item's smoothed click rate so far, ``(clicks + m * g) / (views + m)``
  with ``g`` the ``constant`` and ``m = ITEM_PRIOR_EVENTS`` pseudo-events (fixed before any
  run): popularity with recency, as a counter service would serve it.
- ``oracle`` (simulated logs only, where the events carry ``true_ctr``): the simulator's true
  click probability, the floor no policy can beat.

``serving.backtest.online_baselines`` adds the online layer with no neural base: alone
(``ftrl_alone``) and correcting ``item_rate`` (``counter_ftrl``).

"So far" means what the online layer could have learned: an event's label counts for
another event only when it is at least ``delay_us`` (the replay's learning delay, at least
one microsecond) older, so no baseline sees its own label or a simultaneous one.

Examples
--------
>>> import numpy as np
>>> ts = np.array([0, 10, 20, 30], dtype=np.int64)
>>> items = np.array(["a", "a", "b", "a"], dtype=object)
>>> y = np.array([1.0, 0.0, 1.0, 1.0])
>>> counts_so_far(ts, y, items, 1)
(array([0., 1., 0., 2.]), array([0., 1., 0., 1.]))
>>> counts_so_far(ts, y, None, 15)
(array([0., 0., 1., 2.]), array([0., 0., 1., 1.]))
"""

from __future__ import annotations

import numpy as np

__all__ = ["ITEM_PRIOR_EVENTS", "counts_so_far", "constant_so_far", "item_rate_so_far"]

ITEM_PRIOR_EVENTS = 20.0
_EMPTY_PRIOR = 0.5  # before any label at all (never reached after a warm-up)


def counts_so_far(
    ts_us: np.ndarray, labels: np.ndarray, keys: np.ndarray | None, delay_us: int
) -> tuple[np.ndarray, np.ndarray]:
    """For each event: (views, clicks) of earlier events with the same key whose label is
    due, i.e. ``ts_j <= ts_i - max(delay_us, 1)``. ``keys`` None: one key for all.

    ``ts_us`` must be non-decreasing (the replay's order).
    """
    ts = np.asarray(ts_us, dtype=np.int64)
    y = np.asarray(labels, dtype=np.float64)
    n = ts.size
    if n == 0:
        return np.zeros(0), np.zeros(0)
    d = max(int(delay_us), 1)
    if keys is None:
        code = np.zeros(n, dtype=np.int64)
    else:
        _, code = np.unique(np.asarray(keys).astype(str), return_inverse=True)
        code = code.astype(np.int64)
    base = int(ts.min())
    span = int(ts.max()) - base + d + 2
    key = code * span + (ts - base + d)  # every event's own key, inside its code's block
    order = np.argsort(key, kind="stable")
    sorted_key = key[order]
    cum = np.concatenate(([0.0], np.cumsum(y[order])))
    query = code * span + (ts - base)  # labels due by ts_i: ts_j + d <= ts_i
    hi = np.searchsorted(sorted_key, query, side="right")
    lo = np.searchsorted(sorted_key, code * span, side="left")
    return (hi - lo).astype(np.float64), cum[hi] - cum[lo]


def constant_so_far(ts_us: np.ndarray, labels: np.ndarray, delay_us: int) -> np.ndarray:
    """The overall click rate of the labels due by each event."""
    views, clicks = counts_so_far(ts_us, labels, None, delay_us)
    with np.errstate(invalid="ignore", divide="ignore"):
        rate = np.where(views > 0, clicks / np.maximum(views, 1.0), _EMPTY_PRIOR)
    return rate


def item_rate_so_far(
    ts_us: np.ndarray, labels: np.ndarray, items: np.ndarray, delay_us: int,
    prior_events: float = ITEM_PRIOR_EVENTS,
) -> np.ndarray:
    """Each item's click rate so far, shrunk towards ``constant_so_far`` by ``prior_events``."""
    g = constant_so_far(ts_us, labels, delay_us)
    views, clicks = counts_so_far(ts_us, labels, items, delay_us)
    with np.errstate(invalid="ignore", divide="ignore"):
        rate = (clicks + prior_events * g) / (views + prior_events)
    return np.where(views + prior_events > 0, rate, g)
