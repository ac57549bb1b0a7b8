"""The candidate policies a user names on the command line, resolved against a log:

- ``uniform``: a uniformly random order of each request's candidates;
- ``logged``: the logging policy itself (on-policy sanity: every estimator is the log's rate);
- ``base:VERSION`` (or ``base:champion``): the registered base model ranking each request's
  logged candidates by its score, computed from the features logged with each impression
  (``user_features``/``item_features``, as served; rows without them score with the
  training means, which the report says);
- ``score:COLUMN``: ranking by a numeric events column, e.g. ``score:base_score`` (the base
  alone, as served) against a log served by base + online correction;
- ``marginals:FILE``: the context-free policy that wrote the events file FILE, as its show
  frequencies per time window (``serving.offpolicy.marginals``; catalogue candidates), e.g.
  Open Bandit's BTS policy evaluated on the random policy's log.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from protos.errors import InvalidInput
from serving.offpolicy.logdata import BanditLog
from serving.offpolicy.marginals import DAY_US, logged_marginals
from serving.offpolicy.policies import TargetPolicy, logged, ranking, uniform

if TYPE_CHECKING:
    from base_model.artifact import BaseScorer

__all__ = ["POLICY_FORMS", "base_scores", "resolve_policy"]

POLICY_FORMS = "uniform, logged, base:VERSION (or base:champion), score:COLUMN, marginals:FILE"


def resolve_policy(text: str, log: BanditLog, events: pa.Table,
                   registry_dir: Path | None = None,
                   window_us: int = DAY_US) -> tuple[TargetPolicy, list[str]]:
    """The policy ``text`` names, and notes for the report (``window_us``: the window of
    ``marginals:FILE``).

    Raises:
        InvalidInput: an unknown form, a column that is not numeric or has nulls, a base
            policy over catalogue candidates.
        NotFound: ``base:VERSION`` is not registered.
    """
    kind, _, arg = text.partition(":")
    if text == "uniform":
        return uniform(log), []
    if text == "logged":
        return logged(), []
    if kind == "score" and arg:
        return ranking(log, _column_scores(log, events, arg), name=text), []
    if kind == "marginals" and arg:
        from feature_store.events_file import load_events

        policy = logged_marginals(log, events, load_events(arg), text, window_us)
        return policy, [f"{text}: marginals estimated from that log's show frequencies per "
                        f"{window_us / 3.6e9:g} h window; the interval does not include their noise"]
    if kind == "base" and arg:
        _shown_rows(log, text)
        if registry_dir is None:
            raise InvalidInput("base:VERSION needs the workspace's model registry")
        scorer = _load_base(registry_dir, arg)
        scores, notes = base_scores(log, events, scorer)
        return ranking(log, scores, name=f"base:{scorer.version}"), notes
    raise InvalidInput(f"unknown policy {text!r}; one of: {POLICY_FORMS}")


def _shown_rows(log: BanditLog, what: str) -> np.ndarray:
    if log.candidates != "request":
        raise InvalidInput(f"{what} ranks the logged candidates of each request: use --candidates request")
    return log.event_of_cand


def _column_scores(log: BanditLog, events: pa.Table, name: str) -> np.ndarray:
    rows = _shown_rows(log, f"score:{name}")
    if name not in events.column_names:
        raise InvalidInput(f"score:{name}: the events have no column {name!r}")
    column = events.column(name)
    if not (pa.types.is_floating(column.type) or pa.types.is_integer(column.type)):
        raise InvalidInput(f"score:{name}: column {name!r} is {column.type}, not numeric")
    if column.null_count:
        raise InvalidInput(f"score:{name}: {column.null_count} rows have no {name}")
    return column.to_numpy(zero_copy_only=False).astype(np.float64)[rows]


def _load_base(registry_dir: Path, version: str) -> BaseScorer:
    from base_model.artifact import BaseScorer
    from protos.registry import ModelRegistry

    registry = ModelRegistry(registry_dir)
    if version == "champion":
        champion = registry.champion("base")
        if champion is None:
            raise InvalidInput(f"base:champion: the registry at {registry_dir} has no base champion")
        return BaseScorer.load(champion.path)
    return BaseScorer.load(registry.get("base", version).path)


def base_scores(log: BanditLog, events: pa.Table, scorer: BaseScorer) -> tuple[np.ndarray, list[str]]:
    """``(M,)`` base logits of the candidates (request mode), from the logged features."""
    rows = _shown_rows(log, "base:VERSION")
    fu, fi = len(scorer.user_features), len(scorer.item_features)
    users, missing_u = _features(events, "user_features", fu)
    items, missing_i = _features(events, "item_features", fi)
    categories = [c or "" for c in events.column("item_category").to_pylist()]
    logits = np.empty(events.num_rows)
    user_ids = events.column("user_id").to_pylist()
    item_ids = events.column("item_id").to_pylist()
    for start in range(0, events.num_rows, 65536):
        s = slice(start, start + 65536)
        logits[s] = scorer.score(user_ids[s], item_ids[s], users[s], items[s], categories[s]).logits
    missing = int((missing_u | missing_i).sum())
    notes = ([f"{missing} of {events.num_rows} rows have no logged features: the base scored "
              "them with its training means"] if missing else [])
    return logits[rows], notes


def _features(events: pa.Table, name: str, width: int) -> tuple[np.ndarray, np.ndarray]:
    """``(n, width)`` float32 features, NaN (the scorer's "missing") where not logged."""
    values = events.column(name).to_pylist()
    out = np.full((len(values), width), np.nan, dtype=np.float32)
    missing = np.ones(len(values), dtype=bool)
    for i, row in enumerate(values):
        if row is not None:
            if len(row) != width:
                raise InvalidInput(f"{name} of row {i} has {len(row)} values, the base expects {width}")
            out[i] = row
            missing[i] = False
    return out, missing
