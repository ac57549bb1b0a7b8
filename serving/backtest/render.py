"""Writing the backtest's report: ``report.json`` for machines, ``report.md`` for people.

Nothing is computed here that decides anything: the numbers and the target's clauses come
from ``serving.backtest.summary`` (which documents ``report.json``); this module formats
them, and builds the README's results table from written reports.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from serving.backtest import POLICIES
from serving.backtest.summary import refresh_comparison

__all__ = [
    "RESULTS_HEADER",
    "load_report",
    "refresh_report",
    "render_markdown",
    "results_row",
    "results_table",
    "write_report",
]


def refresh_report(out_dir: Path) -> dict[str, Any]:
    """Re-derive the aggregate comparisons of ``out_dir/report.json`` and rewrite it, the
    markdown and the plots (after a change of the summary; per-event numbers are kept)."""
    from serving.backtest.plots import write_plots

    report = refresh_comparison(load_report(Path(out_dir) / "report.json"))
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
        f"{_f(c.get('compute_ratio_span'), 3)} | {_f(c.get('compute_ratio_training'), 3)} | "
        f"{_f(c['compute_ratio'], 3)} | {met} |"
    )


RESULTS_HEADER = (
    "| dataset | events | log loss static | base_only | hybrid | daily_retrain | AUC static | "
    "base_only | hybrid | daily_retrain | gap closed | compute hybrid/daily: in span | "
    "all fits | wall | target |\n"
    "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
)


def results_table(reports: Mapping[str, Mapping[str, Any]]) -> str:
    """The README table: one row per named report (dataset name -> report dict)."""
    return "\n".join([RESULTS_HEADER, *(results_row(name, rep) for name, rep in reports.items())])


_EVIDENCE_ORDER = ("constant", "item_rate", "ftrl_alone", "counter_ftrl", "static", "base_only",
                   "hybrid", "hybrid_ungated", "daily_retrain", "daily_fresh", "daily_fresh_new", "oracle")


def _ci(pair: Any, digits: int = 4) -> str:
    if not pair or pair[0] is None:
        return "n/a"
    return f"{pair[0]:.{digits}f} .. {pair[1]:.{digits}f}"


def evidence_markdown(report: Mapping[str, Any]) -> list[str]:
    """The issue-18 section: NE with intervals, each policy against base_only, gap closed."""
    ev = report.get("evidence")
    if not ev:
        return []
    pol, pairs = ev["policies"], ev["pairs"]
    prod = report.get("production", {})
    share = prod.get("hybrid_online_share")
    lines = [
        "## Evidence (issue 18's rules, fixed before the runs)",
        "",
        f"Normalised entropy (log loss / entropy of the click rate {ev['click_rate']:.4f}); "
        f"95% intervals from a cluster bootstrap over {ev['clusters']:,} {ev['noise_unit']}s "
        f"({ev['bootstrap_samples']} resamples). `hybrid` is what production would have served: "
        f"the online layer served {_pct(share)} of the events (after its readiness check "
        "passed), the base alone the rest; `hybrid_ungated` is the layer's own score on every "
        f"event. Rejected bases not served: {len(prod.get('rejected_fits', []))}. "
        f"`daily_fresh`: warm daily fits on every row before the cut-off, "
        f"{prod.get('daily_fresh_epochs', 'n/a')} epoch(s) each (the pre-registered ceiling); "
        f"`daily_fresh_new` (added after the first runs): warm daily fits on the newest day only, "
        f"{prod.get('daily_fresh_new_epochs', 'n/a')} epoch(s) each. `ftrl_alone` / "
        "`counter_ftrl`: the online layer with no neural base, on a logit of 0 / on `item_rate`'s "
        "logit, with the run's online settings, ungated, learning from the log's first event.",
        "",
        "| policy | NE | 95% | NE − base_only | 95% | verdict | AUC | calibration | compute s in span |",
        "|---|---:|---|---:|---|---|---:|---:|---:|",
    ]
    for k in [n for n in _EVIDENCE_ORDER if n in pol] + [n for n in pol if n not in _EVIDENCE_ORDER]:
        row = pol[k]
        vs = pairs.get(f"{k} - base_only")
        diff = ("—", "—", "—") if vs is None else (f"{vs['ne_delta']:+.4f}", _ci(vs["ci95"]), vs["verdict"])
        lines.append(
            f"| `{k}` | {_f(row['ne'])} | {_ci(row['ne_ci95'])} | {diff[0]} | {diff[1]} | {diff[2]} | "
            f"{_f(row.get('auc'))} | {_f(row.get('calibration'), 3)} | {_f(row.get('compute_seconds_span'), 1)} |"
        )
    lines.append("")
    for ceiling, gap in ev.get("gap_closed", {}).items():
        den = gap["denominator"]
        if gap["status"] == "estimable":
            lines.append(f"- Gap closed towards `{ceiling}`: **{_pct(gap['value'])}** "
                         f"(95% {_pct(gap['ci95'][0])} .. {_pct(gap['ci95'][1])}; the gap itself "
                         f"{den['ne']:.5f} NE, 95% {_ci(den['ci95'], 5)}).")
        else:
            lines.append(f"- Gap closed towards `{ceiling}`: **not estimable**: the `base_only` − "
                         f"`{ceiling}` gap is {den['ne']:+.5f} NE, 95% {_ci(den['ci95'], 5)}, "
                         "which does not lie above zero.")
    for k, sh in ev.get("oracle_gap_share", {}).items():
        if k in ("base_only", "hybrid", "daily_fresh", "daily_fresh_new", "item_rate",
                 "ftrl_alone", "counter_ftrl"):
            lines.append(f"- `{k}` captures {_pct(sh['value'])} (95% {_pct(sh['ci95'][0])}"
                         f" .. {_pct(sh['ci95'][1])}) of the `constant` → `oracle` NE gap.")
    ratio = ev.get("compute_ratio_span_vs_daily_fresh")
    lines.append(f"- Training compute in span, `hybrid` / `daily_fresh`: {_f(ratio, 3)}; "
                 f"/ `daily_fresh_new`: {_f(ev.get('compute_ratio_span_vs_daily_fresh_new'), 3)}.")
    lines.append("")
    return lines


def render_markdown(report: Mapping[str, Any]) -> str:
    """The human report: table, gap closed, compute, target checks, per-day series, plots."""
    p, c, span, s = report["policies"], report["comparison"], report["span"], report["settings"]
    learning = s.get("online_learning") or f"mini-batches of {s.get('online_batch')} events"
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
        f"`daily_retrain` every {s['daily_every']} from scratch; online layer: {learning}; "
        f"seed {s['seed']}.",
        "",
        "| policy | log loss | AUC | events | base fits | training compute s | samples | wall s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name in POLICIES:
        row = p[name]
        secs, wall = _f(row.get("compute_seconds"), 1), _f(row["train_seconds"], 1)
        if name == "hybrid":
            online = _f(row["online_train_seconds"], 2)
            secs += f" ({_f(row.get('base_compute_seconds'), 1)} base + {online} online)"
            wall += f" ({_f(row['base_train_seconds'], 1)} base + {online} online)"
        samples = row.get("train_samples")
        lines.append(
            f"| `{name}` | {_f(row['logloss'])} | {_f(row['auc'])} | {row['events']:,} | {row['fits']} | "
            f"{secs} | {'n/a' if samples is None else f'{samples:,}'} | {wall} |"
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
        f"{gap_text}, at **{_f(c.get('compute_ratio_span'), 3)}×** the training compute "
        f"`daily_retrain` spent in the evaluated span ({_f(c.get('compute_ratio_training'), 3)}× "
        "counting the warm-up fit every policy shares; "
        f"{_f(c.get('samples_ratio'), 3)}× its training samples; "
        f"{_f(c['compute_ratio'], 3)}× its wall seconds, Ray Train start-up included).",
        "",
        f"`hybrid` − `base_only` log loss per event: {_f(delta['mean'], 5)} "
        f"(95% interval {_f(delta['ci95_low'], 5)} .. {_f(delta['ci95_high'], 5)}); AUC "
        f"{'+' if (d['auc_delta'] or 0) >= 0 else ''}{_f(d['auc_delta'])}; "
        f"worse beyond noise on {d['days_worse_beyond_noise']} of {d['days_compared']} "
        f"{'days' if s.get('series_every', '1d') == '1d' else 'steps'}"
        + (
            f" (intervals clustered by user, jointly 95% over the days; with each day's own "
            f"95% interval: {d.get('days_worse_per_day_95', 'n/a')}; per event, as if events "
            f"were independent: {d.get('days_worse_per_event', 'n/a')})."
            if d.get("noise_unit") == "user"
            else " (intervals jointly 95% over the days)."
        ),
        "",
        *evidence_markdown(report),
        "## Target (issue 8's rule, on the served hybrid)",
        "",
    ]
    labels = {
        "hybrid_beats_base_only_logloss": "hybrid better than base_only in log loss",
        "hybrid_beats_base_only_auc": "hybrid better than base_only in AUC",
        "closes_half_the_gap": "closes at least half of the gap to daily_retrain",
        "tenth_of_the_compute": "at a tenth of daily_retrain's training compute in the span or less",
        "never_worse_than_base_only": "never worse than base_only beyond noise",
    }
    for key, text in labels.items():
        lines.append(f"- [{'x' if c['target'][key] else ' '}] {text}")
    wall_ok = c.get("tenth_of_the_compute_wall")
    lines += [
        f"- **{'met' if c['target']['met'] else 'not met'}**",
        "",
        "The compute clause is judged on training compute spent in the evaluated span (the "
        "fits' own training seconds plus the online layer's learning, less the warm-up fit that "
        "every policy shares). On wall seconds, which include each fit's Ray Train "
        f"start-up, it is **{'met' if wall_ok else 'not met'}** "
        f"({_f(c['compute_ratio'], 3)}×): a production cluster pays a start-up per job too, "
        "so on logs this small the wall figure is the closer bill.",
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
        "- Compute. *Training compute*: the seconds of each fit's timed training "
        "steps as the trainer reports them (rows × epochs actually run; start-up, data loading "
        "and validation passes excluded), plus for `hybrid` the online learner's featurizing and "
        "FTRL steps; *samples* counts the same base work without a clock. *Wall*: each "
        "`train_base_model` call end to end, Ray Train start-up included. *In span*: less the "
        "warm-up fit, which every policy pays once before the evaluated span. Scoring is not "
        "counted.",
        f"- Every fit of every policy trains on {s.get('tiers', {}).get('train_window', 'the same window')}"
        " (the same window length for `daily_retrain`'s cold fits as for `base_only`'s warm ones).",
        f"- {len(fits)} base fits in all"
        + (f"; the base tier's evaluation gate rejected {', '.join(rejected)}"
           + (" (`base_only`/`hybrid` kept serving the previous base, as production does; "
              "the ceilings used them)" if s.get("obey_gate", False) else
              " (used anyway: --serve-rejected)") if rejected else "")
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
