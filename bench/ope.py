"""Off-policy evaluation (issue 20): estimates, intervals and truths.

1. Simulator coverage: one simulated world (``feature_store.simulate``), re-served
   ``--reps`` times by epsilon-greedy over a noisy score (fresh logging draws and clicks
   each time, ``serving.offpolicy.simulated.relog``); for each candidate policy (uniform,
   the oracle ranking by true attraction, the worst ranking) and each estimator: the share
   of replications whose interval covers the true click rate, the mean interval width, and
   the bias (mean estimate minus truth) with its standard error; then ``--bias-reps``
   more replications of the point estimates alone, for a sharper bias test.
2. Open Bandit (when the shared data is there): the random policy's click rate estimated
   from the BTS log, and the BTS policy's (its daily show frequencies,
   ``serving.offpolicy.marginals``) from the random log, each against the other log's own
   on-policy rate.

    python bench/ope.py --reps 40 --bias-reps 200 [--data DIR/open-bandit]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

# bench/serving.py is named after the package: keep this directory off sys.path, the
# repository root on it.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]
sys.path.insert(0, os.path.dirname(_HERE))

import numpy as np  # noqa: E402

from feature_store.simulate import SimulatorConfig, simulate  # noqa: E402
from serving.offpolicy.estimators import doubly_robust, ips, snips  # noqa: E402
from serving.offpolicy.evaluate import evaluate  # noqa: E402
from serving.offpolicy.logdata import bandit_log  # noqa: E402
from serving.offpolicy.marginals import logged_marginals  # noqa: E402
from serving.offpolicy.policies import ranking, uniform  # noqa: E402
from serving.offpolicy.reward_model import cross_fitted_rewards  # noqa: E402
from serving.offpolicy.simulated import relog, true_value  # noqa: E402


def simulator_coverage(reps: int, days: float, resamples: int, method: str) -> dict[str, object]:
    cfg = SimulatorConfig(days=days, impressions_per_day=40_000, n_users=500)
    events = simulate(cfg)
    rows: dict[str, dict[str, list[float]]] = {}
    for rep in range(reps):
        relogged = relog(events, cfg.position_decay, epsilon=0.3, seed=rep)
        log = relogged.log
        for target in (uniform(log), ranking(log, relogged.attraction, "oracle"),
                       ranking(log, -relogged.attraction, "worst")):
            truth = true_value(relogged, target)
            report = evaluate(log, target, method=method, resamples=resamples, seed=rep)
            for name, got in report["estimates"].items():
                cell = rows.setdefault(f"{target.name}/{name}", {"cover": [], "width": [], "err": [], "truth": []})
                cell["cover"].append(float(got["low"] <= truth <= got["high"]))
                cell["width"].append(got["high"] - got["low"])
                cell["err"].append(got["estimate"] - truth)
                cell["truth"].append(truth)
            rows.setdefault(f"{target.name}/ess", {"ess": []}).setdefault("ess", []).append(report["ess"])
    out: dict[str, object] = {"events": events.num_rows, "reps": reps, "method": method}
    for key, cell in rows.items():
        if "ess" in cell:
            out[key] = round(float(np.mean(cell["ess"])), 1)
            continue
        err = np.asarray(cell["err"])
        out[key] = {
            "coverage": round(float(np.mean(cell["cover"])), 3),
            "mean_width": round(float(np.mean(cell["width"])), 5),
            "bias": round(float(err.mean()), 5),
            "bias_se": round(float(err.std(ddof=1) / np.sqrt(err.size)), 5),
            "truth": round(float(np.mean(cell["truth"])), 5),
        }
    return out


def simulator_bias(reps: int, days: float) -> dict[str, object]:
    """Point estimates only (no intervals), over many more replications: the bias test."""
    cfg = SimulatorConfig(days=days, impressions_per_day=40_000, n_users=500)
    events = simulate(cfg)
    errors: dict[str, list[float]] = {}
    for rep in range(reps):
        relogged = relog(events, cfg.position_decay, epsilon=0.3, seed=10_000 + rep)
        log = relogged.log
        q = cross_fitted_rewards(log, seed=rep)
        for target in (uniform(log), ranking(log, relogged.attraction, "oracle"),
                       ranking(log, -relogged.attraction, "worst")):
            truth = true_value(relogged, target)
            for terms in (ips(log, target), snips(log, target), doubly_robust(log, target, q)):
                errors.setdefault(f"{target.name}/{terms.name}", []).append(terms.estimate - truth)
    out: dict[str, object] = {"reps": reps}
    for key, err in errors.items():
        e = np.asarray(err)
        se = float(e.std(ddof=1) / np.sqrt(e.size))
        out[key] = {"bias": round(float(e.mean()), 5), "bias_se": round(se, 5),
                    "z": round(float(e.mean()) / se, 2), "sd": round(float(e.std(ddof=1)), 5)}
    return out


def open_bandit(folder: Path, resamples: int, method: str) -> dict[str, object]:
    """Each logging policy's rate estimated from the other's log, beside its own log's rate."""
    from feature_store.importers import import_dataset

    events = {p: import_dataset("open-bandit", folder / p) for p in ("random", "bts")}
    logs = {p: bandit_log(t, "catalogue") for p, t in events.items()}
    random_from_bts = evaluate(logs["bts"], uniform(logs["bts"]), method=method, resamples=resamples)
    bts_marginals = logged_marginals(logs["random"], events["random"], events["bts"], "bts")
    bts_from_random = evaluate(logs["random"], bts_marginals, method=method, resamples=resamples)
    return {
        "random_on_policy": evaluate(
            logs["random"], uniform(logs["random"]), method=method, resamples=resamples)["logged_rate"],
        "random_from_bts_log": random_from_bts["estimates"],
        "random_from_bts_log_ess": round(random_from_bts["ess"], 1),
        "bts_on_policy": random_from_bts["logged_rate"],
        "bts_from_random_log": bts_from_random["estimates"],
        "bts_from_random_log_ess": round(bts_from_random["ess"], 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=40)
    parser.add_argument("--bias-reps", type=int, default=200,
                        help="replications of the point estimates only (the bias test)")
    parser.add_argument("--days", type=float, default=0.5)
    parser.add_argument("--resamples", type=int, default=300)
    parser.add_argument("--interval", default="bootstrap", choices=("bootstrap", "clt"))
    parser.add_argument("--data", type=Path, help="the open-bandit folder (random/ and bts/)")
    args = parser.parse_args()
    started = time.perf_counter()
    result: dict[str, object] = {"machine": f"{platform.processor() or platform.machine()}, "
                                 f"{platform.python_version()}"}
    result["simulator"] = simulator_coverage(args.reps, args.days, args.resamples, args.interval)
    result["simulator_bias"] = simulator_bias(args.bias_reps, args.days)
    if args.data is not None and (args.data / "bts" / "all.csv").is_file():
        result["open_bandit"] = open_bandit(args.data, max(args.resamples, 1000), args.interval)
    result["seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
