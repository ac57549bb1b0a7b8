"""The base tier's data gates on the shared real logs, over the fits a backtest and the demo
would gate (pure numpy: no Ray, no training). Issue 18: "gates that know seasonality".

For each dataset: the backtest's calendar (``serving.backtest.timeline``) with the flags its
committed report used, less every ``--set`` (the default gates), and, where the log is long
enough, the CLI defaults; each gated fit (base_only's warm fits, daily_retrain's, the
daily_fresh calibration fits) is judged by ``base_model.gates.check_data`` on the rows
before its cut-off, with the backtest's all-history window. The demo's one fit is judged on
its 8-day window, with the weeks before it as history (what ``serving.pipeline`` passes).

    python -c "import runpy; runpy.run_path('bench/gates_real.py', run_name='__main__')"

(run from the checkout whose gates are judged; ``python bench/gates_real.py`` would import
``bench/serving.py`` as ``serving``). Prints, per run, the fits blocked and the gates that
blocked them, with the first blocked fit's reasons. ~10 s.

2026-12-02, default gates (no --set), fits blocked / gated fits, first fit:

| run | before (one median) | after (base_model.seasonal) |
|---|---|---|
| ml-100k, CLI defaults (warmup 14d) | 231/231, first blocked (daily 231, hourly 116) | 43/231, first passes (daily 33: days of 0-4 ratings where ~300 are usual; freshness 15; rows 3) |
| ml-100k, --warmup 189d | 31/31, first blocked (daily 31) | 5/31, first passes (freshness 5: newest rating > 6 h old) |
| open-bandit, --warmup 2d --base-every 2d | 4/9, first blocked (night hours) | 0/9 |
| ml-latest-small, report flags | 27/27, first blocked (daily 27) | 10/27, first passes (rows 6: empty validation days; freshness 7; daily 2: empty days) |
| amazon-magazine, report flags | 31/31, first blocked (freshness 31: day stamps) | 0/31 |
| ml-100k demo fit | blocked (a day of 36 vs 203; hours) | passes (with the weeks before the window) |
| open-bandit / ml-latest-small / amazon demo fit | blocked (rows, + others) | blocked by rows only (0 / 355 / 4 rows in the 8-day window), + ml-latest-small freshness |
"""

from __future__ import annotations

import argparse
import math
import os
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

from base_model.config import BaseModelConfig
from base_model.data import windows_for
from base_model.gates import check_data
from feature_store.importers import import_dataset
from serving.backtest.policies import retrain_times
from serving.backtest.timeline import make_timeline

D = timedelta(days=1)
# (dataset, label, warmup, base_every, daily_every, start, end): the committed reports' flags.
RUNS = [
    ("ml-100k", "defaults", 14 * D, 7 * D, D, None, None),
    ("ml-100k", "report flags", 189 * D, 7 * D, D, None, None),
    ("open-bandit", "report flags", 2 * D, 2 * D, D, None, None),
    ("ml-latest-small", "report flags", 366 * D, 180 * D, 30 * D, datetime(2016, 1, 1, tzinfo=UTC), None),
    ("amazon-magazine", "report flags", 365 * D, 180 * D, 30 * D,
     datetime(2013, 1, 1, tzinfo=UTC), datetime(2016, 1, 1, tzinfo=UTC)),
]


def _judge(ts: np.ndarray, cutoff: datetime, train_days: int, cfg: BaseModelConfig) -> list:
    end = np.datetime64(cutoff.replace(tzinfo=None), "us")
    rows = ts[ts < end]
    windows = windows_for(cutoff, train_days)
    return [r for r in check_data(rows, windows, cutoff, cfg) if not r.passed]


def backtest_fits(ts: np.ndarray, warmup: timedelta, base_every: timedelta,
                  daily_every: timedelta) -> list[tuple[str, datetime, int]]:
    """(policy, cut-off, train_days) of every gated fit, as serving.backtest.replay plans them."""
    first = datetime.fromtimestamp(ts[0].astype("int64") / 1e6, tz=UTC)
    last = datetime.fromtimestamp(ts[-1].astype("int64") / 1e6, tz=UTC)
    t = make_timeline(first, last, warmup)
    first_us = int(ts[0].astype("int64"))

    def days(cutoff: datetime) -> int:  # TierContext.fit_base: all history, the last day validates
        return max(1, int(math.ceil((cutoff.timestamp() * 1e6 - first_us) / 86400e6)) - 1)

    base = retrain_times(t.eval_start, t.eval_end, base_every)
    daily = retrain_times(t.eval_start, t.eval_end, daily_every)
    fits = [("shared", base[0], days(base[0]))]
    fits += [("base_only", c, days(c)) for c in base[1:]]
    fits += [("daily_retrain", c, days(c)) for c in daily[1:]]
    if len(daily) > 1:  # the ceilings' validated calibration fits
        fits.append(("daily_fresh calibration", daily[1], days(daily[1])))
        new = max(1, int(math.ceil((daily[1] - daily[0]).total_seconds() / 86400)))
        fits.append(("daily_fresh_new calibration", daily[1], new))
    return fits


def demo_fit(ts: np.ndarray, cfg: BaseModelConfig, with_history: bool) -> list:
    """serving.demo's first base: trained until 3 days before the 2 replayed days."""
    last = datetime.fromtimestamp(ts[-1].astype("int64") / 1e6, tz=UTC)
    replay_start = datetime(last.year, last.month, last.day, tzinfo=UTC) - timedelta(days=2)
    until = replay_start - timedelta(days=3)
    window_start = until - timedelta(days=cfg.train_days + 1)
    lo = np.datetime64((window_start if not with_history else until - timedelta(weeks=12))
                       .replace(tzinfo=None), "us")
    return _judge(ts[ts >= lo], until, cfg.train_days, cfg)


def summary(blocked: list[list]) -> str:
    gates = Counter(r.name for fit in blocked for r in fit)
    return ", ".join(f"{name} {n}" for name, n in sorted(gates.items())) or "-"


def main() -> None:
    default = os.environ.get("FRESHRANK_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")
    parser = argparse.ArgumentParser()
    parser.add_argument("--shared", type=Path, default=Path(default))
    args = parser.parse_args()
    cfg = BaseModelConfig()
    cache: dict[str, np.ndarray] = {}
    for name, label, warmup, base_every, daily_every, start, end in RUNS:
        if name not in cache:
            table = import_dataset(name, args.shared / name)
            cache[name] = table.column("ts").cast("timestamp[us]").to_numpy().astype("datetime64[us]")
        ts = cache[name]
        if start is not None:
            ts = ts[ts >= np.datetime64(start.replace(tzinfo=None), "us")]
        if end is not None:
            ts = ts[ts < np.datetime64(end.replace(tzinfo=None), "us")]
        fits = backtest_fits(ts, warmup, base_every, daily_every)
        results = [_judge(ts, c, d, cfg) for _, c, d in fits]
        blocked = [r for r in results if r]
        print(f"{name} backtest ({label}): {len(blocked)}/{len(fits)} fits blocked "
              f"[{summary(blocked)}]; first fit {'blocked' if results[0] else 'passes'}")
        for (policy, cutoff, _), r in zip(fits, results):
            if r:
                print(f"    e.g. {policy} {cutoff:%Y-%m-%d}: " + " | ".join(f"{g.name}: {g.reason[:220]}" for g in r))
                break
    for name in ("ml-100k", "open-bandit", "ml-latest-small", "amazon-magazine"):
        ts = cache[name]
        for with_history in (False, True):
            r = demo_fit(ts, cfg, with_history)
            print(f"{name} demo ({'12 weeks of history' if with_history else 'window only'}): "
                  + ("passes" if not r else "blocked: " + " | ".join(f"{g.name}: {g.reason[:200]}" for g in r)))


if __name__ == "__main__":
    main()
