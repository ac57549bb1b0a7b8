"""A ranking log as the arrays off-policy estimators need: who was in which request, which
item was shown at which slot, the click, and the logging policy's propensity.

The estimators in this package are **item-position** estimators (Li et al. 2018, "Offline
evaluation of ranking policies with click models"; the one the Open Bandit paper uses for
its three-slot logs): the click at a slot is assumed to depend on the request and on the
item at that slot, not on what else was shown. Under that assumption a ranking policy is
summed up by its marginals ``pi(item, slot | request)``, and the logged propensity needed is
the logging policy's marginal for the shown (item, slot), which is exactly what the events
schema's ``propensity`` holds (``protos.events``). The value estimated is the click rate
per logged slot: the mean click over the slots the log filled, had the candidate policy
filled them.

Candidates (what a candidate policy may place in a request's slots):

- ``"request"``: the items logged in that request. A served log records the shown top-k
  only (``serving.served_log.served_entry``), so a candidate policy re-orders what was shown.
- ``"catalogue"``: every item of the log, in every request (a fixed catalogue, as in Open
  Bandit's 80 items, whose log has one row per shown slot).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from protos.errors import InvalidInput

__all__ = ["CANDIDATE_MODES", "BanditLog", "bandit_log"]

CANDIDATE_MODES = ("request", "catalogue")
#: Catalogue mode keeps (requests x items x slots) arrays: past this, refuse (memory).
MAX_CATALOGUE_CELLS = 50_000_000


@dataclass(frozen=True, eq=False)
class BanditLog:
    """One row per logged impression (``n``), grouped into ``n_requests`` requests.

    Candidates are stored request by request (CSR): request ``r`` owns candidate rows
    ``cand_start[r]:cand_start[r + 1]``; policies and reward models are ``(M, n_slots)``
    arrays over those rows.

    Attributes:
        request: ``(n,)`` request index; the independent unit of every interval.
        slot: ``(n,)`` 0-based position shown.
        reward: ``(n,)`` click (or graded label in [0, 1]).
        propensity: ``(n,)`` the logging policy's probability of this item at this slot.
        item: ``(n,)`` index into ``items``.
        event_cand: ``(n,)`` the candidate row of the logged item.
        cand_start: ``(n_requests + 1,)`` CSR offsets.
        cand_item: ``(M,)`` index into ``items`` of each candidate row.
        items: the item ids.
        n_slots: slots a policy fills (``max(slot) + 1``).
        event_of_cand: ``(M,)`` the logged event of each candidate row, -1 when the
            candidate was not shown in that request (catalogue mode).
    """

    request: np.ndarray
    slot: np.ndarray
    reward: np.ndarray
    propensity: np.ndarray
    item: np.ndarray
    event_cand: np.ndarray
    cand_start: np.ndarray
    cand_item: np.ndarray
    items: np.ndarray
    n_slots: int
    event_of_cand: np.ndarray
    candidates: str = "request"

    @property
    def n(self) -> int:
        return int(self.reward.size)

    @property
    def n_requests(self) -> int:
        return int(self.cand_start.size - 1)

    @property
    def cand_request(self) -> np.ndarray:
        """``(M,)`` the request of each candidate row."""
        sizes = np.diff(self.cand_start)
        return np.repeat(np.arange(self.n_requests), sizes)

    @property
    def cand_count(self) -> np.ndarray:
        """``(n_requests,)`` candidates per request."""
        return np.diff(self.cand_start)


def bandit_log(events: pa.Table, candidates: str = "request") -> BanditLog:
    """The ``BanditLog`` of an events table (``protos.events.EVENTS_SCHEMA``).

    Needs ``position`` and ``propensity`` on every row (propensity in (0, 1]); a missing
    ``request_id`` makes each (user, ts) pair one request, as the events contract says.

    Raises:
        InvalidInput: no rows, an unknown ``candidates`` mode, missing or out-of-range
            positions or propensities, or an item logged twice in one request.
    """
    if candidates not in CANDIDATE_MODES:
        raise InvalidInput(f"candidates must be one of {', '.join(CANDIDATE_MODES)}, got {candidates!r}")
    n = events.num_rows
    if n == 0:
        raise InvalidInput("the events hold no rows to evaluate")
    position = _column(events, "position", "the slot each item was shown at")
    propensity = _column(events, "propensity", "the logging policy's probability of each shown item")
    if np.any(position < 0):
        raise InvalidInput("events have a negative position")
    bad = ~((propensity > 0) & (propensity <= 1))
    if bad.any():
        raise InvalidInput(
            f"propensity must be in (0, 1]; row {int(np.flatnonzero(bad)[0])} has "
            f"{propensity[bad][0]!r} ({int(bad.sum())} such rows)")
    request = _request_codes(events)
    items, item = np.unique(_strings(events, "item_id"), return_inverse=True)
    reward = events.column("label").to_numpy(zero_copy_only=False).astype(np.float64)
    order = np.lexsort((item, request))  # events grouped by request, items sorted
    if np.any((request[order][1:] == request[order][:-1]) & (item[order][1:] == item[order][:-1])):
        raise InvalidInput("an item is logged twice in one request (item-position estimators "
                           "need one slot per item and request)")
    n_requests = int(request.max()) + 1
    if candidates == "request":
        cand_start = np.searchsorted(request[order], np.arange(n_requests + 1))
        cand_item = item[order]
        event_of_cand = order
    else:
        n_items = items.size
        cells = n_requests * n_items * (int(position.max()) + 1)
        if cells > MAX_CATALOGUE_CELLS:
            raise InvalidInput(
                f"catalogue candidates need {n_requests} requests x {n_items} items x slots = "
                f"{cells:,} cells (over {MAX_CATALOGUE_CELLS:,}): use --candidates request")
        cand_start = np.arange(n_requests + 1) * n_items
        cand_item = np.tile(np.arange(n_items), n_requests)
        event_of_cand = np.full(n_requests * n_items, -1, dtype=np.int64)
        event_of_cand[request * n_items + item] = np.arange(n)
    event_cand = np.empty(n, dtype=np.int64)
    shown = event_of_cand >= 0
    event_cand[event_of_cand[shown]] = np.flatnonzero(shown)
    return BanditLog(
        request=request, slot=position.astype(np.int64), reward=reward,
        propensity=propensity, item=item, event_cand=event_cand,
        cand_start=cand_start.astype(np.int64), cand_item=cand_item, items=items,
        n_slots=int(position.max()) + 1, event_of_cand=event_of_cand.astype(np.int64),
        candidates=candidates,
    )


def _column(events: pa.Table, name: str, what: str) -> np.ndarray:
    if name not in events.column_names or events.column(name).null_count:
        missing = events.num_rows if name not in events.column_names else events.column(name).null_count
        raise InvalidInput(f"events lack {name} ({what}) on {missing} of {events.num_rows} rows; "
                           "off-policy evaluation needs it on every row")
    return events.column(name).to_numpy(zero_copy_only=False).astype(np.float64)


def _strings(events: pa.Table, name: str) -> np.ndarray:
    return np.asarray(events.column(name).to_pylist(), dtype=object).astype(str)


def _request_codes(events: pa.Table) -> np.ndarray:
    """Dense request codes in first-seen order; (user, ts) when ``request_id`` is null."""
    rid = events.column("request_id").to_pylist() if "request_id" in events.column_names else [None] * events.num_rows
    if any(r is None for r in rid):
        users = events.column("user_id").to_pylist()
        ts = events.column("ts").cast(pa.int64()).to_pylist()
        rid = [r if r is not None else f"\x00{u}\x00{t}" for r, u, t in zip(rid, users, ts)]
    keys, first, codes = np.unique(np.asarray(rid, dtype=object).astype(str),
                                   return_index=True, return_inverse=True)
    rank = np.empty(keys.size, dtype=np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(keys.size)
    return rank[codes.reshape(-1)]
