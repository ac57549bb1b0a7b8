"""Completeness gates that know seasonality: a quiet night or a weekend is the log's usual
rhythm, a half-loaded latest day or an hour that lost most of its events is a loading failure.

Only event times matter to these gates, so the logs here are timestamps: a steady stream
with a daily cycle (nights at a tenth of the evening peak) and a weekly one (weekends at
40% of a weekday), drawn as a Poisson process per hour.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from base_model.config import BaseModelConfig
from base_model.data import windows_for
from base_model.gates import GateResult, check_data

CFG = BaseModelConfig()  # the default gates: a day needs 50% of usual, an hour 25%
START = datetime(2026, 1, 5, tzinfo=UTC)  # a Monday
# Events per hour at each hour of the day, on a weekday: quiet nights, an evening peak.
DAY_SHAPE = np.array([12, 8, 6, 5, 5, 8, 20, 40, 60, 70, 70, 70,
                      75, 75, 70, 70, 75, 85, 100, 110, 100, 80, 50, 25], dtype=float)
WEEKEND = 0.4


def cyclic_log(weeks: int = 6, seed: int = 0) -> np.ndarray:
    """Event times (datetime64[us]) of ``weeks`` weeks from Monday ``START``."""
    rng = np.random.default_rng(seed)
    hours = np.arange(weeks * 7 * 24)
    weekend = (hours // 24) % 7 >= 5
    rate = DAY_SHAPE[hours % 24] * np.where(weekend, WEEKEND, 1.0)
    counts = rng.poisson(rate)
    hour_of = np.repeat(hours, counts)
    seconds = hour_of * 3600.0 + rng.random(hour_of.size) * 3600.0
    t0 = np.datetime64(START.replace(tzinfo=None), "us")
    return np.sort(t0 + (seconds * 1e6).astype("timedelta64[us]"))


def end_of(ts: np.ndarray) -> datetime:
    """The training time right after the log's last day."""
    last = ts.max().astype("datetime64[D]") + np.timedelta64(1, "D")
    return datetime.fromisoformat(str(last)).replace(tzinfo=UTC)


def gates(ts: np.ndarray, as_of: datetime, cfg: BaseModelConfig = CFG) -> dict[str, GateResult]:
    return {r.name: r for r in check_data(ts, windows_for(as_of, cfg.train_days), as_of, cfg)}


def without(ts: np.ndarray, start: str, end: str, keep_every: int = 0) -> np.ndarray:
    """``ts`` less its events in ``[start, end)`` (keeping one in ``keep_every`` if > 0)."""
    inside = (ts >= np.datetime64(start, "us")) & (ts < np.datetime64(end, "us"))
    if keep_every:
        inside &= np.arange(ts.size) % keep_every != 0
    return ts[~inside]


def day_counts(ts: np.ndarray) -> dict[str, int]:
    days, counts = np.unique(ts.astype("datetime64[D]"), return_counts=True)
    return {str(d): int(c) for d, c in zip(days, counts)}


@pytest.fixture(scope="module")
def log() -> np.ndarray:
    return cyclic_log()


def test_a_log_with_a_daily_and_a_weekly_cycle_passes_every_gate(log: np.ndarray) -> None:
    as_of = end_of(log)  # Monday 2026-02-16: the window ends with a full weekend
    counts = day_counts(log)
    median_day = float(np.median(list(counts.values())))
    # What a single overall median would read as loading failures: the weekend days hold
    # less than half the median day, the night hours less than a quarter of the median hour.
    assert counts["2026-02-14"] < 0.5 * median_day and counts["2026-02-15"] < 0.5 * median_day
    assert DAY_SHAPE[2:5].max() < 0.25 * np.median(DAY_SHAPE)
    results = gates(log, as_of)
    assert {n: r.passed for n, r in results.items()} == {
        "rows": True, "freshness": True, "daily_completeness": True, "hourly_completeness": True,
    }, {n: r.reason for n, r in results.items()}
    daily, hourly = results["daily_completeness"], results["hourly_completeness"]
    assert daily.details["rule"] == "same day of the week"
    assert "(same day of the week;" in daily.reason
    assert hourly.details["rule"] == "same hour of the same weekday"
    # The weekend is judged against weekends: usually ~40% of a weekday.
    usual = daily.details["usual"]
    assert usual["2026-02-14T00:00:00Z"] < 0.5 * usual["2026-02-12T00:00:00Z"]


def test_a_half_loaded_latest_day_still_blocks(log: np.ndarray) -> None:
    as_of = end_of(log)
    half = without(log, "2026-02-15T12:00", "2026-02-16T00:00")  # Sunday stops at noon
    results = gates(half, as_of)
    daily, hourly = results["daily_completeness"], results["hourly_completeness"]
    assert not daily.passed and not hourly.passed
    assert daily.reason.startswith("incomplete day(s): 2026-02-15T00:00:00Z has ")
    assert "same day of the week" in daily.reason and daily.reason.endswith("a half-loaded day?")
    assert list(daily.details["days"])[-1] == "2026-02-15T00:00:00Z"
    assert hourly.details["first_thin_hours"][0] == "2026-02-15T12:00:00Z"
    # A weekday stopping at noon blocks too (the last day of a window ending on Friday).
    friday = datetime(2026, 2, 14, tzinfo=UTC)
    cut = without(log, "2026-02-13T12:00", "2026-02-14T00:00")
    assert not gates(cut, friday)["daily_completeness"].passed


def test_an_hour_that_lost_most_of_its_events_blocks_and_is_named(log: np.ndarray) -> None:
    as_of = end_of(log)
    thin = without(log, "2026-02-11T18:00", "2026-02-11T19:00", keep_every=10)  # ~10% left
    results = gates(thin, as_of)
    hourly = results["hourly_completeness"]
    assert not hourly.passed
    assert hourly.reason.startswith("thin hour(s): 2026-02-11T18:00:00Z had ")
    assert hourly.details["first_thin_hours"] == ["2026-02-11T18:00:00Z"]
    assert results["daily_completeness"].passed  # one hour is not a half-loaded day


def test_with_under_four_weeks_of_history_the_other_days_judge_and_the_reason_says_so(
    log: np.ndarray,
) -> None:
    """The honest fallback: with no three other Sundays to compare with, a Sunday is judged
    against the median of the other days, and a deep weekly cycle reads as missing data."""
    as_of = end_of(log)
    short = log[log >= np.datetime64("2026-02-07T00:00", "us")]  # 9 days: one weekend in the window
    daily = gates(short, as_of)["daily_completeness"]
    assert daily.details["rule"] == "median of the other days"
    # The quietest weekend day (Sunday 8th) is below half the median day, and below every
    # other day of the window relative to its usual count: read as thin.
    assert not daily.passed
    assert daily.reason.startswith("incomplete day(s): 2026-02-08T00:00:00Z has ")
    assert "(need >= 50% of the usual count, median of the other days" in daily.reason
    relaxed = gates(short, as_of, CFG.replace(min_day_fraction=0.3))["daily_completeness"]
    assert relaxed.passed


def test_a_bursty_log_passes_its_quiet_days_but_not_an_empty_one() -> None:
    """Day volumes that swing tenfold (a ratings log: a few users rate in sessions): a day at
    30% of its usual count is within the log's own spread; a day with nothing is not."""
    rng = np.random.default_rng(3)
    days = 8 * 7
    volume = np.exp(rng.normal(np.log(300), 0.9, days)).astype(int)
    # Quiet: 30% of the median of its weekday's other days (thin by the 50% rule), inside
    # the judged week; far quieter days than that are ordinary in this log.
    volume[-3] = int(0.3 * np.median(volume[-3 - 7 * np.arange(1, 8)]))
    day_of = np.repeat(np.arange(days), volume)
    seconds = day_of * 86400.0 + rng.random(day_of.size) * 86400.0
    t0 = np.datetime64(START.replace(tzinfo=None), "us")
    ts = np.sort(t0 + (seconds * 1e6).astype("timedelta64[us]"))
    as_of = START + timedelta(days=days)
    cfg = CFG.replace(min_hour_fraction=0.0, max_staleness_hours=48.0)
    daily = gates(ts, as_of, cfg)["daily_completeness"]
    assert daily.passed, daily.reason
    assert "within this log's ordinary spread" in daily.reason
    empty = without(ts, str(np.datetime64(START.replace(tzinfo=None)) + np.timedelta64(days - 4, "D")),
                    str(np.datetime64(START.replace(tzinfo=None)) + np.timedelta64(days - 3, "D")))
    blocked = gates(empty, as_of, cfg)["daily_completeness"]
    assert not blocked.passed
    assert "has 0 events" in blocked.reason and "a day with no events is never ordinary" in blocked.reason


def test_the_history_before_the_window_is_the_reference(log: np.ndarray) -> None:
    """Only the newest days are judged: an old hole is history (judged when it was new)."""
    as_of = end_of(log)
    holed = without(log, "2026-01-20T00:00", "2026-01-20T18:00")  # four weeks back
    results = gates(holed, as_of)
    assert results["daily_completeness"].passed and results["hourly_completeness"].passed
    assert list(results["daily_completeness"].details["days"])[0] == "2026-02-08T00:00:00Z"


def _times(table) -> np.ndarray:  # noqa: ANN001
    return table.column("ts").cast("timestamp[us]").to_numpy().astype("datetime64[us]")


def test_real_click_stream_night_hours_pass_and_ml100k_demo_fit_passes(shared_data) -> None:  # noqa: ANN001
    """The shared real logs (skipped without them): open-bandit, an e-commerce click stream
    whose night hours hold a fifth of its day hours, passes at the backtest's first cut-off
    (2 days of history); ml-100k's demo fit (8-day window, ~5 months of history before it)
    passes though its days swing from 36 to 2,000 ratings."""
    from feature_store.importers import import_dataset

    obd = _times(import_dataset("open-bandit", shared_data / "open-bandit"))
    hours = np.bincount((obd.astype("datetime64[h]").astype(np.int64)) % 24, minlength=24)
    assert hours[18:20].max() < 0.25 * np.median(hours)  # its nights: thin by one median
    cutoff = datetime(2019, 11, 26, tzinfo=UTC)
    first = gates(obd[obd < np.datetime64("2019-11-26", "us")], cutoff, CFG.replace(train_days=1))
    assert all(r.passed for r in first.values()), {n: r.reason for n, r in first.items()}

    ml = _times(import_dataset("ml-100k", shared_data / "ml-100k"))
    until = datetime(1998, 4, 17, tzinfo=UTC)  # serving.demo: 3 days before the 2 replayed
    demo = gates(ml[ml < np.datetime64("1998-04-17", "us")], until)
    assert all(r.passed for r in demo.values()), {n: r.reason for n, r in demo.items()}
    assert "within this log's ordinary spread" in demo["daily_completeness"].reason


def test_a_log_stamped_by_the_day_is_fresh_at_the_next_midnight(log: np.ndarray) -> None:
    """Review dates (every time 00:00) say which day an event happened on, not when: the
    newest one may be up to a day younger than its stamp, and the staleness limit says so."""
    days = log.astype("datetime64[D]").astype("datetime64[us]")
    as_of = end_of(log)  # 24 h after the newest stamp
    fresh = gates(days, as_of)["freshness"]
    assert fresh.passed and fresh.details["day_stamps"]
    assert "(limit 6 h, + 24 h: the log's times are days)" in fresh.reason
    stale = gates(days, as_of + timedelta(hours=7))["freshness"]
    assert not stale.passed and stale.reason.startswith("stale data: newest event 2026-02-15T00:00:00Z")
    assert not gates(log, as_of + timedelta(hours=7))["freshness"].details["day_stamps"]
