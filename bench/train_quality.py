"""Quality of a cold base fit on drifting and real logs: next-day log loss vs the click rate.

For each dataset the training set is built the way production builds it (the event log in a
fresh workspace, offline features computed, point-in-time features joined by
``feature_store``); then ONE cold ``train_base_model`` with the default ``BaseModelConfig``
(``--set`` overrides it) as of the end of the data: the last day validates, the
``train_days`` before it train, and the evaluation gate compares the fit with predicting
the training click rate. Printed per dataset: rows, click rate, validation log loss of the
fit and of the constant, the relative gain with its user-bootstrap interval, AUC, the gate's
verdict, the exported (best) epoch and the epochs run. The last line is one JSON object.

Datasets: ``sim16`` / ``sim21`` (``feature_store.simulate`` defaults, 16 or 21 days),
``sim-small`` (the test's 5-day log), ``ml-100k`` (``$DATA/ml-100k``, label =
rating >= 4; its ratings are bursty and its last days sparse, so the day/hour completeness
and staleness gates are relaxed as in the backtest, and ``ml-100k-all`` trains on all
history instead of 7 days).

    python bench/train_quality.py --datasets sim16,sim21,ml-100k,ml-100k-all
    python bench/train_quality.py --datasets sim21 --set learning_rate=0.005 --set epochs=3
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pyarrow as pa  # noqa: E402
import pyarrow.compute as pc  # noqa: E402

SHARED = Path(
    os.environ.get(
        "FRESHRANK_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"
    )
)
RELAXED = {"min_day_fraction": 0.0, "min_hour_fraction": 0.0, "max_staleness_hours": 720.0}


def events_of(name: str) -> tuple[pa.Table, dict[str, Any]]:
    """The dataset's events and the config changes it needs (gates, window)."""
    from feature_store.simulate import SimulatorConfig, simulate

    if name == "sim16":
        return simulate(SimulatorConfig(days=16)), {}
    if name == "sim21":
        return simulate(SimulatorConfig()), {}
    if name == "sim-small":
        small = SimulatorConfig(
            seed=3, days=5, impressions_per_day=4000, n_users=400, items_per_day=120
        )
        return simulate(small), {}
    if name in ("ml-100k", "ml-100k-all"):
        from feature_store.importers import import_dataset

        events = import_dataset("ml-100k", SHARED / "ml-100k")
        extra = dict(RELAXED)
        if name == "ml-100k-all":
            span = pc.max(events.column("ts")).as_py() - pc.min(events.column("ts")).as_py()
            extra["train_days"] = span.days + 1
        return events, extra
    raise SystemExit(f"unknown dataset {name!r}")


def training_set(events: pa.Table) -> tuple[pa.Table, datetime, float]:
    """Point-in-time training set of ``events`` and the training time (data end)."""
    from feature_store.compute import compute_features
    from feature_store.config import FeatureStoreConfig
    from feature_store.event_log import write_event_log
    from feature_store.training_set import build_training_set

    t0 = time.perf_counter()
    newest = pc.max(events.column("ts")).as_py()
    as_of = newest.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    with tempfile.TemporaryDirectory(prefix="freshrank-quality-") as tmp:
        fs = FeatureStoreConfig(workspace=Path(tmp))
        write_event_log(events, fs.events_dir)
        compute_features(fs, end=as_of)
        wanted = ("user_id", "item_id", "ts", "label", "item_category")
        table = build_training_set(fs, events.select([c for c in wanted if c in events.schema.names]))
    return table, as_of, time.perf_counter() - t0


def measure(name: str, overrides: dict[str, Any], backend: str) -> dict[str, Any]:
    from base_model.config import BaseModelConfig
    from base_model.errors import DataGateError
    from base_model.training import train_base_model

    events, extra = events_of(name)
    table, as_of, build_s = training_set(events)
    cfg = BaseModelConfig.from_dict({**extra, **overrides})
    out: dict[str, Any] = {"dataset": name, "events": events.num_rows, "as_of": as_of.isoformat()}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="freshrank-quality-reg-") as registry:
        try:
            r = train_base_model(cfg, table, registry, parent=None, as_of=as_of, backend=backend)
        except DataGateError as exc:
            return {**out, "blocked": str(exc)}
    ev = r.gate_results["offline_evaluation"]["details"]
    best = r.metrics.get("best") or {}
    curve = [round(c["val_logloss"], 4) for c in r.curve]
    return {
        **out,
        "train_rows": r.metrics["train_rows"],
        "valid_rows": r.metrics["valid_rows"],
        "label_rate": round(r.metrics["label_rate"], 4),
        "val_logloss": ev["candidate_logloss"],
        "constant_logloss": ev["reference_logloss"],
        "gain": ev["gain"],
        "ci": [ev["ci_low"], ev["ci_high"]],
        "auc": ev["candidate_auc"],
        "gate": "passed" if r.gate_results["offline_evaluation"]["passed"] else "rejected",
        "best_epoch": best.get("epoch"),
        "best_step": best.get("step"),
        "epochs_run": r.metrics.get("epochs_run", len(r.metrics.get("epoch_seconds", []))),
        "curve": curve,
        "build_s": round(build_s, 1),
        "fit_s": round(time.perf_counter() - t0, 1),
    }


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", default="sim16,sim21,ml-100k,ml-100k-all")
    p.add_argument("--backend", choices=("local", "ray"), default="local")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    overrides: dict[str, Any] = {}
    for item in args.overrides:
        key, _, raw = item.partition("=")
        try:
            overrides[key] = json.loads(raw)
        except json.JSONDecodeError:
            overrides[key] = raw
    if args.backend == "ray":
        from protos.ray_local import init_local_ray

        init_local_ray()
    rows = []
    print("| dataset | train / valid rows | click rate | val log loss | constant | gain (95% CI) "
          "| AUC | gate | best epoch / run |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in args.datasets.split(","):
        m = measure(name.strip(), overrides, args.backend)
        rows.append(m)
        if "blocked" in m:
            print(f"| {name} | blocked: {m['blocked'][:150]} |")
            continue
        print(
            f"| {name} | {m['train_rows']:,} / {m['valid_rows']:,} | {m['label_rate']:.4f} "
            f"| {m['val_logloss']:.4f} | {m['constant_logloss']:.4f} "
            f"| {m['gain']:+.4f} ({m['ci'][0]:+.4f} .. {m['ci'][1]:+.4f}) "
            f"| {m['auc']:.3f} | {m['gate']} | {m['best_epoch']} / {m['epochs_run']} |",
            flush=True,
        )
    print(json.dumps({"python": platform.python_version(), "overrides": overrides, "rows": rows}))
    return rows


if __name__ == "__main__":
    main()
