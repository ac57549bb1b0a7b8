"""Manipulation figures over several seeds, with 95% intervals (issue 15).

    .venv/bin/python bench/manipulation.py              # 8 seeds (~10 min on 2 busy cores)
    .venv/bin/python bench/manipulation.py --seeds 2    # smoke run

In-process, real components: an ``OnlineLearner`` (the guard and the breaker at their
defaults, as serving runs them) fed by ``online_layer.synthetic.SyntheticWorld``, whose
users (``u0``...) are the established population. Per seed (the world and the attackers'
draws), three learners see the *same* honest traffic (400 requests, then the campaign's
share interleaved): ``control`` (no campaign), ``guarded`` (campaign, guard on) and
``unguarded`` (campaign, guard off; the served correction still clipped to 2 logits).
The target is the item real users want least. Measured: its mean rank (0 = top; among the first 41 items and itself)
for 100 real users, as serving scores it (base + clipped correction).

Campaigns (made-up users ``bot*``, each slate the target among 7 random items, only the
target clicked):

* ``flood``: 800 made-up users, one request each, one honest request after each;
* ``drip``: 100 made-up users, one request each, 8 honest requests after each;
* ``few_many``: 40 made-up users, 15 requests each, one honest request after each;
* ``sybil``: 40 made-up users first make 6 requests each over real slates, clicking as a
  real user would, then 3 attack requests each.

And the honest breaking-news burst: an ordinary item's true click rate jumps for real
users; its served logit rise after 600 requests showing it, guard on vs off (unclipped).

The judgement rules (written before the first run, also in bench/RESULTS.md):

1. "unchanged beyond noise": for each campaign, the 95% t-interval over seeds of the
   paired difference guarded - control in the target's mean rank lies inside [-2, +2]
   ranks (an equivalence margin of 2 of 41), and the interval of unguarded - control
   excludes 0 (the campaign works on an undefended layer: the test has power).
2. "about as fast": the 95% t-interval over seeds of the burst's rise ratio
   (guarded / unguarded) has its lower end >= 0.8.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import sys

import numpy as np

# bench/online_layer.py is named after the package: keep this directory off sys.path.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

from online_layer.config import OnlineLayerConfig  # noqa: E402
from online_layer.defences import clip_correction  # noqa: E402
from online_layer.join import ServedRecord  # noqa: E402
from online_layer.learner import OnlineLearner  # noqa: E402
from online_layer.synthetic import SyntheticWorld  # noqa: E402

START = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)
STEP = timedelta(seconds=1)
EMBEDDING_DIM = 8
PROBE_ITEMS = 41
# Two-sided 95% Student t quantiles by degrees of freedom (no scipy in the environment).
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306,
       9: 2.262, 10: 2.228, 11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131}
CAMPAIGNS = {  # name: (made-up users, attack requests each, honest requests after each)
    "flood": (800, 1, 1),
    "drip": (100, 1, 8),
    "few_many": (40, 15, 1),
    "sybil": (40, 3, 1),
}


class Clock:
    def __init__(self) -> None:
        self.now = 1_798_761_600.0

    def __call__(self) -> float:
        return self.now


def learner_for(guard: dict[str, Any]) -> OnlineLearner:
    cfg = OnlineLayerConfig(
        hash_bits=12, batch_size=64, join_window_s=60.0, max_batch_delay_s=30.0,
        publish_every_batches=5, publish_every_s=3600.0, label_rate_min_events=10**9,
        readiness_min_examples=500, readiness_window=2_000, emit="on_arrival",
        guard=guard,  # type: ignore[arg-type]
    )
    return OnlineLearner(cfg, "base-1", EMBEDDING_DIM, clock=Clock(),
                         established_users=lambda u: u.startswith("u") and u[1:].isdigit())


def slate(world: SyntheticWorld, rid: str, user_id: str, row: int, items: list[int],
          when: datetime) -> ServedRecord:
    shown = np.asarray(items)
    inputs = world.featurizer.transform(
        world.base_logits(row, shown), world.user_emb[row], world.item_emb[shown],
        np.zeros((len(items), len(world.featurizer.fresh_features))), user_id,
        [world.items[i] for i in shown], [world.categories[c] for c in world.item_cat[shown]],
        hours=when.hour,
    )
    return ServedRecord(rid, user_id, when, world.base_version,
                        tuple(world.items[i] for i in shown), inputs)


def events_of(record: ServedRecord, labels: list[float], when: datetime) -> list[dict]:
    return [{"request_id": record.request_id, "user_id": record.user_id, "item_id": item,
             "ts": when, "label": label, "position": i}
            for i, (item, label) in enumerate(zip(record.item_ids, labels, strict=True))]


def honest(learner: OnlineLearner, world: SyntheticWorld, n: int, when: datetime) -> None:
    for record, events in world.stream(n, when):
        learner.record_served(record)
        learner.add_feedback(events)


def run_arm(seed: int, campaign: str, arm: str) -> float:
    """The target's mean rank for 100 real users after the arm's traffic."""
    guard = {"enabled": False} if arm == "unguarded" else {}
    learner = learner_for(guard)
    world = SyntheticWorld(learner.featurizer, base_version="base-1", seed=seed)
    honest(learner, world, 400, START)
    target = int(np.argmin(world.trend))
    bots, per_bot, honest_after = CAMPAIGNS[campaign]
    rng = np.random.default_rng(1_000 + seed)  # the attackers' own draws
    pool = [i for i in range(len(world.items)) if i != target]
    when = START + timedelta(hours=1)
    n = 0
    if campaign == "sybil":  # first they behave: real slates, clicks as a real user's
        for turn in range(6):
            for b in range(bots):
                row = int(rng.integers(0, len(world.users)))
                items = rng.choice(len(world.items), size=8, replace=False).tolist()
                n += 1
                if arm != "control":
                    record = slate(world, f"sybil-{n}", f"bot{b}", row, items, when)
                    p = 1 / (1 + np.exp(-world.true_logits(row, np.asarray(items), np.arange(8))))
                    learner.record_served(record)
                    learner.add_feedback(events_of(record, (rng.random(8) < p).astype(float).tolist(), when))
                honest(learner, world, honest_after, when)
                when += STEP
    for _ in range(per_bot):
        for b in range(bots):
            others = rng.choice(pool, size=7, replace=False).tolist()
            row = int(rng.integers(0, len(world.users)))
            n += 1
            if arm != "control":
                record = slate(world, f"bot-{n}", f"bot{b}", row, [target, *others], when)
                learner.record_served(record)
                learner.add_feedback(events_of(record, [1.0] + [0.0] * 7, when))
            honest(learner, world, honest_after, when)
            when += STEP
    learner.flush(close_pending=True)
    others = [i for i in range(PROBE_ITEMS) if i != target]  # the target among ~41
    ranks = []
    for u in range(100):
        record = slate(world, "probe", world.users[u], u, [target, *others], START)
        logits = clip_correction(record.inputs.base_logit, learner.model.predict_many(record.inputs),
                                 learner.config.guard.max_correction)
        ranks.append(int((logits > logits[0]).sum()))
    return float(np.mean(ranks))


def burst_rise(seed: int, guarded: bool) -> float:
    """Served logit rise of an ordinary item after its true click rate jumps (600 requests)."""
    learner = learner_for({} if guarded else {"enabled": False, "max_correction": 1e9})
    world = SyntheticWorld(learner.featurizer, base_version="base-1", seed=100 + seed)
    honest(learner, world, 400, START)
    item = int(np.argsort(world.trend)[len(world.items) // 2])

    def served() -> float:
        out = []
        for u in range(100):
            record = slate(world, "probe", world.users[u], u, [item], START)
            out.append(clip_correction(record.inputs.base_logit,
                                       learner.model.predict_many(record.inputs),
                                       learner.config.guard.max_correction)[0])
        return float(np.mean(out))

    start = served()
    world.trend[item] += 2.5
    rng = np.random.default_rng(200 + seed)
    when = START + timedelta(hours=2)
    for n in range(600):
        u = int(rng.integers(0, len(world.users)))
        others = rng.choice([i for i in range(len(world.items)) if i != item], 7, replace=False)
        record = slate(world, f"burst-{n}", world.users[u], u, [item, *others.tolist()], when)
        learner.record_served(record)
        learner.add_feedback(world.feedback(record, when))
        when += STEP
    learner.flush()
    return served() - start


def interval(values: list[float]) -> tuple[float, float, float]:
    """Mean and 95% t-interval."""
    x = np.asarray(values, dtype=float)
    mean = float(x.mean())
    if len(x) < 2:
        return mean, math.nan, math.nan
    half = T95[len(x) - 1] * float(x.std(ddof=1)) / math.sqrt(len(x))
    return mean, mean - half, mean + half


def main() -> None:
    import logging

    logging.disable(logging.WARNING)  # the guard logs every quarantine
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--campaigns", default=",".join(CAMPAIGNS))
    args = parser.parse_args()
    started = time.time()
    out: dict[str, Any] = {"seeds": args.seeds, "machine": platform.node(),
                           "cpus": os.cpu_count(), "campaigns": {}}
    for campaign in args.campaigns.split(","):
        rows = {arm: [run_arm(seed, campaign, arm) for seed in range(args.seeds)]
                for arm in ("control", "guarded", "unguarded")}
        guarded = [g - c for g, c in zip(rows["guarded"], rows["control"], strict=True)]
        unguarded = [g - c for g, c in zip(rows["unguarded"], rows["control"], strict=True)]
        g, u = interval(guarded), interval(unguarded)
        held = g[1] >= -2.0 and g[2] <= 2.0 and (u[2] < 0 or u[1] > 0)
        out["campaigns"][campaign] = {"ranks": rows, "guarded_minus_control": g,
                                      "unguarded_minus_control": u, "rule_1": held}
        print(f"{campaign:9s} control rank {np.mean(rows['control']):6.2f}; guarded - control "
              f"{g[0]:+6.2f} [{g[1]:+6.2f}, {g[2]:+6.2f}]; unguarded - control {u[0]:+6.2f} "
              f"[{u[1]:+6.2f}, {u[2]:+6.2f}]; rule 1 {'met' if held else 'NOT met'}", flush=True)
    ratios = []
    for seed in range(args.seeds):
        on, off = burst_rise(seed, True), burst_rise(seed, False)
        ratios.append(on / off)
    r = interval(ratios)
    out["burst_ratio"] = {"ratios": ratios, "interval": r, "rule_2": r[1] >= 0.8}
    print(f"honest burst rise ratio guard on / off {r[0]:.3f} [{r[1]:.3f}, {r[2]:.3f}]; "
          f"rule 2 {'met' if r[1] >= 0.8 else 'NOT met'}")
    out["seconds"] = round(time.time() - started, 1)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
