"""``report.json`` and ``report.md``: what the backtest measured, for machines and for people.

report.json (``schema_version`` 1; NaN is written as ``null``)::

    {
      "schema_version": 1,
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
          "train_seconds": float,           # compute: base fits + online learning
          "base_train_seconds": float, "online_train_seconds": float,
          "fits": int,                      # base fits it depends on (shared fits counted)
          "base_versions": [str, ...],
          "daily": {"logloss": [...], "auc": [...], "events": [...]}   # one per day
        }, ...
      },
      "comparison": {
        "gap_closed": float,        # (ll_base_only - ll_hybrid) / (ll_base_only - ll_daily)
        "auc_gap_closed": float,    # (auc_hybrid - auc_base_only) / (auc_daily - auc_base_only)
        "compute_ratio": float,     # train_seconds hybrid / daily_retrain
        "hybrid_vs_base_only": {"logloss_delta": {"mean", "ci95_low", "ci95_high", "events"},
                                "auc_delta": float,
                                "days_worse_beyond_noise": int, "days_compared": int},
        "target": {"hybrid_beats_base_only_logloss": bool, "hybrid_beats_base_only_auc": bool,
                   "closes_half_the_gap": bool, "tenth_of_the_compute": bool,
                   "never_worse_than_base_only": bool, "met": bool}
      },
      "fits": [{"policy", "cutoff", "train_rows", "train_max_ts", "seconds", "version",
                "parent", "gate"}, ...],   # every base fit once; gate = approved/rejected
      "blocked_fits": [{"policy", "cutoff", "reason"}, ...],  # data gates said no: kept the old base
      "wall_seconds": float
    }

Target (issue 8): hybrid better than base_only in log loss and AUC, closing at least half of
the gap to daily_retrain at a tenth of its compute or less, never worse than base_only beyond
noise (no day whose paired 95% interval of the log-loss difference lies above zero).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from serving.backtest import POLICIES
from serving.backtest.metrics import auc, compute_ratio, daily_series, gap_closed, log_loss, paired_delta
from serving.backtest.policies import PolicyRun

__all__ = [
    "SCHEMA_VERSION",
    "build_report",
    "write_report",
    "render_markdown",
    "load_report",
    "results_row",
    "results_table",
    "refresh_report",
]

SCHEMA_VERSION = 1
GAP_TARGET = 0.5
COMPUTE_TARGET = 0.1


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
) -> dict[str, Any]:
    """Compute every metric of the report from the policies' scores on the same events.

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
            "fits": len(run.fits),
            "base_versions": [f.version for f in run.fits],
            "daily": {"logloss": lls, "auc": aucs, "events": counts},
        }
    comparison = _compare(y, np.asarray(day_index), n_days, runs, policies)
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
                    "version": fit.version,
                    "parent": fit.parent,
                    "gate": fit.status,
                }
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
) -> dict[str, Any]:
    hyb, base, ceil = (policies[p] for p in ("hybrid", "base_only", "daily_retrain"))
    delta = paired_delta(y, runs["hybrid"].probs, runs["base_only"].probs)
    worse, compared = 0, 0
    for day in range(n_days):
        mask = day_index == day
        if mask.sum() < 2:
            continue
        compared += 1
        d = paired_delta(y[mask], runs["hybrid"].probs[mask], runs["base_only"].probs[mask])
        worse += int(d.low > 0)
    derived = _aggregate_comparison(policies)
    gap, ratio, auc_delta = derived["gap_closed"], derived["compute_ratio"], hyb["auc"] - base["auc"]
    target = {
        "hybrid_beats_base_only_logloss": bool(hyb["logloss"] < base["logloss"]),
        "hybrid_beats_base_only_auc": bool(math.isfinite(auc_delta) and auc_delta > 0),
        "closes_half_the_gap": bool(math.isfinite(gap) and gap >= GAP_TARGET),
        "tenth_of_the_compute": bool(math.isfinite(ratio) and ratio <= COMPUTE_TARGET),
        "never_worse_than_base_only": bool(worse == 0 and not delta.low > 0),
    }
    target["met"] = all(target.values())
    return {
        **derived,
        "hybrid_vs_base_only": {
            "logloss_delta": delta.to_json(),
            "auc_delta": auc_delta,
            "days_worse_beyond_noise": worse,
            "days_compared": compared,
        },
        "target": target,
    }


def _aggregate_comparison(policies: Mapping[str, Any]) -> dict[str, float]:
    """The comparisons that need only each policy's overall numbers."""
    hyb, base, ceil = (policies[p] for p in ("hybrid", "base_only", "daily_retrain"))
    nan = math.nan

    def num(x: Any) -> float:
        return nan if x is None else float(x)

    return {
        "gap_closed": gap_closed(num(base["logloss"]), num(hyb["logloss"]), num(ceil["logloss"])),
        # The same share for AUC (higher is better): read it where log loss has no gap.
        "auc_gap_closed": gap_closed(-num(base["auc"]), -num(hyb["auc"]), -num(ceil["auc"])),
        "compute_ratio": compute_ratio(hyb["train_seconds"], ceil["train_seconds"]),
    }


def refresh_report(out_dir: Path) -> dict[str, Any]:
    """Re-derive the aggregate comparisons of ``out_dir/report.json`` and rewrite it, the
    markdown and the plots (after a change of this module; per-event numbers are kept)."""
    from serving.backtest.plots import write_plots

    report = load_report(Path(out_dir) / "report.json")
    report["comparison"].update(_clean(_aggregate_comparison(report["policies"])))
    c = report["comparison"]
    gap, ratio = c["gap_closed"], c["compute_ratio"]
    c["target"]["closes_half_the_gap"] = gap is not None and gap >= GAP_TARGET
    c["target"]["tenth_of_the_compute"] = ratio is not None and ratio <= COMPUTE_TARGET
    c["target"]["met"] = all(v for k, v in c["target"].items() if k != "met")
    write_report(Path(out_dir), report)
    write_plots(Path(out_dir), report)
    return report


def write_report(out_dir: Path, report: Mapping[str, Any]) -> tuple[Path, Path]:
    """Write ``report.json`` and ``report.md`` into ``out_dir`` (created if needed)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / "report.json"
    json_path.write_text(json.dumps(report, indent=2, allow_nan=False) + "\n")
    md_path = out_dir / "report.md"
    md_path.write_text(render_markdown(report))
    return json_path, md_path


def load_report(path: Path) -> dict[str, Any]:
    """Read a ``report.json`` back (used by tests and by the README table)."""
    return json.loads(Path(path).read_text())


def _f(value: float | None, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _when(iso: str) -> str:
    """``2019-11-26T00:00:00+00:00`` -> ``2019-11-26 00:00 UTC``."""
    return f"{str(iso)[:16].replace('T', ' ')} UTC"


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.0f}%"


def results_row(name: str, report: Mapping[str, Any]) -> str:
    """One README table row: dataset, four log losses, four AUCs, gap closed, compute ratio."""
    p, c = report["policies"], report["comparison"]
    lls = " | ".join(_f(p[k]["logloss"]) for k in POLICIES)
    aucs = " | ".join(_f(p[k]["auc"]) for k in POLICIES)
    met = "yes" if c["target"]["met"] else "no"
    gap = _pct(c["gap_closed"])
    if c["gap_closed"] is None and c.get("auc_gap_closed") is not None:
        gap += f" (AUC: {_pct(c['auc_gap_closed'])})"
    return (
        f"| {name} | {p['hybrid']['events']:,} | {lls} | {aucs} | {gap} | "
        f"{_f(c['compute_ratio'], 3)} | {met} |"
    )


RESULTS_HEADER = (
    "| dataset | events | log loss static | base_only | hybrid | daily_retrain | AUC static | "
    "base_only | hybrid | daily_retrain | gap closed | compute hybrid/daily | target |\n"
    "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
)


def results_table(reports: Mapping[str, Mapping[str, Any]]) -> str:
    """The README table: one row per named report (dataset name -> report dict)."""
    return "\n".join([RESULTS_HEADER, *(results_row(name, rep) for name, rep in reports.items())])


def render_markdown(report: Mapping[str, Any]) -> str:
    """The human report: table, gap closed, compute, target checks, per-day series, plots."""
    p, c, span, s = report["policies"], report["comparison"], report["span"], report["settings"]
    lines = [
        f"# freshrank backtest: `{Path(str(report['events_file'])).name}`",
        "",
        f"{span['events_evaluated']:,} events evaluated from {_when(span['eval_start'])} to "
        f"{_when(span['eval_end'])} ({len(report['days'])} steps of {s.get('series_every', '1d')}) "
        f"after a {s['warmup']} warm-up "
        f"({span['events_train_only']:,} training-only events). Every policy scored exactly "
        "these events, each before learning from them.",
        "",
        f"Cadences: `base_only`/`hybrid` base every {s['base_every']} (warm-started), "
        f"`daily_retrain` every {s['daily_every']} from scratch; online mini-batch "
        f"{s['online_batch']} events; seed {s['seed']}.",
        "",
        "| policy | log loss | AUC | events | train seconds | base fits |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name in POLICIES:
        row = p[name]
        secs = _f(row["train_seconds"], 1)
        if name == "hybrid":
            secs += f" ({_f(row['base_train_seconds'], 1)} base + {_f(row['online_train_seconds'], 2)} online)"
        lines.append(
            f"| `{name}` | {_f(row['logloss'])} | {_f(row['auc'])} | {row['events']:,} | {secs} | {row['fits']} |"
        )
    d = c["hybrid_vs_base_only"]
    delta = d["logloss_delta"]
    gap = c["gap_closed"]
    gap_text = (
        f"`hybrid` closes **{_pct(gap)}** of the `base_only` → `daily_retrain` log-loss gap "
        f"({_f(p['base_only']['logloss'])} → {_f(p['daily_retrain']['logloss'])})"
        if gap is not None
        else "There is no `base_only` → `daily_retrain` log-loss gap to close here "
        "(daily retraining is not better than base_only in log loss on this log"
        + (
            f"; in AUC `hybrid` closes {_pct(c.get('auc_gap_closed'))} of the gap)"
            if c.get("auc_gap_closed") is not None
            else ")"
        )
    )
    lines += [
        "",
        f"{gap_text}, at **{_f(c['compute_ratio'], 3)}×** the compute of `daily_retrain`.",
        "",
        f"`hybrid` − `base_only` log loss per event: {_f(delta['mean'], 5)} "
        f"(95% interval {_f(delta['ci95_low'], 5)} .. {_f(delta['ci95_high'], 5)}); AUC "
        f"{'+' if (d['auc_delta'] or 0) >= 0 else ''}{_f(d['auc_delta'])}; "
        f"worse beyond noise on {d['days_worse_beyond_noise']} of {d['days_compared']} days.",
        "",
        "## Target",
        "",
    ]
    labels = {
        "hybrid_beats_base_only_logloss": "hybrid better than base_only in log loss",
        "hybrid_beats_base_only_auc": "hybrid better than base_only in AUC",
        "closes_half_the_gap": "closes at least half of the gap to daily_retrain",
        "tenth_of_the_compute": "at a tenth of daily_retrain's compute or less",
        "never_worse_than_base_only": "never worse than base_only beyond noise",
    }
    for key, text in labels.items():
        lines.append(f"- [{'x' if c['target'][key] else ' '}] {text}")
    lines += [
        f"- **{'met' if c['target']['met'] else 'not met'}**",
        "",
        "## Per day" if s.get("series_every", "1d") == "1d" else f"## Per {s['series_every']} step",
        "",
        "| start | events | " + " | ".join(f"{k} LL" for k in POLICIES) + " | "
        + " | ".join(f"{k} AUC" for k in POLICIES) + " |",
        "|---|---:|" + "---:|" * (2 * len(POLICIES)),
    ]
    for i, day in enumerate(report["days"]):
        lls = " | ".join(_f(p[k]["daily"]["logloss"][i]) for k in POLICIES)
        aucs = " | ".join(_f(p[k]["daily"]["auc"][i]) for k in POLICIES)
        lines.append(f"| {str(day)[:10]} | {p['hybrid']['daily']['events'][i]:,} | {lls} | {aucs} |")
    lines += ["", "![log loss per day](logloss.png)", "", "![AUC per day](auc.png)", ""]
    fits = report.get("fits", [])
    blocked = report.get("blocked_fits", [])
    rejected = [f["version"] for f in fits if f.get("gate") == "rejected"]
    lines += [
        "## How to read this",
        "",
        "- A base fitted at a cut-off saw only events before it: the base tier trains on the "
        "days before the cut-off's last day and validates (gates) on that last day. `hybrid`'s "
        "online layer also learns from the latest events, one mini-batch after it scored them.",
        "- The first fit (the warm-up span, from scratch) is the same model for `static`, "
        "`base_only` and `daily_retrain`; it is trained once and counted for each. `hybrid` "
        "uses `base_only`'s bases and counts their compute plus its online learning.",
        "- Compute = wall seconds of the base fits (Ray Train start-up included) plus, for "
        "`hybrid`, the online learner's featurizing and FTRL steps; scoring is not counted.",
        f"- {len(fits)} base fits in all"
        + (f"; the base tier's evaluation gate rejected {', '.join(rejected)} (used anyway: "
           "the backtest measures the cadence, not the gate)" if rejected else "")
        + ".",
    ]
    if blocked:
        lines.append(
            f"- {len(blocked)} retrain(s) blocked by the base tier's data gates (the policy kept "
            "its previous base): "
            + "; ".join(f"{b['policy']} at {b['cutoff'][:16]}" for b in blocked)
            + "."
        )
    lines.append("")
    lines.append(f"Wall time {_f(report['wall_seconds'], 0)} s.")
    lines.append("")
    return "\n".join(lines)
