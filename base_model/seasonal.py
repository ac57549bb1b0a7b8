"""What a day or an hour of a log usually holds: the reference the completeness gates judge by.

The log is cut into 24-hour blocks that end at the window's end (``as_of``), each split into
24 hour slots, so a block and the block 7 before it start at the same hour of the same day
of the week. The newest blocks (the window's, at most ``JUDGED_DAYS``) are judged; every
block since the log's first event, back to ``HISTORY_WEEKS`` weeks before them, is the
reference. A block or slot is compared with the median of the *other* blocks (never with
itself, so a broken day does not lower its own bar):

* **the same day of the week** (and, for an hour, the same hour of that day) when at least
  ``MIN_SAME_WEEKDAY`` other full blocks share it: a weekend is judged against weekends, a
  Sunday night against Sunday nights;
* otherwise (a history of less than ~4 weeks) **every other full block** (for an hour: the
  same hour of any other day; with no other full day, nothing is judged), which is the
  best a short history allows: a weekly cycle deeper than the gate's fraction may then read
  as missing data, and the gate's reason says which rule judged.

**The log's own spread.** A bursty log (explicit ratings: a few users rate hundreds of items
in a session) routinely has days at a tenth of their usual count; a count-versus-median rule
alone would block it every week. So when the other full blocks of the reference hold enough
ratios to usual (``MIN_SPREAD_DAYS`` days, ``MIN_SPREAD_HOURS`` hours that usually hold
events), a judged block or slot below the gate's fraction blocks only when it is *also*
below the log's ordinary range: ``SPREAD_Z`` robust standard deviations of the log ratio
below its median (``ordinary_low``). A rank rule (below the 2% quantile, say) would not do:
with 8 days judged per fit it blocks ~15% of a complete log's fits by construction. On a
steady log the range is narrow and the fraction decides (a half-loaded day is far outside
it); on a bursty one a quiet day passes. A day with no events at all always blocks
(``gates.MIN_EXPECTED_PER_DAY``: what a failed load looks like, whatever the spread).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "HISTORY_WEEKS",
    "JUDGED_DAYS",
    "MIN_SAME_WEEKDAY",
    "SPREAD_Z",
    "Blocks",
    "blocks_of",
    "ordinary_low",
    "smoothed",
    "usual",
]

#: Days judged: a week of training days and the validation day, the data a weekly retrain
#: has not trained on. Older days of a longer window are history, judged when they were new.
JUDGED_DAYS = 8
#: Weeks of history before the judged days that form the reference (older behaviour of the
#: log may no longer be its usual one).
HISTORY_WEEKS = 8
#: Other full blocks sharing a day of the week needed to judge by day of the week.
MIN_SAME_WEEKDAY = 3
#: Robust standard deviations (of the log ratio to usual) below the median at which a judged
#: block or slot leaves the log's ordinary range: for normal noise a chance of ~3e-5 a day,
#: so ~0.03% of fits (8 days) and ~0.6% (192 hours) would block by chance alone.
SPREAD_Z = 4.0
#: Ratios (of the other full days; of their hours that usually hold events) needed before the
#: log's spread is trusted; with fewer, the gate's fraction alone judges.
MIN_SPREAD_DAYS = 7
MIN_SPREAD_HOURS = 50

_DAY = np.timedelta64(1, "D")
_HOUR = np.timedelta64(1, "h")


@dataclass(frozen=True)
class Blocks:
    """Event counts per 24-hour block (oldest first) and hour slot, ending at ``end``.

    ``covered``: share of each block after the log's first event (0 before it, 1 when the
    block is wholly after it); ``slot_live``: slots starting at or after the first event;
    ``judged``: the newest blocks, the ones the gates judge.
    """

    starts: np.ndarray  # (B,) datetime64[us]
    counts: np.ndarray  # (B, 24) float64
    covered: np.ndarray  # (B,) float64 in [0, 1]
    slot_live: np.ndarray  # (B, 24) bool
    judged: np.ndarray  # (B,) bool

    @property
    def totals(self) -> np.ndarray:
        totals: np.ndarray = self.counts.sum(axis=1)
        return totals

    @property
    def full(self) -> np.ndarray:
        full: np.ndarray = self.covered >= 1.0
        return full

    @property
    def history(self) -> np.ndarray:
        """Full blocks before the judged ones: the log's past (counted in the gates' details)."""
        history: np.ndarray = self.full & ~self.judged
        return history


def blocks_of(
    ts: np.ndarray, end: np.datetime64, first: np.datetime64, window_days: int
) -> Blocks:
    """The blocks of ``ts`` (datetime64[us], any order) ending at ``end``: the newest
    ``min(window_days, JUDGED_DAYS)`` judged, up to ``HISTORY_WEEKS`` weeks before them."""
    n_judged = max(1, min(window_days, JUDGED_DAYS))
    first = first.astype("datetime64[h]").astype("datetime64[us]")  # the log starts in that hour
    since_first = int(np.ceil((end - first) / _DAY)) if first < end else 0
    n_blocks = max(n_judged, min(n_judged + 7 * HISTORY_WEEKS, since_first))
    begin = end - n_blocks * _DAY
    inside = ts[(ts >= begin) & (ts < end)]
    slot = ((inside - begin) // _HOUR).astype(np.int64)
    counts = np.bincount(slot, minlength=n_blocks * 24)[: n_blocks * 24]
    starts = begin + np.arange(n_blocks) * _DAY
    block_end_s = (starts + _DAY - first) / np.timedelta64(1, "s")
    covered = np.clip(block_end_s.astype(np.float64) / 86400.0, 0.0, 1.0)
    slot_starts = begin + np.arange(n_blocks * 24) * _HOUR
    judged = np.zeros(n_blocks, dtype=bool)
    judged[-n_judged:] = True
    return Blocks(
        starts=starts,
        counts=counts.reshape(n_blocks, 24).astype(np.float64),
        covered=covered,
        slot_live=(slot_starts >= first).reshape(n_blocks, 24),
        judged=judged,
    )


def usual(values: np.ndarray, full: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each block's usual value: the median over the *other* full blocks of its day of the
    week when at least ``MIN_SAME_WEEKDAY`` exist, else over every other full block.

    ``values`` is (B,) (a day's total) or (B, 24) (its hours). Returns the usual values
    (NaN where no other full block exists) and, per block, whether the day-of-week rule
    applied.
    """
    n = values.shape[0]
    expected = np.full(values.shape, np.nan)
    by_weekday = np.zeros(n, dtype=bool)
    index = np.arange(n)
    for b in range(n):
        others = full & (index != b)
        same = others & (index % 7 == b % 7)
        if same.sum() >= MIN_SAME_WEEKDAY:
            expected[b] = np.median(values[same], axis=0)
            by_weekday[b] = True
        elif others.any():
            expected[b] = np.median(values[others], axis=0)
    return expected, by_weekday


def smoothed(counts: np.ndarray, expected: np.ndarray) -> np.ndarray:
    """(count + 0.5) / usual, NaN where nothing is usual: a ratio whose log is finite for an
    empty day or hour (how far below usual an empty hour is depends on what it usually holds)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio: np.ndarray = np.where(expected > 0, (counts + 0.5) / expected, np.nan)
    return ratio


def ordinary_low(ratios: np.ndarray, minimum: int) -> float | None:
    """The bottom of the log's ordinary range, as a ratio to usual: ``exp(median - SPREAD_Z
    * sigma)`` of the log ratios (``smoothed``), sigma from their median absolute deviation
    (1.4826 MAD: robust to the odd broken day in the reference). None when fewer than
    ``minimum`` ratios exist (the spread is then unknown)."""
    logs = np.log(ratios[np.isfinite(ratios) & (ratios > 0)])
    if logs.size < minimum:
        return None
    center = float(np.median(logs))
    sigma = 1.4826 * float(np.median(np.abs(logs - center)))
    return float(np.exp(center - SPREAD_Z * sigma))
