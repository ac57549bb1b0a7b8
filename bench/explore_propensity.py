"""The logged propensity's error on the serving bench's own requests (issue 20, branch explore3).

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 .venv/bin/python bench/explore_propensity.py \
        [--workspace /tmp/explore-speed-ws] [--candidates 100,1000] [--requests 8] [--draws 4,8]
        [--time-calls N]

The workspace is ``bench/serving.py``'s (built there if missing); the ranker has a fresh
online layer installed (zero weights, every precision at the prior), as that bench times it.
For each captured exploring request (``HybridRanker.rank`` with exploration on every
request, its ``explore`` call recorded) and each focus, the served order is the default
policy's; for every shown (item, position) the Rao-Blackwellised estimate at each of
``--draws`` (``--seeds`` independent streams each) and the Monte Carlo one (64 samples, the
served draw counted, ``--seeds`` streams) are compared with a reference: the
Rao-Blackwellised estimator at 8 x 1,024 draws. Prints per (candidates, focus, estimator):
the mean reference, the bias (mean signed error, with its standard error over requests),
the root mean squared error, and the share of estimates below a tenth of the reference;
then one JSON object. ``--time-calls N``: instead, times ``explore`` alone per estimator
(Monte Carlo 64 and each of ``--draws``), interleaved call by call, focus "all".
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]  # bench/online_layer.py
if str(_HERE.parent) not in sys.path:
    sys.path.append(str(_HERE.parent))


def _captured(workspace: Path, n: int, requests: int) -> list[tuple[Any, ...]]:
    """The arguments of ``explore`` in ``requests`` exploring Rank calls of ``n`` candidates."""
    import serving.ranking as ranking
    from bench.serving import _ranker, build_workspace, request_bytes
    from online_layer.ftrl import FTRLProximal
    from protos.freshrank.v1 import ranking_pb2
    from serving.exploration import ExplorationPolicy
    from serving.ranking import OnlineSlot
    from serving.requests import Limits, parse_rank_request

    info = build_workspace(workspace)
    settings, ranker = _ranker(workspace)
    model = FTRLProximal(ranker.featurizer.n_dense, settings.online_layer.hash_bits, ranker.base_version)
    ranker.install_online(OnlineSlot(model, "bench", ranker.base_version, time.time()))
    ranker.exploration = ExplorationPolicy(enabled=True, share=1.0)
    seen: list[tuple[Any, ...]] = []
    real = ranking.explore

    def record(*args: Any) -> Any:
        seen.append(args)
        return real(*args)

    ranking.explore = record  # type: ignore[assignment]
    try:
        for i in range(requests):
            query = parse_rank_request(ranking_pb2.RankRequest.FromString(request_bytes(info, n, i)),
                                       settings.serving.max_candidates, limits=Limits.of(settings.serving))
            ranker.rank(query)
    finally:
        ranking.explore = real
    assert len(seen) == requests, f"{len(seen)} of {requests} requests explored"
    return seen


def measure(args: argparse.Namespace) -> dict[str, Any]:
    import numpy as np

    from serving.exploration import FOCUS, ExplorationPolicy, _clipped, _hits, explore, rao_blackwell

    out: dict[str, Any] = {"load_before": os.getloadavg(), "rows": []}
    for n in args.candidates:
        for focus in ("all", "item"):
            errors: dict[str, list[np.ndarray]] = {}
            refs: list[np.ndarray] = []
            for slot, inputs, mean, top_k, _, request_id in _captured(args.workspace, n, args.requests):
                policy = ExplorationPolicy(enabled=True, share=1.0, focus=focus)
                order, _ = explore(slot, inputs, mean, top_k, policy, request_id)
                sub, pool_mean = inputs.take(order), mean[order]
                served = np.arange(len(order))  # the pool re-indexed in the served order
                big = policy.with_changes(propensity_draws=1024)
                ref = np.mean([rao_blackwell(slot, sub, pool_mean, served, big, np.random.default_rng([9, r]))
                               for r in range(8)], axis=0)
                refs.append(ref)
                for draws in args.draws:
                    p = policy.with_changes(propensity_draws=draws)
                    est = [rao_blackwell(slot, sub, pool_mean, served, p, np.random.default_rng([s, draws]))
                           for s in range(args.seeds)]
                    errors.setdefault(f"rao_blackwell_{draws}", []).append(np.array(est) - ref)
                mc = []
                for s in range(args.seeds):  # 64 fresh draws plus the served one (counted once)
                    noise = slot.model.sample_noise(sub, np.random.default_rng([s, 64]), n_samples=64,
                                                    columns=FOCUS[focus])
                    hits = _hits(_clipped(slot, sub, pool_mean[None, :] + noise), served)
                    mc.append((1 + hits) / 65)
                errors.setdefault("monte_carlo_64", []).append(np.array(mc) - ref)
            for name, errs in errors.items():
                per_request = np.array([e.mean() for e in errs])
                every = np.concatenate([e.ravel() for e in errs])
                ref_all = np.concatenate([np.broadcast_to(r, e.shape).ravel() for r, e in zip(refs, errs)])
                row = {"candidates": n, "focus": focus, "estimator": name, "mean_reference": float(ref_all.mean()),
                       "bias": float(every.mean()),
                       "bias_se": float(per_request.std(ddof=1) / np.sqrt(len(per_request))),
                       "rmse": float(np.sqrt(np.mean(every ** 2))),
                       "relative_rmse": float(np.sqrt(np.mean((every / ref_all) ** 2))),
                       "below_tenth": float(np.mean(every + ref_all < 0.1 * ref_all)),
                       "estimates": int(every.size)}
                out["rows"].append(row)
                print(f"n={n:5} focus={focus:4} {name:16} ref {row['mean_reference']:.4f} bias "
                      f"{row['bias']:+.5f} (se {row['bias_se']:.5f}) rmse {row['rmse']:.4f} rel.rmse "
                      f"{row['relative_rmse']:.2f} below ref/10 {row['below_tenth']:.3f}", flush=True)
    out["load_after"] = os.getloadavg()
    return out


def timing(args: argparse.Namespace) -> dict[str, Any]:
    """``explore`` alone on the captured requests, each estimator interleaved call by call:
    median and p99 ms per (candidates, estimator), focus "all"."""
    import numpy as np

    from serving.exploration import ExplorationPolicy, explore

    out: dict[str, Any] = {}
    arms = {"monte_carlo_64": ExplorationPolicy(enabled=True, share=1.0, propensity_draws=0),
            **{f"rao_blackwell_{d}": ExplorationPolicy(enabled=True, share=1.0, propensity_draws=d)
               for d in args.draws}}
    for n in args.candidates:
        captured = _captured(args.workspace, n, args.requests)
        times: dict[str, list[float]] = {name: [] for name in arms}
        for i in range(args.time_calls + 20):
            slot, inputs, mean, top_k, _, request_id = captured[i % len(captured)]
            for name, policy in arms.items():
                t0 = time.perf_counter()
                explore(slot, inputs, mean, top_k, policy, f"{request_id}-{i}")
                if i >= 20:
                    times[name].append((time.perf_counter() - t0) * 1e3)
        for name, t in times.items():
            out[f"{n}/{name}"] = {"p50": float(np.median(t)), "p99": float(np.percentile(t, 99))}
            print(f"n={n:5} {name:16} explore p50 {np.median(t):.3f} ms p99 {np.percentile(t, 99):.3f} ms", flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workspace", type=Path, default=Path("/tmp/explore-speed-ws"))
    parser.add_argument("--candidates", default="100,1000")
    parser.add_argument("--requests", type=int, default=8)
    parser.add_argument("--draws", default="4,8")
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--time-calls", type=int, default=0,
                        help="instead: time explore alone, this many calls per estimator (interleaved)")
    args = parser.parse_args(argv)
    args.candidates = [int(x) for x in args.candidates.split(",")]
    args.draws = [int(x) for x in args.draws.split(",")]
    print(json.dumps(timing(args) if args.time_calls else measure(args)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
