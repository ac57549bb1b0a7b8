"""The fresh ceiling (issue 18): daily retraining without the held-out day's staleness.

``daily_retrain`` (kept, as before) retrains from scratch every day, validating on the last
day before its cut-off: each fit's newest training row is 24-48 h old when it scores, and
its epochs and patience differ from the weekly warm fits', so cadence is confounded with
staleness and with warm vs cold. ``daily_fresh`` removes both confounds:

- every ``daily_every`` a fit **warm-started from the previous daily_fresh base** (the same
  warm start, learning-rate factor and loop as ``base_only``'s weekly fits), trained on
  **every row before its cut-off** (no day held out: ``TierContext.fit_base(no_holdout=True)``);
- with no validation day there is no early stopping, so the epoch count is fixed before
  the span is scored: the **first** daily cut-off gets one ordinary, validated warm fit (from
  the shared first base, validating on the day before that cut-off, as any warm fit does);
  its best epoch (at least 1) is the epoch count of every daily_fresh fit. That calibration
  fit is paid by ``daily_fresh`` (its compute is counted) and never scores;
- the first day is scored by the shared first base, as for every policy; the evaluation gate
  is not obeyed (a ceiling measures what the cadence can give); data-gate blocks keep the
  previous base.

``daily_fresh_new`` (``window="new"``, added after the first issue-18 runs; reported beside
the pre-registered ``daily_fresh``, never instead of it): the same, except that each fit
trains only on the days since the previous fit (one day at a daily cadence), as warm
incremental retraining does: re-fitting all history every day for a fixed epoch with no
early stopping over-fits the old days more with every link of the warm chain (on the
simulator ``daily_fresh`` is the best policy on its first day and worse than a constant by
its last). Its calibration fit trains on the day before the first cut-off's validation day.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from serving.backtest.policies import Fit

if TYPE_CHECKING:
    from base_model.artifact import BaseScorer
    from serving.backtest.data import ReplayData
    from serving.backtest.tiers import TierContext

__all__ = ["FreshCeiling", "fresh_chain"]


class FreshCeiling:
    """The chain the fresh ceiling serves, the fits it paid, and the epoch rule's outcome."""

    def __init__(self) -> None:
        self.chain: list[tuple[Fit, BaseScorer]] = []
        self.paid: list[Fit] = []
        self.epochs: int | None = None
        self.calibration: Fit | None = None
        self.blocked: list[dict[str, str]] = []


def fresh_chain(
    data: ReplayData,
    tiers: TierContext,
    shared: tuple[Fit, BaseScorer],
    times: list[datetime],
    bound: Callable[[datetime], int],
    progress: Callable[[str, str], None],
    window: str = "all",
) -> FreshCeiling:
    """``shared`` then a warm, no-holdout fit at each of ``times[1:]`` (see the module);
    ``window``: ``"all"`` (every row before the cut-off) or ``"new"`` (the days since the
    previous cut-off)."""
    if window not in ("all", "new"):
        raise ValueError(f"window must be 'all' or 'new', got {window!r}")
    name = "daily_fresh" if window == "all" else "daily_fresh_new"
    new_days = None
    if window == "new" and len(times) > 1:
        new_days = max(1, int(math.ceil((times[1] - times[0]).total_seconds() / 86400)))
    kw: dict[str, Any] = {} if new_days is None else {"train_days": new_days}
    out = FreshCeiling()
    out.chain.append(shared)
    out.paid.append(shared[0])
    if len(times) < 2:
        return out
    first = times[1]
    calib = tiers.fit_base(data, bound(first), first, shared[0], **kw)
    if calib is None:
        out.epochs = 1
        out.blocked.append({"policy": name, "cutoff": first.isoformat(),
                            "reason": f"calibration fit blocked: {tiers.last_block}; epochs = 1"})
    else:
        out.calibration = calib[0]
        out.paid.append(calib[0])
        out.epochs = max(1, calib[0].best_epoch or calib[0].epochs)
    progress("fit", f"{name}: {out.epochs} epoch(s) per fit (best epoch of the validated "
             f"warm fit at {first:%Y-%m-%d %H:%M})")
    for i, t in enumerate(times[1:], start=1):
        progress("fit", f"{name} {i}/{len(times) - 1} cutoff {t:%Y-%m-%d %H:%M} "
                 f"({bound(t):,} rows, warm, no held-out day)")
        previous = out.chain[-1]
        result = tiers.fit_base(
            data, bound(t), t, previous[0], no_holdout=True,
            overrides={"warm_epochs": out.epochs, "epochs": out.epochs}, **kw,
        )
        if result is None:
            out.blocked.append({"policy": name, "cutoff": t.isoformat(),
                                "reason": tiers.last_block})
            out.chain.append(previous)
            continue
        out.paid.append(result[0])
        out.chain.append(result)
    return out
