"""Computing the backtest's report: every number of ``report.json`` and the target's clauses,
each computed once (``serving.backtest.render`` writes it as JSON and markdown).

report.json (``schema_version`` 2; NaN is written as ``null``)::

    {
      "schema_version": 2,
      "created_at": "2026-11-27T10:00:00+00:00",
      "events_file": "events.parquet",
      "settings": {...},            # BacktestConfig.to_json(): cadences, window, seed, tiers
      "span": {"first_event", "last_event", "eval_start", "eval_end": ISO times,
               "events_total", "events_train_only", "events_evaluated": ints},
      "days": ["2024-01-03T00:00:00+00:00", ...],   # start of each evaluation day
      "policies": {                 # keys: static, base_only, hybrid, daily_retrain
        "<policy>": {
          "logloss": float, "auc": float,   # over every evaluated event
          "events": int,                    # evaluated events (the same for every policy)
          "train_seconds": float,           # wall compute: base fits' wall seconds (Ray
                                            #   Train start-up included) + online learning
          "base_train_seconds": float,      # the base fits' wall seconds
          "online_train_seconds": float,    # online learning (featurize feedback + FTRL)
          "compute_seconds": float,         # training compute: the fits' own training
                                            #   seconds + online learning (the target's)
          "base_compute_seconds": float,    # the fits' own training seconds
          "train_samples": int,             # base samples processed: rows x epochs run
          "online_examples": int,           # examples the online layer learned
          "fits": int,                      # base fits it depends on (shared fits counted)
          "base_versions": [str, ...],
          "daily": {"logloss": [...], "auc": [...], "events": [...]}   # one per day
        }, ...
      },
      "comparison": {
        "gap_closed": float,        # (ll_base_only - ll_hybrid) / (ll_base_only - ll_daily)
        "auc_gap_closed": float,    # (auc_hybrid - auc_base_only) / (auc_daily - auc_base_only)
        "compute_ratio": float,     # wall: train_seconds hybrid / daily_retrain
        "compute_ratio_training": float,  # compute_seconds hybrid / daily_retrain, all fits
        "compute_ratio_span": float,  # the same, less the fits every policy shares (trained
                                      #   before the evaluated span): the target's figure
        "samples_ratio": float,     # train_samples hybrid / daily_retrain (no clock)
        "compute_judged_on": "compute_ratio_span",
        "tenth_of_the_compute_wall": bool,  # the compute clause on the wall figure (shown,
                                            #   not part of "met")
        "hybrid_vs_base_only": {"logloss_delta": {"mean", "ci95_low", "ci95_high", "events",
                                                  "clusters"},   # user-clustered interval
                                "auc_delta": float,
                                "days_worse_beyond_noise": int,  # user-clustered, family-wise
                                                                 #   95% over the days (the target's)
                                "days_worse_per_day_95": int,    # user-clustered, each day's own 95%
                                "days_worse_per_event": int,     # per-event, each day's own 95%
                                "days_compared": int,
                                "noise_unit": "user" | "event"},
        "target": {"hybrid_beats_base_only_logloss": bool, "hybrid_beats_base_only_auc": bool,
                   "closes_half_the_gap": bool, "tenth_of_the_compute": bool,
                   "never_worse_than_base_only": bool, "met": bool}
      },
      "fits": [{"policy", "cutoff", "train_rows", "train_max_ts", "seconds" (wall),
                "fit_seconds" (training steps), "samples", "epochs", "version", "parent",
                "gate"}, ...],   # every base fit once; gate = approved/rejected/registered
      "blocked_fits": [{"policy", "cutoff", "reason"}, ...],  # data gates said no: kept the old base
      "wall_seconds": float
    }

Target (issue 8): hybrid better than base_only in log loss and AUC, closing at least half of
the gap to daily_retrain at a tenth of its compute or less, never worse than base_only beyond
noise (no day whose paired interval of the log-loss difference lies above zero). The
interval is clustered by user when user ids are given (``metrics.paired_delta``): one user's
events move together (a session of ratings), so a day that is one user's session is not
evidence on its own. "Never worse" is one claim about every day at once, so the day
intervals hold jointly at 95% (Bonferroni over the days compared, ``metrics.familywise_level``):
with each day's own 95% interval, two identical policies would show a "worse" day in about
half of all 26-day backtests. Each day's own 95% count and the per-event count are reported
next to it.

Compute. Two figures, both kept:

- **wall** (``train_seconds``, ``compute_ratio``): what each ``train_base_model`` call took
  here, end to end. Each Ray Train ``TorchTrainer.fit`` pays a fixed start-up (controller,
  worker group, dataset coordinator, checkpoint: ~12-15 s on the 2-core development machine)
  whatever the data, so on small logs this ratio is about (fits of ``base_only``) / (fits of
  ``daily_retrain``) whatever the work.
- **training** (``compute_seconds``, ``compute_ratio_training``): the fits' own training
  seconds as the trainer reports them (timed steps: rows x epochs actually run, early
  stopping included) plus the online layer's learning. ``samples_ratio`` is the same work
  counted without a clock (identical run to run; it leaves out the online layer, whose
  learning is measured in seconds only).

- **training, in span** (``compute_ratio_span``): the training figure less the fits that were
  trained before the evaluated span began (the warm-up fit, one model shared by ``static``,
  ``base_only``/``hybrid`` and ``daily_retrain``). That fit is paid once by every policy
  before the comparison starts, so counting it in both numerator and denominator pulls the
  ratio towards 1 by an amount that depends only on how long the evaluated span is; without
  it the ratio is what each policy spends per week of operation to stay fresh, the figure a
  team running it pays, and the same whatever the span's length.

The compute clause of the target is judged on the **training, in span** figure: it is the
work each policy chooses to do, it scales with the data, and it does not depend on how a
deployment starts its jobs or how long the backtest ran. The all-fits training ratio is
reported next to it. That choice is not free: a persistent production cluster also pays a
per-job start-up (a worker group and its data pipeline per fit, seconds on a warm cluster,
more when nodes must be added), so for logs as small as these the wall ratio is closer to
the real bill. The report shows both, and the wall check beside the judged one.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np

from serving.backtest import POLICIES
from serving.backtest.metrics import (
    auc,
    compute_ratio,
    daily_series,
    days_worse,
    gap_closed,
    log_loss,
    paired_delta,
)
from serving.backtest.policies import PolicyRun

__all__ = [
    "COMPUTE_JUDGED_ON",
    "COMPUTE_TARGET",
    "GAP_TARGET",
    "SCHEMA_VERSION",
    "build_report",
    "clean",
    "refresh_comparison",
    "span_compute_seconds",
    "target_clauses",
]

SCHEMA_VERSION = 2
GAP_TARGET = 0.5
COMPUTE_TARGET = 0.1
# Which compute ratio the target's "a tenth of the compute" clause reads (see the docstring).
COMPUTE_JUDGED_ON = "compute_ratio_span"


def clean(value: Any) -> Any:
    """JSON-safe: NaN/inf -> None, numpy scalars -> Python, datetimes -> ISO."""
    return _clean(value)


def _clean(value: Any) -> Any:
    """JSON-safe: NaN/inf -> None, numpy scalars -> Python, datetimes -> ISO."""
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, datetime):
        return value.isoformat()
    return value


def build_report(
    *,
    labels: np.ndarray,
    day_index: np.ndarray,
    days: Sequence[datetime],
    runs: Mapping[str, PolicyRun],
    events_file: str,
    settings: Mapping[str, Any],
    span: Mapping[str, Any],
    wall_seconds: float,
    blocked_fits: Sequence[Mapping[str, str]] = (),
    user_ids: np.ndarray | None = None,
) -> dict[str, Any]:
    """Compute every metric of the report from the policies' scores on the same events.

    ``user_ids`` (one per evaluated event) clusters the noise intervals by user.

    Raises:
        ValueError: a policy is missing, or its scores do not cover the evaluated events.
    """
    missing = [p for p in POLICIES if p not in runs]
    if missing:
        raise ValueError(f"no run for polic(ies) {', '.join(missing)}")
    y = np.asarray(labels, dtype=np.float64)
    for name, run in runs.items():
        if run.probs.shape != y.shape:
            raise ValueError(f"policy {name} scored {run.probs.size} events, expected {y.size}")
    n_days = len(days)
    policies: dict[str, Any] = {}
    for name in POLICIES:
        run = runs[name]
        lls, aucs, counts = daily_series(day_index, y, run.probs, n_days)
        policies[name] = {
            "logloss": log_loss(y, run.probs),
            "auc": auc(y, run.probs),
            "events": int(y.size),
            "train_seconds": run.train_seconds,
            "base_train_seconds": run.base_train_seconds,
            "online_train_seconds": run.online_seconds,
            "compute_seconds": run.compute_seconds,
            "base_compute_seconds": run.base_fit_seconds,
            "train_samples": run.train_samples,
            "online_examples": run.online_examples,
            "fits": len(run.fits),
            "base_versions": [f.version for f in run.fits],
            "daily": {"logloss": lls, "auc": aucs, "events": counts},
        }
    users = None if user_ids is None else np.asarray(user_ids)
    if users is not None and users.shape != y.shape:
        raise ValueError(f"user_ids has {users.size} values, expected {y.size}")
    fits = []
    seen: set[str] = set()
    for name in POLICIES:
        for fit in runs[name].fits:
            if fit.version in seen:
                continue
            seen.add(fit.version)
            fits.append(
                {
                    "policy": name,
                    "cutoff": fit.cutoff,
                    "train_rows": fit.train_rows,
                    "train_max_ts": fit.train_max_ts,
                    "seconds": fit.seconds,
                    "fit_seconds": fit.fit_seconds,
                    "samples": fit.samples,
                    "epochs": fit.epochs,
                    "version": fit.version,
                    "parent": fit.parent,
                    "gate": fit.status,
                }
            )
    comparison = _compare(
        y, np.asarray(day_index), n_days, runs, policies, users,
        fits=_clean(fits), eval_start=_clean(span.get("eval_start")),
    )
    report = {
        "schema_version": SCHEMA_VERSION,
        "created_at": datetime.now(UTC),
        "events_file": events_file,
        "settings": dict(settings),
        "span": dict(span),
        "days": list(days),
        "policies": policies,
        "comparison": comparison,
        "fits": fits,
        "blocked_fits": [dict(b) for b in blocked_fits],
        "wall_seconds": wall_seconds,
    }
    return _clean(report)


def _compare(
    y: np.ndarray,
    day_index: np.ndarray,
    n_days: int,
    runs: Mapping[str, PolicyRun],
    policies: Mapping[str, Any],
    users: np.ndarray | None = None,
    fits: Sequence[Mapping[str, Any]] = (),
    eval_start: str | None = None,
) -> dict[str, Any]:
    hyb, base = policies["hybrid"], policies["base_only"]
    a, b = runs["hybrid"].probs, runs["base_only"].probs
    delta = paired_delta(y, a, b, users)
    worse, compared = days_worse(y, a, b, day_index, n_days, users)
    worse_per_day, _ = days_worse(y, a, b, day_index, n_days, users, familywise=False)
    worse_per_event, _ = days_worse(y, a, b, day_index, n_days, None, familywise=False)
    derived = _aggregate_comparison(policies, fits, eval_start)
    versus = {
        "logloss_delta": delta.to_json(),
        "auc_delta": hyb["auc"] - base["auc"],
        "days_worse_beyond_noise": worse,
        "days_worse_per_day_95": worse_per_day,
        "days_worse_per_event": worse_per_event,
        "days_compared": compared,
        "noise_unit": "event" if users is None else "user",
    }
    target = target_clauses(policies, derived, versus)
    return {**derived, "hybrid_vs_base_only": versus, "target": target}


def _finite(value: Any) -> bool:
    return value is not None and math.isfinite(float(value))


def target_clauses(
    policies: Mapping[str, Any], comparison: Mapping[str, Any], versus: Mapping[str, Any]
) -> dict[str, bool]:
    """The target's clauses and ``met``, from the policies' overall numbers, the aggregate
    comparison (``gap_closed`` and the judged compute ratio) and ``hybrid_vs_base_only``.

    The one place they are decided: ``build_report`` and ``refresh_comparison`` both call it.
    Missing numbers (NaN, or ``None`` once written as JSON) meet no clause, except that an
    undefined noise interval does not count as a day worse.

    Examples
    --------
    >>> policies = {"hybrid": {"logloss": 0.50, "auc": 0.72}, "base_only": {"logloss": 0.52}}
    >>> comparison = {"gap_closed": 0.6, "compute_ratio_span": 0.08,
    ...               "compute_judged_on": "compute_ratio_span"}
    >>> versus = {"auc_delta": 0.01, "days_worse_beyond_noise": 0,
    ...           "logloss_delta": {"ci95_low": -0.03}}
    >>> target_clauses(policies, comparison, versus)["met"]
    True
    >>> target_clauses(policies, {**comparison, "gap_closed": None}, versus)["closes_half_the_gap"]
    False
    """
    hybrid, base = policies["hybrid"], policies["base_only"]
    gap, ratio = comparison["gap_closed"], comparison[comparison["compute_judged_on"]]
    auc_delta = versus["auc_delta"]
    low = versus["logloss_delta"]["ci95_low"]
    clauses = {
        "hybrid_beats_base_only_logloss": bool(
            _finite(hybrid["logloss"])
            and _finite(base["logloss"])
            and hybrid["logloss"] < base["logloss"]
        ),
        "hybrid_beats_base_only_auc": bool(_finite(auc_delta) and auc_delta > 0),
        "closes_half_the_gap": bool(_finite(gap) and gap >= GAP_TARGET),
        "tenth_of_the_compute": bool(_finite(ratio) and ratio <= COMPUTE_TARGET),
        "never_worse_than_base_only": bool(
            versus["days_worse_beyond_noise"] == 0 and not (_finite(low) and low > 0)
        ),
    }
    clauses["met"] = all(clauses.values())
    return clauses


def refresh_comparison(report: dict[str, Any]) -> dict[str, Any]:
    """Re-derive ``report``'s aggregate comparisons and target clauses in place (after a
    change of this module; the per-event numbers are kept); returns ``report``."""
    derived = _aggregate_comparison(
        report["policies"], report.get("fits", []), report.get("span", {}).get("eval_start")
    )
    comparison = report["comparison"]
    comparison.update(_clean(derived))
    comparison["target"] = target_clauses(
        report["policies"], comparison, comparison["hybrid_vs_base_only"]
    )
    return report


def _parse_time(value: Any) -> datetime:
    return value if isinstance(value, datetime) else datetime.fromisoformat(str(value))


def span_compute_seconds(
    policy: Mapping[str, Any], fits: Sequence[Mapping[str, Any]], eval_start: Any
) -> float:
    """A policy's training compute less its fits trained before the evaluated span (cut-off
    at or before ``eval_start``): those are shared by every policy and paid before the
    comparison starts. NaN without ``eval_start`` or a training figure.

    Examples
    --------
    >>> fits = [{"version": "a", "cutoff": "2026-01-08T00:00:00+00:00", "fit_seconds": 2.0},
    ...         {"version": "b", "cutoff": "2026-01-15T00:00:00+00:00", "fit_seconds": 3.0}]
    >>> span_compute_seconds({"compute_seconds": 5.5, "base_versions": ["a", "b"]}, fits,
    ...                      "2026-01-08T00:00:00+00:00")
    3.5
    """
    total = policy.get("compute_seconds")
    if total is None or eval_start is None:
        return math.nan
    start = _parse_time(eval_start)
    used = set(policy.get("base_versions", ()))
    shared = sum(
        float(f.get("fit_seconds") or 0.0)
        for f in fits
        if f["version"] in used and _parse_time(f["cutoff"]) <= start
    )
    return float(total) - shared


def _aggregate_comparison(
    policies: Mapping[str, Any],
    fits: Sequence[Mapping[str, Any]] = (),
    eval_start: Any = None,
) -> dict[str, Any]:
    """The comparisons that need only each policy's overall numbers (and the fit list)."""
    hyb, base, ceil = (policies[p] for p in ("hybrid", "base_only", "daily_retrain"))
    nan = math.nan

    def num(x: Any) -> float:
        return nan if x is None else float(x)

    return {
        "gap_closed": gap_closed(num(base["logloss"]), num(hyb["logloss"]), num(ceil["logloss"])),
        # The same share for AUC (higher is better): read it where log loss has no gap.
        "auc_gap_closed": gap_closed(-num(base["auc"]), -num(hyb["auc"]), -num(ceil["auc"])),
        "compute_ratio": compute_ratio(num(hyb["train_seconds"]), num(ceil["train_seconds"])),
        "compute_ratio_training": compute_ratio(
            num(hyb.get("compute_seconds")), num(ceil.get("compute_seconds"))
        ),
        "compute_ratio_span": compute_ratio(
            span_compute_seconds(hyb, fits, eval_start), span_compute_seconds(ceil, fits, eval_start)
        ),
        "samples_ratio": compute_ratio(num(hyb.get("train_samples")), num(ceil.get("train_samples"))),
        "compute_judged_on": COMPUTE_JUDGED_ON,
        "tenth_of_the_compute_wall": _within(
            compute_ratio(num(hyb["train_seconds"]), num(ceil["train_seconds"])), COMPUTE_TARGET
        ),
    }


def _within(ratio: float | None, limit: float) -> bool:
    return ratio is not None and math.isfinite(ratio) and ratio <= limit
