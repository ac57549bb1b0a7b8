"""Baselines with no neural base that learn online (issue 18): ``ftrl_alone``, ``counter_ftrl``.

Why: ``hybrid`` is a neural base plus the online layer. To know what the base contributes,
the backtest also scores the online layer with no base at all, and the layer correcting
the no-model popularity counter instead of a base:

- ``ftrl_alone``: the online layer on a base logit of 0, with no base embeddings;
- ``counter_ftrl``: the online layer on the logit of ``item_rate``'s smoothed click rate so
  far (``serving.backtest.baselines.item_rate_so_far``, the counter), i.e. FTRL correcting
  the counter.

Both are the layer the hybrid runs, called the same way (``serving.backtest.online.
OnlineSession``: ``online_layer.features.OnlineFeaturizer`` and the FTRL learner of
``online_layer.ftrl``): the same hashed tokens (bias, item, category, user x category,
hour x category, the logged position when learning and the rank-time token when scoring),
the same fresh Feast counters in the dense block, the same learning delay (an event's
feedback is learned ``tiers.online_delay_us`` of event time after it; mini-batches of
``tiers.online_batch`` in ``--online-batch`` mode) and the same ``learn_many`` calls. With
no base there are no embeddings: the featurizer needs a width of at least one, so it gets
``NO_BASE_EMBEDDING_DIM`` = 1 column of zeros, and the embedding block of the dense
features is 0 on every row (a zero feature gets no gradient, so its weight stays 0).

The rule, fixed before any run: the hyper-parameters are the online layer's settings as the
run has them (``[online_layer]``: its shipped defaults unless the user set them), untouched
and untuned; the scores are the layer's own progressive (ungated) ones: each event scored
by weights that learned only feedback due before it, never its own label or a
simultaneous one (the delay is at least one microsecond, as the counters' rule is; in
``--online-batch`` mode the layer learns in mini-batches as the hybrid's does). The fresh
counters follow the feature store's point-in-time rule (events strictly before), as for
the hybrid. Both
learn from the log's first event, as the counters count from it (with no base there is no
base change to re-bind the layer to): the first evaluated event is scored by weights that
learned the warm-up's due feedback, as ``item_rate`` counts it. Differences from the
hybrid's layer, both forced by having no base: the readiness gate is not applied (its
fallback would be the base, which ``ftrl_alone`` does not have; ``counter_ftrl``'s is the
counter, reported as ``item_rate``); and ``ftrl_alone`` is not clipped by
``[online_layer.guard] max_correction`` (that clip bounds the move from the base logit: from
a logit of 0 it would keep every probability in [0.12, 0.88]); ``counter_ftrl`` is, around
the counter, as the hybrid is around its base.

Examples
--------
>>> import numpy as np
>>> np.round(counter_logits(np.array([0.5, 0.25, 0.0])), 3)
array([  0.   ,  -1.099, -16.118])
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING

import numpy as np

from serving.backtest.policies import PolicyRun
from serving.backtest.progress import ProgressSink

if TYPE_CHECKING:
    from online_layer.config import OnlineLayerConfig
    from serving.backtest.data import ReplayData

__all__ = [
    "NO_BASE_EMBEDDING_DIM",
    "ONLINE_BASELINES",
    "counter_logits",
    "ftrl_on_logits",
    "online_baseline_runs",
]

ONLINE_BASELINES: tuple[str, ...] = ("ftrl_alone", "counter_ftrl")
NO_BASE_EMBEDDING_DIM = 1


def counter_logits(rate: np.ndarray) -> np.ndarray:
    """The logit of a click rate, the rate clipped to ``[EPS, 1 - EPS]`` (``protos.metrics``'s
    log-loss clip: a counter that has seen no click yet gives a finite logit)."""
    from protos.metrics import EPS

    p = np.clip(np.asarray(rate, dtype=np.float64), EPS, 1.0 - EPS)
    return np.log(p) - np.log1p(-p)


def ftrl_on_logits(
    name: str,
    data: ReplayData,
    base_logits: np.ndarray,
    eval_lo: int,
    online_cfg: OnlineLayerConfig,
    batch: int,
    delay_us: int | None,
    *,
    clip: bool = True,
) -> PolicyRun:
    """The online layer on ``base_logits`` (one per row of ``data``) and no embeddings,
    test-then-train from the log's first row; its ungated probabilities for rows
    ``[eval_lo, N)``.

    ``delay_us`` None: mini-batches of ``batch`` rows, each scored, then learned; else each
    row's feedback is learned ``max(delay_us, 1)`` of event time after it. ``clip`` False:
    no ``max_correction`` clip (``ftrl_alone``, whose base logit of 0 is no base). The
    learning time and counts go into the returned run.
    """
    from serving.backtest.online import OnlineSession, no_base_scores

    n = int(data.ts_us.size)
    logits = np.asarray(base_logits, dtype=np.float64)
    if logits.shape != (n,):
        raise ValueError(f"base_logits must have shape ({n},), got {logits.shape}")
    cfg = online_cfg
    if not clip:
        cfg = dataclasses.replace(
            cfg, guard=dataclasses.replace(cfg.guard, max_correction=math.inf)
        )
    session = OnlineSession(name, NO_BASE_EMBEDDING_DIM, cfg, gated=False)
    scores = no_base_scores(logits, NO_BASE_EMBEDDING_DIM)
    delay = None if delay_us is None else max(int(delay_us), 1)
    out = session.run(data, 0, n, scores, batch, delay)
    run = PolicyRun(name, np.ascontiguousarray(out.ungated[eval_lo:]))
    run.online_seconds = session.learn_seconds
    run.online_batches = session.batches
    run.online_examples = session.examples
    return run


def online_baseline_runs(
    data: ReplayData,
    eval_lo: int,
    online_cfg: OnlineLayerConfig,
    batch: int,
    delay_us: int | None,
    progress: ProgressSink | None = None,
) -> dict[str, PolicyRun]:
    """``ftrl_alone`` and ``counter_ftrl`` on the evaluated rows ``[eval_lo, N)``.

    ``delay_us``: the replay's learning delay (``tiers.online_delay_us``; None in
    ``--online-batch`` mode, where the counter, as ``item_rate``'s, uses one microsecond).
    """
    from serving.backtest.baselines import item_rate_so_far

    counter = item_rate_so_far(data.ts_us, data.labels, data.item_ids, delay_us or 0)
    bases = {
        "ftrl_alone": (np.zeros(data.ts_us.size), False),
        "counter_ftrl": (counter_logits(counter), True),
    }
    out: dict[str, PolicyRun] = {}
    for name, (logits, clip) in bases.items():
        if progress is not None:
            progress("online", f"{name}: the online layer with no neural base, "
                     f"{data.ts_us.size:,} events from the log's first")
        out[name] = ftrl_on_logits(name, data, logits, eval_lo, online_cfg, batch, delay_us, clip=clip)
    return out
