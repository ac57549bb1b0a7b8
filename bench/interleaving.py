"""Requests needed to detect a better ranker: team-draft interleaving vs the canary's A/B (issue 20).

    .venv/bin/python bench/interleaving.py                    # the reported run
    .venv/bin/python bench/interleaving.py --replicates 6 --max-requests 4000   # smoke run

Traffic: ``feature_store.simulate`` (default world, ``--days`` days at
``--impressions-per-day``): every logged request is one user's slate of 10 live items, each
with its true click probability. The simulator's click model is position-based
(``true_ctr = examine(position) * attractiveness``), so each item's attractiveness is
``true_ctr * (1 + position) ** position_decay`` and any re-ranking of the slate can be
clicked counterfactually: a ranker orders the 10 items, the top ``--k`` are shown, and slot
``p`` is clicked with probability ``examine(p) * attractiveness`` (fresh draws).

Rankers (scores of the 10 items): ``truth`` (the true attractiveness logit), ``noisy-S``
(that logit plus N(0, S^2) noise drawn per request and item: the larger S, the worse),
``logged`` (the logged order: the logging policy's random order). Pairs (champion,
candidate), the candidate the better one, and a null pair of two equal rankers.

Per replicate (a random order of the world's requests, its own ranker noise, coins, A/B
split and clicks), for the first N requests, N on a doubling grid:

* interleaving: each request is ``serving.interleaving.team_draft`` of the two rankings
  (coins from the request id, salted per replicate); the two-sided sign test
  (``preference_test``) at 5% over users (``user_outcomes``, the live verdict's unit) and
  over requests; detected = significant for the candidate.
* A/B: each user is in the candidate's arm by ``serving.plan.in_canary`` (share 0.5, the
  A/B's most powerful split; the id salted per replicate), served that arm's ranking; the
  canary's Poisson bootstrap over users (``serving.controller.verdicts.user_ratio_bound``)
  of the click-rate ratio CTR_cand / CTR_champ - 1 (clicks over impressions), two-sided 95%;
  detected = the lower bound > 0.

Power at each N: the share of replicates detected (Wilson 95% interval). N80: the smallest
N at which power reaches 0.8, interpolated in log N between grid points (beyond the grid:
censored at twice the largest N). Intervals for N80 and the ratio N80_AB / N80_IL: a
bootstrap over replicates (2000 resamples). Output: one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from datetime import UTC, datetime
from typing import Any

import numpy as np

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

from feature_store.simulate import SimulatorConfig, simulate  # noqa: E402
from serving.controller.verdicts import user_ratio_bound  # noqa: E402
from serving.interleaving import outcomes, preference_test, team_draft, user_outcomes  # noqa: E402
from serving.plan import in_canary  # noqa: E402

PAIRS = (("logged", "truth"), ("noisy-2", "noisy-1"), ("noisy-1.5", "noisy-1"), ("noisy-1", "noisy-1"))
METHODS = ("interleaving_users", "interleaving_requests", "ab_bootstrap")


def load_world(days: float, impressions_per_day: int, seed: int) -> dict[str, Any]:
    cfg = SimulatorConfig(seed=seed, days=days, impressions_per_day=impressions_per_day)
    log = simulate(cfg)
    slate = cfg.slate_size
    positions = log.column("position").to_numpy().reshape(-1, slate)
    request_ids = log.column("request_id").to_numpy(zero_copy_only=False).reshape(-1, slate)
    if not ((positions == np.arange(slate)).all() and (request_ids == request_ids[:, :1]).all()):
        raise SystemExit("the simulated log is not whole slates in position order")
    true_ctr = log.column("true_ctr").to_numpy().astype(np.float64).reshape(-1, slate)
    attract = np.clip(true_ctr * (1.0 + positions) ** cfg.position_decay, 1e-6, 1 - 1e-6)
    return {
        "users": log.column("user_id").to_numpy(zero_copy_only=False).reshape(-1, slate)[:, 0],
        "request_ids": request_ids[:, 0],
        "attractiveness": attract,  # (R, slate)
        "examine": 1.0 / (1.0 + np.arange(slate)) ** cfg.position_decay,
    }


def scores(name: str, attract: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    if name == "truth":
        return np.log(attract / (1 - attract))
    if name == "logged":
        return np.broadcast_to(-np.arange(attract.shape[1], dtype=np.float64), attract.shape)
    if name.startswith("noisy-"):
        return np.log(attract / (1 - attract)) + float(name[6:]) * rng.standard_normal(attract.shape)
    raise ValueError(name)


def replicate(world: dict[str, Any], pair: tuple[str, str], rep: int, grid: list[int], k: int,
              boot: int) -> dict[str, list[int]]:
    """Detections (1 candidate, -1 champion, 0 none) per method at each N of ``grid``."""
    rng = np.random.default_rng([rep, PAIRS.index(pair)])
    order = rng.permutation(len(world["users"]))[: grid[-1]]
    attract, users = world["attractiveness"][order], world["users"][order]
    rids = world["request_ids"][order]
    champ = np.argsort(-scores(pair[0], attract, rng), axis=1, kind="stable")
    cand = np.argsort(-scores(pair[1], attract, rng), axis=1, kind="stable")
    examine = world["examine"][:k]
    rows = np.arange(len(users))[:, None]

    # Interleaving: one team-draft list per request, clicked by the position model.
    salt = f"bench-{rep}"
    shown = np.empty((len(users), k), dtype=np.int64)
    teams = np.empty((len(users), k), dtype=np.int8)
    for r, (a, b, rid) in enumerate(zip(champ.tolist(), cand.tolist(), rids.tolist())):
        mixed = team_draft(a, b, k, rid, salt)
        shown[r], teams[r] = np.asarray(mixed.items), np.asarray(mixed.teams)
    clicks = rng.random((len(users), k)) < examine * attract[rows, shown]
    per_request = outcomes(teams, clicks)

    # A/B: a stable half of users served the candidate.
    arm = np.array([in_canary(f"{salt}:{u}", 0.5) for u in users.tolist()])
    served = np.where(arm[:, None], cand[:, :k], champ[:, :k])
    ab_clicks = (rng.random((len(users), k)) < examine * attract[rows, served]).sum(axis=1)

    out: dict[str, list[int]] = {m: [] for m in METHODS}
    for n in grid:
        for method, units in (("interleaving_users", user_outcomes(users[:n], per_request[:n])),
                              ("interleaving_requests", per_request[:n])):
            test = preference_test(units, alpha=0.05)
            out[method].append({"candidate": 1, "champion": -1, "": 0}[test.preferred])
        per_user = {}
        for name, in_arm in (("candidate", arm[:n]), ("champion", ~arm[:n])):
            _, index = np.unique(users[:n][in_arm], return_inverse=True)
            per_user[name] = (np.bincount(index, weights=ab_clicks[:n][in_arm].astype(np.float64)),
                              np.bincount(index).astype(np.float64) * k)
        lower, upper = user_ratio_bound(per_user, 0.975, boot, seed=rep)
        out["ab_bootstrap"].append(1 if lower > 0 else (-1 if upper < 0 else 0))
    return out


def wilson(hits: int, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return 0.0, 1.0
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def n_at_power(power: np.ndarray, grid: list[int], target: float = 0.8) -> float:
    """N where power first reaches ``target``, log-interpolated; 2 * max(grid) if never."""
    for i, p in enumerate(power):
        if p >= target:
            if i == 0:
                return float(grid[0])
            lo, hi = power[i - 1], p
            frac = (target - lo) / (hi - lo) if hi > lo else 1.0
            return float(math.exp(math.log(grid[i - 1]) + frac * (math.log(grid[i]) - math.log(grid[i - 1]))))
    return 2.0 * grid[-1]


def summarise(detections: dict[str, np.ndarray], grid: list[int], null: bool, seed: int) -> dict[str, Any]:
    """Per method: power (or false-positive rate) per N with Wilson intervals; N80 and the
    A/B-to-interleaving ratio with bootstrap intervals over replicates."""
    out: dict[str, Any] = {}
    reps = next(iter(detections.values())).shape[0]
    for method, d in detections.items():
        hits = (d != 0).sum(axis=0) if null else (d == 1).sum(axis=0)
        out[method] = {
            "rate": [round(h / reps, 3) for h in hits.tolist()],
            "rate_95": [[round(x, 3) for x in wilson(h, reps)] for h in hits.tolist()],
            "wrong_direction": int((d == -1).sum()),
        }
    if null:
        return out
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {m: [] for m in detections}
    for _ in range(2000):
        pick = rng.integers(0, reps, reps)
        for method, d in detections.items():
            draws[method].append(n_at_power((d[pick] == 1).mean(axis=0), grid))
    for method, d in detections.items():
        out[method]["n80"] = round(n_at_power((d == 1).mean(axis=0), grid))
        out[method]["n80_95"] = [round(float(np.quantile(draws[method], q))) for q in (0.025, 0.975)]
    for method in ("interleaving_users", "interleaving_requests"):
        ratio = np.array(draws["ab_bootstrap"]) / np.array(draws[method])
        out[f"ratio_ab_over_{method}"] = {
            "point": round(out["ab_bootstrap"]["n80"] / out[method]["n80"], 2),
            "95": [round(float(np.quantile(ratio, q)), 2) for q in (0.025, 0.975)],
            "censored": bool(out["ab_bootstrap"]["n80"] >= 2 * grid[-1]),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicates", type=int, default=60)
    parser.add_argument("--max-requests", type=int, default=32_000)
    parser.add_argument("--min-requests", type=int, default=250)
    parser.add_argument("--k", type=int, default=5, help="items shown of the 10-item slate")
    parser.add_argument("--days", type=float, default=4.0)
    parser.add_argument("--impressions-per-day", type=int, default=200_000)
    parser.add_argument("--world-seed", type=int, default=7)
    parser.add_argument("--bootstrap", type=int, default=400, help="A/B bootstrap replicates")
    args = parser.parse_args()
    started = time.time()
    grid = [args.min_requests]
    while grid[-1] * 2 <= args.max_requests:
        grid.append(grid[-1] * 2)
    world = load_world(args.days, args.impressions_per_day, args.world_seed)
    if len(world["users"]) < grid[-1]:
        raise SystemExit(f"the world has {len(world['users'])} requests, fewer than {grid[-1]}")
    attract = world["attractiveness"]
    result: dict[str, Any] = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.node()} {os.cpu_count()} cpus, load {os.getloadavg()[0]:.1f}",
        "args": vars(args), "grid": grid, "world_requests": int(len(world["users"])),
        "world_users": int(len(np.unique(world["users"]))), "pairs": {},
    }
    for pair in PAIRS:
        null = pair[0] == pair[1]
        runs = [replicate(world, pair, rep, grid, args.k, args.bootstrap) for rep in range(args.replicates)]
        detections = {m: np.array([run[m] for run in runs]) for m in METHODS}
        rng = np.random.default_rng(0)  # the ranker pair's true click rates at k, for scale
        ctr = {name: float((world["examine"][: args.k] * np.take_along_axis(
            attract, np.argsort(-scores(name, attract, rng), axis=1)[:, : args.k], axis=1)).sum(axis=1).mean())
            for name in set(pair)}
        result["pairs"][f"{pair[0]} vs {pair[1]}"] = {
            "null": null, "clicks_per_request": {n: round(v, 4) for n, v in ctr.items()},
            **summarise(detections, grid, null, seed=1),
        }
        print(f"{pair}: {time.time() - started:.0f}s", file=sys.stderr, flush=True)
    result["seconds"] = round(time.time() - started, 1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
