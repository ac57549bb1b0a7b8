"""``freshrank evaluate``: off-policy estimates of a candidate policy's click rate from an
events file with logged propensities. Registered into the ``freshrank`` console command by
``serving.cli`` through ``register``; prints one JSON report on stdout."""

from __future__ import annotations

import argparse
import json
from datetime import timedelta
from pathlib import Path

from protos.errors import InvalidInput
from protos.timeparse import parse_duration
from serving.offpolicy.candidates import POLICY_FORMS
from serving.offpolicy.intervals import INTERVAL_METHODS
from serving.offpolicy.logdata import CANDIDATE_MODES

__all__ = ["register", "run"]


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``evaluate`` to the ``freshrank`` command."""
    p = subparsers.add_parser(
        "evaluate",
        help="off-policy estimate of a candidate policy's click rate from a logged events file",
        description=(
            "IPS, self-normalised IPS and doubly robust (cross-fitted reward model) estimates "
            "of the click rate per shown slot a candidate policy would have had on the "
            "requests of an events file, from the propensities logged with it (item-position "
            "model: a slot's click depends on its item, not on the rest of the slate). "
            "Prints a JSON report: each estimate with its interval, the effective sample "
            "size and the log's own click rate."
        ),
    )
    p.add_argument("--events", required=True, type=Path,
                   help="events file (Parquet or CSV) with position and propensity on every row")
    p.add_argument("--policy", required=True, help=f"the candidate policy: {POLICY_FORMS}")
    p.add_argument("--candidates", choices=CANDIDATE_MODES, default="request",
                   help="what the policy may place: the items logged in each request (default) "
                   "or every item of the log in every request (a fixed catalogue, as Open Bandit)")
    p.add_argument("--interval", choices=INTERVAL_METHODS, default="bootstrap",
                   help="bootstrap over requests (default) or the delta-method normal interval")
    p.add_argument("--level", type=float, default=0.95, help="interval level (default 0.95)")
    p.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples (default 1000)")
    p.add_argument("--folds", type=int, default=5, help="reward-model cross-fitting folds (default 5)")
    p.add_argument("--seed", type=int, default=0, help="seed of the resamples and folds (default 0)")
    p.add_argument("--window", type=parse_duration, default=timedelta(days=1),
                   help="marginals:FILE: the time window of its show frequencies (default 1d)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from feature_store.events_file import load_events
    from serving.offpolicy.candidates import resolve_policy
    from serving.offpolicy.evaluate import evaluate
    from serving.offpolicy.logdata import bandit_log

    if not 0.0 < args.level < 1.0:
        raise InvalidInput(f"--level must be in (0, 1), got {args.level}")
    events = load_events(args.events)
    log = bandit_log(events, args.candidates)
    window_us = int(args.window.total_seconds() * 1_000_000)
    target, notes = resolve_policy(args.policy, log, events, args.settings.registry_dir, window_us)
    report = evaluate(log, target, method=args.interval, level=args.level,
                      resamples=args.resamples, seed=args.seed, folds=args.folds)
    report["warnings"] = notes + report["warnings"]
    report = {"events_file": str(args.events), **report}
    print(json.dumps(report, indent=2))
    return 0
