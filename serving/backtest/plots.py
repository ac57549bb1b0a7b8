"""PNG plots of the per-day metrics: one figure per metric, one line per policy.

matplotlib with the Agg backend (no display, no GUI toolkit), imported inside the function so
importing the backtest stays light.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["plot_metric", "write_plots", "PLOTTED_METRICS"]

logger = logging.getLogger(__name__)

PLOTTED_METRICS: dict[str, str] = {"logloss": "log loss (lower is better)", "auc": "AUC (higher is better)"}
_STYLES: dict[str, dict[str, Any]] = {
    "static": {"color": "#7f7f7f", "linestyle": ":"},
    "base_only": {"color": "#1f77b4", "linestyle": "--"},
    "hybrid": {"color": "#d62728", "linestyle": "-", "linewidth": 2.2},
    "daily_retrain": {"color": "#2ca02c", "linestyle": "-."},
}


def plot_metric(
    path: Path,
    days: Sequence[str],
    series: Mapping[str, Sequence[float | None]],
    metric: str,
    title: str,
) -> Path:
    """Draw ``series[policy]`` (one value per day; None/NaN = a gap) against ``days``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.5), dpi=110)
    x = list(range(len(days)))
    for policy, values in series.items():
        y = [math.nan if v is None else float(v) for v in values]
        ax.plot(x, y, marker="o", markersize=3, label=policy, **_STYLES.get(policy, {}))
    step = max(1, len(days) // 12)
    ax.set_xticks(x[::step])
    ax.set_xticklabels([d[:10] for d in days[::step]], rotation=30, ha="right", fontsize=8)
    ax.set_xlabel("evaluation step start (UTC)")
    ax.set_ylabel(PLOTTED_METRICS.get(metric, metric))
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    logger.debug("wrote %s", path)
    return path


def write_plots(out_dir: Path, report: Mapping) -> list[Path]:
    """Write ``<metric>.png`` for every metric in ``PLOTTED_METRICS`` from a report dict."""
    paths = []
    source = Path(str(report.get("events_file", ""))).name or "events"
    step = report.get("settings", {}).get("series_every", "1d")
    per = "per day" if step == "1d" else f"per {step}"
    for metric in PLOTTED_METRICS:
        series = {name: p["daily"][metric] for name, p in report["policies"].items()}
        title = f"{metric} {per}, {source}"
        paths.append(plot_metric(out_dir / f"{metric}.png", report["days"], series, metric, title))
    return paths
