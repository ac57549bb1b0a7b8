"""Backtest: measure the value of freshness on an events file, by replaying it.

Four policies are scored on exactly the same events, each before it learns from them:
``static`` (one base trained on the warm-up span), ``base_only`` (base retrained every
``base_every``, warm-started), ``hybrid`` (``base_only``'s bases plus the online layer, learning
test-then-train per mini-batch) and ``daily_retrain`` (base retrained from scratch every day).

One module per job: ``config`` (settings, durations), ``metrics`` (log loss, AUC, gap closed),
``policies`` (names and retrain schedules), ``timeline`` (warm-up and evaluation steps),
``replay`` (the engine: the schedule and the bookkeeping), ``data`` / ``tiers`` / ``online``
(the only modules that call the other packages: events and features, base fits and scoring,
the online layer), ``summary`` (every number of ``report.json`` and the target's clauses, computed once),
``render`` (writes ``report.json`` / ``report.md``), ``plots`` (PNGs), ``cli``
(``freshrank backtest``). Issue 18 added: ``scoring`` (base-alone scores; the online layer
replayed with production's readiness gate, and its ungated score), ``ceiling``
(``daily_fresh``: warm daily fits with no held-out day), ``baselines`` (``constant``,
``item_rate``, ``oracle``), ``online_baselines`` (``ftrl_alone``, ``counter_ftrl``: ``online``'s
layer with no neural base, on a logit of 0 or on ``item_rate``'s) and ``evidence`` (normalised entropy with cluster-bootstrap
intervals, every pair, "gap closed" only where estimable, the judgement rules).
Importing this package imports nothing heavy.
"""

from __future__ import annotations

__all__ = ["POLICIES"]

POLICIES: tuple[str, ...] = ("static", "base_only", "hybrid", "daily_retrain")
