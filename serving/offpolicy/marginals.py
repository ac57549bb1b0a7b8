"""A context-free logging policy read back from its own log, as a candidate policy.

Open Bandit's Bernoulli Thompson sampling policy ignores the user: at any moment it has one
probability of showing each item at each slot, and its parameters moved during the week.
Its marginal over a time window is estimated by how often it showed each item at each
slot in that window of its own log: ``count(item, slot) / count(slot)``. That is unbiased
for the window's mean marginal and sums to 1 over the catalogue by construction, and since
IPS is linear in the candidate's probabilities an unbiased estimate of them keeps IPS
unbiased (for the policy held at its window mean). The propensities logged with its
impressions are *not* used for this: they are recorded only when an item was shown, so an
item's recorded values over-represent its moments of high probability (read back on the
BTS log itself, the nearest recorded values sum to ~1.6 per slot).

This is an approximation (the policy is taken as constant within a window; the default
window is a day), unlike ``uniform``, whose marginals are exact; it is what lets the BTS
policy's click rate be estimated from the random policy's log.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from protos.errors import InvalidInput
from serving.offpolicy.logdata import BanditLog
from serving.offpolicy.policies import TargetPolicy

__all__ = ["DAY_US", "logged_marginals", "request_times"]

DAY_US = 86_400_000_000


def request_times(log: BanditLog, events: pa.Table) -> np.ndarray:
    """``(n_requests,)`` the earliest event time of each request, in microseconds."""
    ts = events.column("ts").cast(pa.int64()).to_numpy(zero_copy_only=False)
    out = np.full(log.n_requests, np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(out, log.request, ts)
    return out


def logged_marginals(log: BanditLog, events: pa.Table, other: pa.Table,
                     name: str = "marginals", window_us: int = DAY_US) -> TargetPolicy:
    """The policy that wrote ``other``, context-free, as marginals over ``log``'s catalogue
    at each of ``log``'s requests: its show frequencies in the ``window_us`` window (of
    ``other``'s time axis, aligned on its first event) holding the request's time; a
    request outside ``other``'s span takes the nearest window.

    Raises:
        InvalidInput: ``log`` is not over catalogue candidates, ``other`` has no usable
            rows, or ``window_us`` is not positive.
    """
    if log.candidates != "catalogue":
        raise InvalidInput(f"{name} gives a probability to every item of a fixed catalogue: "
                           "use --candidates catalogue")
    if window_us <= 0:
        raise InvalidInput(f"the window must be positive, got {window_us}us")
    if "position" not in other.column_names or other.column("position").null_count:
        raise InvalidInput(f"{name}: the policy's own log lacks position on some rows")
    index = {item: i for i, item in enumerate(log.items.tolist())}
    other_item = np.array([index.get(x, -1) for x in other.column("item_id").to_pylist()])
    other_slot = other.column("position").to_numpy(zero_copy_only=False).astype(np.int64)
    keep = (other_item >= 0) & (other_slot < log.n_slots)
    if not keep.any():
        raise InvalidInput(f"{name}: the policy's own log shares no item and slot with the evaluated log")
    other_ts = other.column("ts").cast(pa.int64()).to_numpy(zero_copy_only=False)[keep]
    start = int(other_ts.min())
    n_windows = int((other_ts.max() - start) // window_us) + 1
    window = (other_ts - start) // window_us
    n_items = log.items.size
    cell = (window * n_items + other_item[keep]) * log.n_slots + other_slot[keep]
    counts = np.bincount(cell, minlength=n_windows * n_items * log.n_slots).astype(np.float64)
    counts = counts.reshape(n_windows, n_items, log.n_slots)
    total = counts.sum(axis=1, keepdims=True)
    freq = np.divide(counts, total, out=np.zeros_like(counts), where=total > 0)
    at = np.clip((request_times(log, events) - start) // window_us, 0, n_windows - 1)
    # Catalogue candidates are request-major with every item once, in ``log.items`` order.
    return TargetPolicy(name, freq[at].reshape(log.n_requests * n_items, log.n_slots))
