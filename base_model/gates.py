"""Gates: data checks before training, and the offline evaluation before promotion.

Data gates block training (``DataGateError``): too few rows (in the training window, or on
the validation day), stale data (a log stamped by the day, every time 00:00, is allowed a
day more: its newest event may be that much younger than its stamp), a day with far fewer events than that day of the week
usually has (a half-loaded day), or an hour with far fewer events than the same hour of the
same weekday usually has. "Usually" is the log's own history (``base_model.seasonal``): the
newest days (at most ``seasonal.JUDGED_DAYS``) are judged against the weeks before them, so
a quiet night or a weekend passes; a short history falls back to the median of the other
days (hours of the day), and a bursty log's ordinary quiet days are told from a broken one
by its own spread. Days and hours before the data's first event are not judged: a log that
starts inside the window is young, not broken (the fit trains on what there is).

The evaluation gate compares the candidate with the champion (or, for a first model, with
predicting the training click rate) on the validation day: the relative log-loss gain, with a
bootstrap interval over users (rows of one user are not independent), promotes only if the
interval's lower bound clears the threshold. The validation day also chose the exported
epoch (``keep_best``); with a handful of candidate epochs on a smooth curve that choice makes
the gain slightly optimistic, far less than the interval's width.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np

from base_model import seasonal
from base_model.config import BaseModelConfig
from base_model.data import TimeWindows
from protos.metrics import EPS, auc, log_losses, nan_to_none

logger = logging.getLogger(__name__)

__all__ = ["GateResult", "check_data", "evaluation_gate", "summarize"]

# An hour is judged only when it usually holds at least this many events: on sparse data a
# thin hour is noise, not a loading failure.
MIN_EXPECTED_PER_HOUR = 10.0
# A day with no events blocks, whatever the log's spread, when it usually holds this many.
MIN_EXPECTED_PER_DAY = 10.0


@dataclass(frozen=True)
class GateResult:
    """One check: passed or not, a sentence saying why, and the numbers behind it."""

    name: str
    passed: bool
    reason: str
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_data(
    ts: np.ndarray, windows: TimeWindows, as_of: datetime, cfg: BaseModelConfig
) -> list[GateResult]:
    """Data gates over event times (datetime64[us], UTC): the training window, the day after
    it, and freshness at ``as_of`` ("now")."""
    start = np.datetime64(windows.train_start.astimezone(UTC).replace(tzinfo=None), "us")
    split = np.datetime64(windows.valid_start.astimezone(UTC).replace(tzinfo=None), "us")
    end = np.datetime64(windows.valid_end.astimezone(UTC).replace(tzinfo=None), "us")
    ts = np.asarray(ts, dtype="datetime64[us]")
    inside = ts[(ts >= start) & (ts < end)]
    n_train = int(np.count_nonzero(inside < split))
    n_valid = int(inside.size - n_train)
    # The log's first event (over the whole table, not only the window): before it there is
    # no history, not missing data.
    first = ts.min() if ts.size else end
    days = int((end - start) // np.timedelta64(1, "D"))
    blocks = seasonal.blocks_of(ts, end, first, days)
    return [
        _rows_gate(n_train, n_valid, windows, cfg),
        _freshness_gate(ts, as_of, cfg),
        _daily_gate(blocks, first, cfg),
        _hourly_gate(blocks, cfg),
    ]


def _rows_gate(
    n_train: int, n_valid: int, windows: TimeWindows, cfg: BaseModelConfig
) -> GateResult:
    details = {
        "train_rows": n_train,
        "valid_rows": n_valid,
        "min_train_rows": cfg.min_train_rows,
        "min_valid_rows": cfg.min_valid_rows,
    }
    day = f"[{windows.valid_start.isoformat()}, {windows.valid_end.isoformat()})"
    problems = []
    if n_train < cfg.min_train_rows:
        problems.append(
            f"only {n_train} training rows in the window (need {cfg.min_train_rows})"
        )
    if n_valid < cfg.min_valid_rows:
        if n_valid == 0:
            problems.append(
                f"the validation day {day} holds no rows (min_valid_rows = "
                f"{cfg.min_valid_rows}); on sparse data set min_valid_rows = 0 to train "
                "without validation (no early stopping, no offline evaluation, no promotion)"
            )
        else:
            problems.append(
                f"the validation day {day} holds only {n_valid} rows "
                f"(need min_valid_rows = {cfg.min_valid_rows})"
            )
    if problems:
        return GateResult("rows", False, "; ".join(problems), details)
    reason = f"{n_train} training rows, {n_valid} validation rows"
    if n_valid == 0:
        reason += (
            f"; the validation day {day} is empty and min_valid_rows = 0: training without "
            "validation (last epoch kept, not evaluated, not promoted)"
        )
    return GateResult("rows", True, reason, details)


def _freshness_gate(ts: np.ndarray, as_of: datetime, cfg: BaseModelConfig) -> GateResult:
    now = np.datetime64(as_of.astimezone(UTC).replace(tzinfo=None), "us")
    seen = ts[ts <= now]
    if seen.size == 0:
        return GateResult("freshness", False, "no events at or before the training time", {})
    newest = seen.max()
    age_h = float((now - newest) / np.timedelta64(1, "s")) / 3600.0
    # A log stamped by the day (every time at 00:00: review dates) says only which day an
    # event happened on: its newest event may be up to a day younger than its stamp.
    recent = seen[seen >= newest - np.timedelta64(28, "D")]
    by_day = bool(np.all(recent == recent.astype("datetime64[D]")))
    limit = cfg.max_staleness_hours + (24.0 if by_day else 0.0)
    ok = age_h <= limit
    reason = (
        f"newest event {_iso(newest)} is {age_h:.1f} h old at {_iso(now)} "
        f"(limit {cfg.max_staleness_hours:g} h"
        + (", + 24 h: the log's times are days" if by_day else "")
        + ")"
    )
    return GateResult(
        "freshness",
        ok,
        reason if ok else f"stale data: {reason}",
        {"newest_event": _iso(newest), "age_hours": round(age_h, 3), "day_stamps": by_day},
    )


def _daily_gate(blocks: seasonal.Blocks, first: np.datetime64, cfg: BaseModelConfig) -> GateResult:
    """Each judged day against its usual count (``base_model.seasonal``): the median of the
    other same weekdays when the history has ``MIN_SAME_WEEKDAY`` of them, else of every
    other day; blocks below ``min_day_fraction`` of it (scaled by the share of the day after
    the log's first event) and below the log's ordinary spread."""
    totals = blocks.totals
    expected, weekly = seasonal.usual(totals, blocks.full)
    ratio = _ratio(totals, expected * blocks.covered)
    smooth = seasonal.smoothed(totals, expected * blocks.covered)
    index = np.arange(totals.size)
    span = [int(i) for i in np.flatnonzero(blocks.judged)]
    lows = {
        i: seasonal.ordinary_low(smooth[blocks.full & (index != i)], seasonal.MIN_SPREAD_DAYS)
        for i in span
    }
    judged = [i for i in span if blocks.covered[i] > 0 and np.isfinite(expected[i])]
    thin = [i for i in judged if ratio[i] < cfg.min_day_fraction]
    # An empty day is what a failed load looks like: no spread excuses it.
    empty = [i for i in thin if totals[i] == 0 and expected[i] >= MIN_EXPECTED_PER_DAY]
    bad = [i for i in thin if lows[i] is None or smooth[i] < lows[i] or i in empty]
    low = lows[span[-1]]
    full = blocks.full
    median = float(np.median(totals[full])) if full.any() else 0.0
    rule = _rule([bool(weekly[i]) for i in judged], "days")
    if not judged:
        rule = "no day judged: no other full day to compare with"
    details: dict[str, Any] = {
        "median_day": median,
        "days": {_iso(blocks.starts[i]): int(totals[i]) for i in span},
        "usual": {_iso(blocks.starts[i]): round(float(expected[i]), 1) for i in judged},
        "rule": rule,
        "ordinary_low": None if low is None else round(low, 4),
        "history_days": int(blocks.history.sum()),
        "not_judged": [_iso(blocks.starts[i]) for i in span if blocks.covered[i] <= 0],
    }
    not_judged = len(details["not_judged"])
    young = (
        f"; {not_judged} day(s) before the log's first event {_iso(first)} not judged"
        if not_judged
        else ""
    )
    if not bad:
        excused = lows[thin[0]] if thin else None
        spread = (
            f"; {len(thin)} day(s) below it are within this log's ordinary spread "
            f"({_spread(excused, 'days')})"
            if excused is not None
            else ""
        )
        return GateResult(
            "daily_completeness",
            True,
            f"every day holds >= {cfg.min_day_fraction:.0%} of its usual count ({rule}; "
            f"the median day has {median:.0f})" + spread + young,
            details,
        )
    worst = ", ".join(
        f"{_iso(blocks.starts[i])} has {int(totals[i])} events, usually {expected[i]:.0f}"
        for i in bad[:3]
    )
    first_low = lows[bad[0]]
    if bad[0] in empty:
        below = ", and a day with no events is never ordinary"
    elif first_low is not None:
        below = (
            f", and below this log's ordinary spread ({_spread(first_low, 'days')})"
        )
    else:
        below = ""
    return GateResult(
        "daily_completeness",
        False,
        f"incomplete day(s): {worst}; the median day has {median:.0f} "
        f"(need >= {cfg.min_day_fraction:.0%} of the usual count, {rule}{below}): "
        "a half-loaded day?",
        details,
    )


def _hourly_gate(blocks: seasonal.Blocks, cfg: BaseModelConfig) -> GateResult:
    """Each judged hour against the same hour of the same day of the week (enough weeks of
    history), else the same hour of the other full days (one is enough); judged where it
    usually holds ``MIN_EXPECTED_PER_HOUR`` events."""
    counts = blocks.counts
    expected, weekly = seasonal.usual(counts, blocks.full)
    live = blocks.slot_live & blocks.judged[:, None]
    # No other full day (a log of a day or so): no usual for an hour, so none is judged (the
    # median hour would call every night thin).
    usual = np.where(np.isfinite(expected), expected, 0.0)
    ratio = _ratio(counts, usual)
    smooth = seasonal.smoothed(counts, usual)
    known = usual >= MIN_EXPECTED_PER_HOUR
    judged = live & known
    thin = judged & (ratio < cfg.min_hour_fraction)
    index = np.arange(counts.shape[0])
    lows = np.full(counts.shape[0], np.inf)  # inf: the spread is unknown, the fraction decides
    for b in np.flatnonzero(blocks.judged):
        others = (blocks.full & (index != b))[:, None] & known
        found = seasonal.ordinary_low(smooth[others], seasonal.MIN_SPREAD_HOURS)
        lows[b] = np.inf if found is None else found
    bad = np.argwhere(thin & (smooth < lows[:, None]))
    newest = float(lows[np.flatnonzero(blocks.judged)[-1]])
    low = None if not np.isfinite(newest) else newest
    rule = _rule([bool(weekly[i]) for i in np.flatnonzero(blocks.judged)], "hours")
    if not np.isfinite(expected[live]).any():
        rule = "no other full day to compare an hour with"
    hours = int(blocks.judged.sum()) * 24
    details: dict[str, Any] = {
        "hours": hours,
        "judged_hours": int(judged.sum()),
        "thin_hours": len(bad),
        "rule": rule,
        "ordinary_low": None if low is None else round(low, 4),
    }
    if bad.size == 0:
        excused = float(lows[np.argwhere(thin)[0][0]]) if thin.any() else None
        spread = (
            f"; {int(thin.sum())} hour(s) below it are within this log's ordinary spread "
            f"({_spread(excused, 'hours')})"
            if excused is not None
            else ""
        )
        return GateResult(
            "hourly_completeness",
            True,
            f"no hour below {cfg.min_hour_fraction:.0%} of its usual count "
            f"({int(judged.sum())} of {hours} hours judged; {rule})" + spread,
            details,
        )

    def at(b: int, h: int) -> np.datetime64:
        return blocks.starts[b] + np.timedelta64(int(h), "h")

    named = ", ".join(
        f"{_iso(at(b, h))} had {int(counts[b, h])} events, usually {usual[b, h]:.0f}"
        for b, h in bad[:3]
    )
    more = f" (+{len(bad) - 3} more)" if len(bad) > 3 else ""
    details["first_thin_hours"] = [_iso(at(b, h)) for b, h in bad[:10]]
    below = " and below this log's ordinary spread" if low is not None else ""
    return GateResult(
        "hourly_completeness",
        False,
        f"thin hour(s): {named}{more} (need >= {cfg.min_hour_fraction:.0%} of usual, "
        f"{rule}{below})",
        details,
    )


def _ratio(counts: np.ndarray, expected: np.ndarray) -> np.ndarray:
    """count / usual, NaN where nothing is usual (no reference, or usually empty)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio: np.ndarray = np.where(expected > 0, counts / expected, np.nan)
    return ratio


def _spread(low: float, unit: str) -> str:
    """The log's ordinary low, in words."""
    return f"its other {unit} reach down to {low:.1%} of usual"


def _rule(by_weekday: list[bool], unit: str) -> str:
    """Which reference judged: the same day of the week, every other day, or both."""
    if by_weekday and all(by_weekday):
        return "same day of the week" if unit == "days" else "same hour of the same weekday"
    other = "median of the other days" if unit == "days" else "same hour of any day"
    if any(by_weekday):
        return f"same day of the week where the history allows, else {other}"
    return other


def evaluation_gate(
    candidate_p: np.ndarray,
    reference_p: np.ndarray,
    labels: np.ndarray,
    clusters: Sequence[str] | np.ndarray,
    cfg: BaseModelConfig,
    reference: str,
    min_gain: float,
) -> GateResult:
    """Relative log-loss gain of the candidate over ``reference`` with a bootstrap interval.

    gain = (L_ref - L_cand) / L_ref over the validation day; the interval resamples
    ``clusters`` (user ids) with replacement ``cfg.bootstrap_samples`` times. Passes when the
    interval's lower bound >= ``min_gain``.
    """
    cand = log_losses(labels, candidate_p)
    ref = log_losses(labels, reference_p)
    _, cluster_idx = np.unique(np.asarray(clusters, dtype=object).astype(str), return_inverse=True)
    k = int(cluster_idx.max()) + 1 if cluster_idx.size else 0
    sum_c = np.bincount(cluster_idx, weights=cand, minlength=k)
    sum_r = np.bincount(cluster_idx, weights=ref, minlength=k)
    point = float((sum_r.sum() - sum_c.sum()) / max(sum_r.sum(), EPS))
    rng = np.random.default_rng(cfg.seed + 104729)
    gains = np.empty(cfg.bootstrap_samples)
    chunk = max(1, 4_000_000 // max(k, 1))
    for s in range(0, cfg.bootstrap_samples, chunk):
        b = min(chunk, cfg.bootstrap_samples - s)
        pick = rng.integers(0, k, size=(b, k))
        r, c = sum_r[pick].sum(axis=1), sum_c[pick].sum(axis=1)
        gains[s : s + b] = (r - c) / np.maximum(r, EPS)
    alpha = (1 - cfg.confidence) / 2
    low, high = (float(q) for q in np.quantile(gains, [alpha, 1 - alpha]))
    passed = low >= min_gain
    details = {
        "reference": reference,
        "metric": "relative log-loss gain",
        "gain": round(point, 6),
        "ci_low": round(low, 6),
        "ci_high": round(high, 6),
        "confidence": cfg.confidence,
        "threshold": min_gain,
        "bootstrap_samples": cfg.bootstrap_samples,
        "clusters": k,
        "rows": int(labels.size),
        "candidate_logloss": round(float(cand.mean()), 6) if cand.size else None,
        "reference_logloss": round(float(ref.mean()), 6) if ref.size else None,
        "candidate_auc": _round(nan_to_none(auc(labels, candidate_p))),
        "reference_auc": _round(nan_to_none(auc(labels, reference_p))),
    }
    verdict = "clears" if passed else "does not clear"
    reason = (
        f"gain over {reference} {point:+.4f} ({cfg.confidence:.0%} CI {low:+.4f} .. {high:+.4f}); "
        f"lower bound {verdict} the threshold {min_gain:+.4f}"
    )
    return GateResult("offline_evaluation", passed, reason, details)


def summarize(results: Sequence[GateResult]) -> dict[str, Any]:
    """Gate results keyed by name, as the registry stores them."""
    return {r.name: r.to_dict() for r in results}


def _iso(t: np.datetime64) -> str:
    return np.datetime_as_string(t, unit="s") + "Z"


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 6)
