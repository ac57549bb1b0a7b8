"""Gates: data checks before training, and the offline evaluation before promotion.

Data gates block training (``DataGateError``): too few rows (in the training window, or on
the validation day), stale data, a day with far fewer events than the median day (a
half-loaded day), or an hour with far fewer events than the same hour usually has. Days and
hours before the data's first event are not judged: a log that starts inside the window is
young, not broken (the fit trains on what there is).

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

from base_model.config import BaseModelConfig
from base_model.data import TimeWindows
from protos.metrics import EPS, auc, log_losses, nan_to_none

logger = logging.getLogger(__name__)

__all__ = ["GateResult", "check_data", "evaluation_gate", "summarize"]

# An hour is judged only when it usually holds at least this many events: on sparse data a
# thin hour is noise, not a loading failure.
MIN_EXPECTED_PER_HOUR = 10.0


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
    return [
        _rows_gate(n_train, n_valid, windows, cfg),
        _freshness_gate(ts, as_of, cfg),
        _daily_gate(inside, start, end, first, cfg),
        _hourly_gate(inside, start, end, first, cfg),
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
    ok = age_h <= cfg.max_staleness_hours
    reason = (
        f"newest event {_iso(newest)} is {age_h:.1f} h old at {_iso(now)} "
        f"(limit {cfg.max_staleness_hours:g} h)"
    )
    return GateResult(
        "freshness",
        ok,
        reason if ok else f"stale data: {reason}",
        {"newest_event": _iso(newest), "age_hours": round(age_h, 3)},
    )


def _daily_gate(
    ts: np.ndarray,
    start: np.datetime64,
    end: np.datetime64,
    first: np.datetime64,
    cfg: BaseModelConfig,
) -> GateResult:
    days = int((end - start) // np.timedelta64(1, "D"))
    offsets = np.floor_divide(end - ts, np.timedelta64(1, "D")).astype(np.int64)  # 0: last day
    counts = np.bincount(offsets, minlength=days)[:days][::-1]  # oldest day first
    day_start = [end - np.timedelta64(days - i, "D") for i in range(days)]
    # Share of each day after the log's first event: 0 before it, partial on its day.
    day_s = 86400.0
    covered = np.asarray(
        [
            min(max((d + np.timedelta64(1, "D") - first) / np.timedelta64(1, "s") / day_s, 0), 1)
            for d in day_start
        ]
    )
    full = covered >= 1.0
    median = float(np.median(counts[full])) if full.any() else 0.0
    threshold = cfg.min_day_fraction * median * covered
    judged = covered > 0
    bad = [i for i in range(days) if judged[i] and counts[i] < threshold[i]]
    details = {
        "median_day": median,
        "days": {_iso(day_start[i]): int(c) for i, c in enumerate(counts)},
        "not_judged": [_iso(day_start[i]) for i in range(days) if not judged[i]],
    }
    young = (
        f"; {int((~judged).sum())} day(s) before the log's first event {_iso(first)} not judged"
        if not judged.all()
        else ""
    )
    if not bad:
        return GateResult(
            "daily_completeness",
            True,
            f"every day holds >= {cfg.min_day_fraction:.0%} of the median day ({median:.0f})"
            + young,
            details,
        )
    worst = ", ".join(f"{_iso(day_start[i])} has {counts[i]} events" for i in bad[:3])
    return GateResult(
        "daily_completeness",
        False,
        f"incomplete day(s): {worst}; the median day has {median:.0f} "
        f"(need >= {cfg.min_day_fraction:.0%}): a half-loaded day?",
        details,
    )


def _hourly_gate(
    ts: np.ndarray,
    start: np.datetime64,
    end: np.datetime64,
    first: np.datetime64,
    cfg: BaseModelConfig,
) -> GateResult:
    hours = int((end - start) // np.timedelta64(1, "h"))
    index = ((ts - start) // np.timedelta64(1, "h")).astype(np.int64)
    counts = np.bincount(index, minlength=hours)[:hours].astype(np.float64)
    start_hour = int((start - start.astype("datetime64[D]")) // np.timedelta64(1, "h"))
    hour_of_day = (np.arange(hours) + start_hour) % 24
    # Hours that start at or after the log's first event (earlier ones: no history yet).
    live = start + np.arange(hours) * np.timedelta64(1, "h") >= first
    expected = np.zeros(hours)
    if live.sum() >= 72:  # >= 3 samples of each hour of the day: compare like with like
        for h in range(24):
            same = (hour_of_day == h) & live
            expected[hour_of_day == h] = np.median(counts[same]) if same.any() else 0.0
    elif live.any():
        expected[:] = np.median(counts[live])
    judged = live & (expected >= MIN_EXPECTED_PER_HOUR)
    bad = np.flatnonzero(judged & (counts < cfg.min_hour_fraction * expected))
    details: dict[str, Any] = {
        "hours": hours,
        "judged_hours": int(judged.sum()),
        "thin_hours": len(bad),
    }
    if bad.size == 0:
        return GateResult(
            "hourly_completeness",
            True,
            f"no hour below {cfg.min_hour_fraction:.0%} of its usual count "
            f"({int(judged.sum())} of {hours} hours judged)",
            details,
        )
    thin = ", ".join(
        f"{_iso(start + np.timedelta64(int(h), 'h'))} had {int(counts[h])} events, "
        f"usually {expected[h]:.0f}"
        for h in bad[:3]
    )
    more = f" (+{len(bad) - 3} more)" if len(bad) > 3 else ""
    details["first_thin_hours"] = [_iso(start + np.timedelta64(int(h), "h")) for h in bad[:10]]
    return GateResult(
        "hourly_completeness",
        False,
        f"thin hour(s): {thin}{more} (need >= {cfg.min_hour_fraction:.0%} of usual)",
        details,
    )


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
