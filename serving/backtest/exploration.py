"""The backtest's exploration policy: re-rank the simulator's slates, with and without
Thompson sampling, and judge the click rate on young items and overall (issue 20).

A replay of a fixed log cannot measure exploration: what a policy shows changes what it
learns, and the log only has clicks for what the logging policy showed. The simulator keeps
each impression's true click probability (``true_ctr``) and its position bias is known
(``examine(p) = 1 / (1 + p) ** position_decay``), so an item's click probability at any
position is ``true_ctr / examine(logged) * examine(p)``. Each logged request becomes a
ranking problem: its slate is the candidate list, a policy shows ``top_k`` of them, clicks
are drawn from the truth at the positions it chose (common random numbers: one uniform per
candidate, the same for both arms) and the online layer learns what it showed, with their
positions, every ``learn_every`` requests (the feedback delay).

Two arms on the same requests, the same base and the same fresh online layer:

- ``greedy``: the hybrid's mean logits (``serving.ranking``'s order);
- ``explore``: ``serving.exploration.explore``, the production code, on ``share`` of the
  requests (the same request-id hash) with the same ``slots``, ``scale``, ``samples``.

Click rate = expected clicks (the truth) per shown impression, overall and on items younger
than ``young_hours`` (age = time since the item's first impression in the log, the
simulator's publication to within minutes). Intervals: a bootstrap over hours of requests,
paired (the same hours for both arms), percentile 95%. Judgement (``JUDGEMENT``, written
before the runs): exploration passes when the interval of its young-item click-rate gain
lies above 0 and the interval of its relative overall change lies above ``-budget``.

Not replayed: the online layer's readiness gate (both arms use the layer from its first
update), and the fresh counters follow the logged clicks, not the arm's (both arms alike).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from serving.exploration import ExplorationPolicy, explore

if TYPE_CHECKING:
    from base_model.artifact import BaseScores
    from serving.backtest.data import ReplayData
    from serving.backtest.online import OnlineSession

__all__ = ["ArmLog", "ExploreSettings", "JUDGEMENT", "compare", "request_starts", "run_arm"]

JUDGEMENT = (
    "exploration passes when (1) the 95% interval of CTR_young(explore) - CTR_young(greedy) "
    "lies above 0 and (2) the 95% interval of CTR_all(explore) / CTR_all(greedy) - 1 lies "
    "above -budget; CTR = expected clicks (the simulator's truth) per shown impression; "
    "young = first impression of the item less than young_hours before; intervals: paired "
    "bootstrap over hours of requests, 1,000 resamples, seed 0, percentile"
)
_HOUR_US = 3_600_000_000


@dataclass(frozen=True)
class ExploreSettings:
    """The experiment (module docstring); ``budget`` is the most relative overall loss."""

    top_k: int = 3
    share: float = 0.2
    slots: int = 0
    scale: float = 1.0
    samples: int = 32
    focus: str = "all"
    propensity_draws: int = 0  # 0: the pre-registered Monte Carlo propensity (and served orders)
    budget: float = 0.03
    young_hours: float = 24.0
    position_decay: float = 0.7
    learn_every: int = 20
    seed: int = 0
    resamples: int = 1_000

    def policy(self) -> ExplorationPolicy:
        return ExplorationPolicy(True, self.share, self.slots, self.scale, self.samples, self.focus,
                                 self.propensity_draws)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ArmLog:
    """Every shown impression of one arm: its request, hour, youth, true click probability
    at the shown position, the drawn click and the logged propensity (1.0 when greedy)."""

    request: np.ndarray
    hour: np.ndarray
    young: np.ndarray
    prob: np.ndarray
    click: np.ndarray
    propensity: np.ndarray
    explored_requests: int
    greedy_hit: np.ndarray | None = None  # 1.0 where the arm's own greedy order shows it there


def request_starts(data: ReplayData, lo: int, hi: int) -> np.ndarray:
    """Start rows of the requests in ``[lo, hi)``: a request is a run of rows with one time
    and one user (the simulator writes a slate's rows together at the request's time)."""
    ts, users = data.ts_us[lo:hi], data.user_ids[lo:hi]
    change = np.ones(hi - lo, dtype=bool)
    change[1:] = (ts[1:] != ts[:-1]) | (users[1:] != users[:-1])
    return lo + np.flatnonzero(change)


def first_seen_us(data: ReplayData) -> np.ndarray:
    """Per row: the time of its item's first impression in the whole log."""
    items, first, inverse = np.unique(data.item_ids.astype(str), return_index=True, return_inverse=True)
    del items
    return data.ts_us[first][inverse]


def run_arm(
    data: ReplayData,
    lo: int,
    hi: int,
    scores: BaseScores,
    session: OnlineSession,
    settings: ExploreSettings,
    policy: ExplorationPolicy | None,
) -> ArmLog:
    """One arm over rows ``[lo, hi)`` (``scores``: the base's, for exactly those rows)."""
    from serving.ranking import OnlineSlot

    if data.true_ctr is None:
        raise ValueError("the exploration backtest needs the simulator's true_ctr column")
    examine = 1.0 / (1.0 + np.arange(64, dtype=np.float64)) ** settings.position_decay
    logged = np.clip(data.positions[lo:hi], 0, 63)
    relevance = np.clip(data.true_ctr[lo:hi] / examine[logged], 0.0, 1.0)
    uniform = np.random.default_rng([settings.seed, 20]).random(hi - lo)
    young = (data.ts_us[lo:hi] - first_seen_us(data)[lo:hi]) < settings.young_hours * _HOUR_US
    inputs = session.featurizer.transform(
        scores.logits, scores.user_embeddings, scores.item_embeddings, data.fresh[lo:hi],
        list(data.user_ids[lo:hi]), list(data.item_ids[lo:hi]), list(data.item_categories[lo:hi]),
        data.hours[lo:hi], positions=None,
    )
    starts = request_starts(data, lo, hi) - lo
    ends = np.append(starts[1:], hi - lo)
    slot = OnlineSlot(session.model, "backtest", session.base_version, 0.0, session.max_correction)
    out: dict[str, list[Any]] = {k: [] for k in ("request", "row", "pos", "prop", "hit")}
    explored = 0
    for b in range(0, len(starts), settings.learn_every):
        block = range(b, min(b + settings.learn_every, len(starts)))
        rows_lo, rows_hi = int(starts[block[0]]), int(ends[block[-1]])
        mean = slot.score(inputs.take(slice(rows_lo, rows_hi)))
        shown_rows, shown_pos = [], []
        for r in block:
            s, e = int(starts[r]), int(ends[r])
            m = mean[s - rows_lo:e - rows_lo]
            key = f"bt-{settings.seed}-{lo + s}"
            greedy = np.argsort(-m, kind="stable")[: settings.top_k]
            if policy is not None and policy.applies(key):
                order, prop = explore(slot, inputs.take(slice(s, e)), m, settings.top_k, policy, key)
                explored += 1
                props = prop[order]
            else:
                order, props = greedy, np.ones(len(greedy))
            out["hit"].append((order == greedy) * 1.0)
            shown_rows.append(s + order)
            shown_pos.append(np.arange(len(order)))
            out["request"].append(np.full(len(order), r))
            out["prop"].append(props)
        rows, pos = np.concatenate(shown_rows), np.concatenate(shown_pos)
        clicks = (uniform[rows] < relevance[rows] * examine[pos]).astype(np.float64)
        session.model.learn_many(session.featurizer.with_positions(inputs.take(rows), pos), clicks)
        out["row"].append(rows)
        out["pos"].append(pos)
    rows, pos = np.concatenate(out["row"]), np.concatenate(out["pos"])
    prob = relevance[rows] * examine[pos]
    return ArmLog(
        request=np.concatenate(out["request"]),
        hour=(data.ts_us[lo:hi][rows] // _HOUR_US).astype(np.int64),
        young=young[rows],
        prob=prob,
        click=(uniform[rows] < prob).astype(np.float64),
        propensity=np.concatenate(out["prop"]),
        explored_requests=explored,
        greedy_hit=np.concatenate(out["hit"]),
    )


def _hour_sums(arm: ArmLog, hours: np.ndarray) -> np.ndarray:
    """Per hour (``hours`` order): [impressions, expected clicks, young impressions,
    young expected clicks, drawn clicks, drawn young clicks]."""
    index = np.searchsorted(hours, arm.hour)
    cols = [np.ones_like(arm.prob), arm.prob, arm.young * 1.0, arm.prob * arm.young,
            arm.click, arm.click * arm.young]
    return np.stack([np.bincount(index, weights=c, minlength=len(hours)) for c in cols], axis=1)


def _rates(sums: np.ndarray) -> np.ndarray:
    """[CTR_all, CTR_young, young share of impressions] from summed hour columns (..., 6)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.stack([sums[..., 1] / sums[..., 0], sums[..., 3] / sums[..., 2],
                         sums[..., 2] / sums[..., 0]], axis=-1)


def _interval(draws: np.ndarray) -> list[float]:
    lo, hi = np.nanpercentile(draws, [2.5, 97.5])
    return [float(lo), float(hi)]


def compare(greedy: ArmLog, explored: ArmLog, settings: ExploreSettings) -> dict[str, Any]:
    """Both arms' click rates, the paired differences with intervals, and the verdict."""
    hours = np.unique(np.concatenate([greedy.hour, explored.hour]))
    g, e = _hour_sums(greedy, hours), _hour_sums(explored, hours)
    rng = np.random.default_rng(0)
    picks = rng.integers(0, len(hours), size=(settings.resamples, len(hours)))
    weights = np.stack([np.bincount(p, minlength=len(hours)) for p in picks]).astype(np.float64)
    rg, re_ = _rates(weights @ g), _rates(weights @ e)
    point_g, point_e = _rates(g.sum(axis=0)), _rates(e.sum(axis=0))
    young_gain = re_[:, 1] - rg[:, 1]
    overall = re_[:, 0] / rg[:, 0] - 1.0
    young_ci, overall_ci = _interval(young_gain), _interval(overall)
    passes_young = young_ci[0] > 0
    within_budget = overall_ci[0] > -settings.budget
    shown = explored.propensity[explored.propensity < 1.0]

    def arm(point: np.ndarray, draws: np.ndarray, log: ArmLog) -> dict[str, Any]:
        return {
            "ctr_all": float(point[0]), "ctr_all_ci": _interval(draws[:, 0]),
            "ctr_young": float(point[1]), "ctr_young_ci": _interval(draws[:, 1]),
            "young_share": float(point[2]), "impressions": int(len(log.prob)),
            "drawn_clicks": int(log.click.sum()), "explored_requests": int(log.explored_requests),
        }

    return {
        "settings": settings.to_dict(),
        "rule": JUDGEMENT,
        "hours": int(len(hours)),
        "requests": int(len(np.unique(greedy.request))),
        "greedy": arm(point_g, rg, greedy),
        "explore": arm(point_e, re_, explored),
        "young_gain": float(point_e[1] - point_g[1]), "young_gain_ci": young_ci,
        "overall_change": float(point_e[0] / point_g[0] - 1.0), "overall_change_ci": overall_ci,
        "young_share_change": float(point_e[2] - point_g[2]),
        "propensity_explored": {
            "n": int(shown.size),
            "median": float(np.median(shown)) if shown.size else math.nan,
            "min": float(shown.min()) if shown.size else math.nan,
        },
        "passes_young": bool(passes_young),
        "within_budget": bool(within_budget),
        "verdict": "pass" if passes_young and within_budget else "miss",
    }
