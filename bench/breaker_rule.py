"""The circuit breaker's trip rule: how often it takes a layer off serving, by rule and loss.

Seeded runs of ``online_layer.breaker.CircuitBreaker`` on synthetic paired losses: per
example ``hybrid = base + excess + noise`` (noise ~ N(0, 0.05) nats, 60 users, batches of
200 events, a 400-event window, ``trip_margin`` 0.01, one losing judgement opens it), for a
layer inside the margin (excess 0.006: it should stay on), at the margin (0.01), and clearly
past it (0.05: it must come off). Each run is 30 judgements (or 4 for the clear loss); the
share of runs in which the breaker opened is reported for the point rule (``confidence_z``
0, the rule before this change) and for the one-sided 95% bound (1.645).

Usage::

    .venv/bin/python bench/breaker_rule.py [--runs 100]

The last line on stdout is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from online_layer.breaker import BreakerConfig, CircuitBreaker  # noqa: E402

CONFIG = BreakerConfig(window_events=400, min_events=200, min_users=20, trim_share=0.1,
                       trip_margin=0.01, sustained_judgements=1, cooldown_seconds=30.0,
                       half_open_events=200)


def _batch(rng: np.random.Generator, excess: float) -> tuple[list[str], np.ndarray, np.ndarray]:
    base = rng.uniform(0.1, 0.7, 200)
    return [f"u{i % 60}" for i in range(200)], base + excess + rng.normal(0, 0.05, 200), base


def opened_share(z: float, excess: float, judgements: int, runs: int) -> float:
    config = BreakerConfig(**{**CONFIG.__dict__, "confidence_z": z})
    opened = 0
    for run in range(runs):
        rng = np.random.default_rng(10_000 + run)
        breaker = CircuitBreaker(config)
        for step in range(judgements):
            breaker.observe(*_batch(rng, excess), now=float(step))
        opened += breaker.status().transitions.get("closed->open", 0) > 0
    return opened / runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=100)
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    cases = {"inside_margin_0.006": (0.006, 30), "at_margin_0.010": (0.010, 30),
             "clear_loss_0.050": (0.05, 4)}
    result = {
        "benchmark": "breaker_rule", "command": "python bench/breaker_rule.py", "runs": args.runs,
        "opened_share": {
            name: {"point_rule": opened_share(0.0, excess, n, args.runs),
                   "bound_z_1.645": opened_share(1.645, excess, n, args.runs)}
            for name, (excess, n) in cases.items()
        },
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
