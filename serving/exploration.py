"""Thompson-sampling exploration in Rank, and the propensity of what it showed.

A new item has no impressions, so the online correction has nothing to say about it and the
base's hashed row ranks it; if that keeps it below the fold it is never shown, so never
learned. The online layer keeps a diagonal Gaussian posterior over its weights
(``online_layer.posterior``, Chapelle & Li 2011); exploring means ranking by one draw from
that posterior instead of its mean: items whose weights are uncertain (new ones) move most.

The policy (``ExplorationPolicy``; off by default):

- ``share``: the share of requests that explore, chosen by a stable hash of the request id
  (the same answer in every replica and on a retry, like the canary's user hash);
- ``slots``: in an exploring request, how many of the last of the ``top_k`` positions are
  filled by the sample (the first ``top_k - slots`` stay the mean's greedy order, with
  propensity 1.0); 0 means every position;
- ``scale``: multiplies the posterior's standard deviation (Chapelle & Li's variance scaling);
- ``samples``: Monte Carlo draws for the propensity when ``propensity_draws`` is 0;
- ``propensity_draws``: draws for the Rao-Blackwellised propensity (below); 0: Monte Carlo;
- ``focus``: which weights the sample draws: ``"all"`` (the whole posterior) or ``"item"``
  (only the item-id weight, the rest at its mean: the uncertainty aimed at new items, whose
  id weight no example touched, rather than spread over the user, category and dense
  weights every candidate of a request shares in part).

The propensity logged for a shown item (the served log's ``propensity``) is the probability
that the randomised policy shows it at its position (among the explored positions: the
pool after the greedy head, ranked by one posterior draw, ties to the lower index).

**Rao-Blackwellised** (``propensity_draws >= 1``, the default): the request's stream
(``fr-draws``, as before) gives ``1 + propensity_draws`` draws; the first is served (the
very order the Monte Carlo estimator serves with ``samples = propensity_draws``; for focus
``"item"``, with any ``samples``), the others, independent of it, give the propensity. In a
draw, item ``i``'s score is ``r_i + x_i w_i`` with ``w_i`` its own item-id
weight's zero-mean draw, ``N(0, (scale x_i)^2 / precision_i)``, independent of the rest of
the draw, ``x_i`` the count of that coordinate among the row's drawn cells (1 unless
another of its slots hashes there) and ``r_i`` everything else (clipped as serving clips
the correction: ``base + clip(. - base, +-max_correction)``, handled exactly, so the clip's
point masses are in). With ``s_(1) >= s_(2) >= ...`` the other pool rows' scores in that
draw, ``P(i at position j | rest) = P(s_(j+1) < score_i < s_(j))``, a difference of two
normal tail probabilities (each from ``erfc``, no cancellation; an interval narrower than
0.05 standard deviations, within 6 of the mean, by the midpoint rule with its second-order
term: relative error below 1e-5); ``s_(0) = +inf`` (position
0 has no upper neighbour) and ``s_(n) = -inf`` below the pool's last row. The top_k
boundary changes nothing: position ``j`` is a position of the pool's whole order, shown
when ``j < k``. The propensity is the mean over draws: unbiased for the policy's
probability, never above 1, summed over positions never above 1, and not floored (a
result below float32's smallest normal, 1.2e-38, is logged as that: the events table
stores float32 and an off-policy estimate divides by it; it needs every draw's
probability to underflow). Assumed: exact score ties have probability 0 (they would need
two rows' clipped scores to coincide; the served order breaks them by index, the
estimator ignores them). Where the item's own coordinate is shared with another pool row
in a drawn slot (a hashed-id collision or a repeated item: their weights are one draw), the
conditional is not the formula's, so those rows fall back to the Monte Carlo share over the
same draws, served draw counted: ``(1 + hits) / (1 + propensity_draws)`` (floored at that,
biased upward by at most as much; rare: a collision among the pool's item ids, or with
another slot's index under focus "all").

**Monte Carlo** (``propensity_draws = 0``, the pre-registered estimator): ``samples``
further draws of the same posterior from the same stream plus the served one:
``(1 + hits) / (1 + samples)``; never zero, floored at ``1 / (1 + samples)``.

The draws are seeded by the request id, so a request's ranking and propensities are
reproducible.

An exploring reply lists the items in the sample's order with their posterior-mean scores
(so its scores need not be sorted); Status counts a replica's exploring requests.

The switch lives with the other operator controls (``serving.admin.Controls``): the
``SetExploration`` rpc / ``freshrank explore on|off`` changes it in place on every replica,
any of its settings (``propensity_draws`` too: ``--propensity-draws N``); a setting the call
leaves out keeps the running policy's value (``changed_policy``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from online_layer._ftrl import slot_probabilities
from online_layer.features import SLOTS
from protos.errors import InvalidInput
from serving.plan import in_share, stable_digest

if TYPE_CHECKING:
    from online_layer.features import OnlineInputs
    from online_layer.posterior import NoiseParts
    from protos.freshrank.v1 import ranking_pb2
    from serving.config import ServingConfig
    from serving.ranking import OnlineSlot

__all__ = ["ExplorationPolicy", "changed_policy", "explore", "explores", "fill_exploration_status", "rao_blackwell"]

MAX_SAMPLES = 1024
MAX_SCALE = 10.0
ITEM = SLOTS.index("item")
FOCUS: dict[str, tuple[int, ...] | None] = {"all": None, "item": (ITEM,)}
FLOOR = float(np.finfo(np.float32).tiny)  # the smallest propensity logged (module docstring)


@dataclass(frozen=True)
class ExplorationPolicy:
    """When and how Rank explores (module docstring). Frozen; replaced by the operator."""

    enabled: bool = False
    share: float = 0.05
    slots: int = 0
    scale: float = 1.0
    samples: int = 64
    focus: str = "all"
    propensity_draws: int = 8

    def __post_init__(self) -> None:
        if not isinstance(self.enabled, bool):
            raise InvalidInput(f"exploration.enabled must be true or false, got {self.enabled!r}")
        if not (isinstance(self.share, (int, float)) and math.isfinite(self.share) and 0.0 <= self.share <= 1.0):
            raise InvalidInput(f"exploration.share must be in [0, 1], got {self.share!r}")
        if isinstance(self.slots, bool) or not isinstance(self.slots, int) or self.slots < 0:
            raise InvalidInput(f"exploration.slots must be an integer >= 0, got {self.slots!r}")
        if not (isinstance(self.scale, (int, float)) and math.isfinite(self.scale) and 0.0 < self.scale <= MAX_SCALE):
            raise InvalidInput(f"exploration.scale must be in (0, {MAX_SCALE:g}], got {self.scale!r}")
        if isinstance(self.samples, bool) or not isinstance(self.samples, int) or not 1 <= self.samples <= MAX_SAMPLES:
            raise InvalidInput(f"exploration.samples must be an integer in [1, {MAX_SAMPLES}], got {self.samples!r}")
        if (isinstance(self.propensity_draws, bool) or not isinstance(self.propensity_draws, int)
                or not 0 <= self.propensity_draws <= MAX_SAMPLES):
            raise InvalidInput(f"exploration.propensity_draws must be an integer in [0, {MAX_SAMPLES}], "
                               f"got {self.propensity_draws!r}")
        if self.focus not in FOCUS:
            raise InvalidInput(f"exploration.focus must be one of {', '.join(FOCUS)}, got {self.focus!r}")
        object.__setattr__(self, "share", float(self.share))
        object.__setattr__(self, "scale", float(self.scale))

    @classmethod
    def of(cls, config: ServingConfig) -> ExplorationPolicy:
        """The policy a replica starts with: ``[serving] explore_*``."""
        return cls(config.explore_enabled, config.explore_share, config.explore_slots,
                   config.explore_scale, config.explore_samples, config.explore_focus,
                   config.explore_propensity_draws)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ExplorationPolicy:
        unknown = sorted(set(values) - set(cls.__dataclass_fields__))
        if unknown:
            raise InvalidInput(f"unknown exploration setting(s): {', '.join(unknown)}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def with_changes(self, **changes: Any) -> ExplorationPolicy:
        return replace(self, **changes)

    def describe(self) -> str:
        if not self.enabled:
            return "off"
        where = "all slots" if self.slots == 0 else f"last {self.slots} slots"
        aim = "" if self.focus == "all" else f", {self.focus} weights only"
        how = (f"propensity_draws 0 (Monte Carlo, {self.samples} samples)" if self.propensity_draws == 0
               else f"propensity_draws {self.propensity_draws} (Rao-Blackwellised)")
        return f"on: {self.share:g} of requests, {where}, scale {self.scale:g}, {how}{aim}"

    def applies(self, request_id: str) -> bool:
        """Whether this request explores (on, and its id falls in ``share``)."""
        return self.enabled and explores(request_id, self.share)


def changed_policy(
    current: dict[str, Any] | None, config: ServingConfig, changes: dict[str, Any]
) -> tuple[ExplorationPolicy, ExplorationPolicy]:
    """The running policy and the one an operator's ``changes`` make of it (``SetExploration``):
    ``current`` is the operator's last policy (``serving.admin.Controls.exploration``), None
    while no operator has set one (then the settings' ``[serving] explore_*``); a setting
    absent from ``changes`` keeps the running value.

    Raises:
        InvalidInput: naming the setting, when the changed policy is not valid.
    """
    old = ExplorationPolicy.from_dict(current) if current is not None else ExplorationPolicy.of(config)
    return old, old.with_changes(**changes)


def explores(request_id: str, share: float) -> bool:
    """Whether ``request_id`` falls in an exploration ``share``: a stable hash of the id,
    salted apart from the canary's user hash (so the two splits are independent)."""
    return in_share(request_id, share, b"fr-explore")


def _top(samples: np.ndarray, k: int) -> np.ndarray:
    """Each row's ``k`` largest columns, best first, ties to the lower column: ``(S, k)``."""
    return np.argsort(-samples, axis=1, kind="stable")[:, :k]


def _hits(samples: np.ndarray, served: np.ndarray) -> np.ndarray:
    """How many draws (rows of ``samples``) put ``served[j]`` at position ``j``, per ``j``.

    The item at position ``j`` of a draw is ``served[j]`` exactly when the draw's ``j``-th
    largest value is ``served[j]``'s value and no other item of the first ``k + 1`` shares
    a value with it; so one sort of the values per draw (partial when ``k`` is below the
    pool) and one comparison decide, with no argsort of every draw. A draw with a tie among
    its first ``k + 1`` values is counted by its stable argsort instead (the same rule as
    the served order: ties go to the lower index).
    """
    n_draws, pool = samples.shape
    k = served.shape[0]
    m = min(k + 1, pool)
    if m < pool:
        desc = -np.partition(-samples, m - 1, axis=1)[:, :m]
        desc = -np.sort(-desc, axis=1)
    else:
        desc = np.sort(samples, axis=1)[:, ::-1]
    equal = desc[:, :k] == samples[:, served]
    tied = (desc[:, 1:] == desc[:, :-1]).any(axis=1)
    if tied.any():
        equal[tied] = _top(samples[tied], k) == served[None, :]
    return equal.sum(axis=0)


def explore(
    slot: OnlineSlot,
    inputs: OnlineInputs,
    mean_logits: np.ndarray,
    top_k: int,
    policy: ExplorationPolicy,
    request_id: str,
) -> tuple[np.ndarray, np.ndarray]:
    """The exploring order (indices into the candidates, best first, ``top_k`` of them) and
    every candidate's propensity (candidate order; meaningful for the shown ones: 1.0 in the
    greedy head, the estimated probability in the explored slots: module docstring)."""
    n = len(mean_logits)
    k = min(top_k, n)
    greedy = np.argsort(-mean_logits, kind="stable")
    head = 0 if policy.slots == 0 else max(k - policy.slots, 0)
    propensity = np.ones(n, dtype=np.float64)
    if k - head <= 0:
        return greedy[:k], propensity
    pool = greedy[head:]
    rng = np.random.default_rng(stable_digest(request_id, b"fr-draws"))
    sub = inputs.take(pool)
    columns = FOCUS[policy.focus]
    pool_mean = mean_logits[pool]
    if policy.propensity_draws:
        # Row 0 is served (the Monte Carlo estimator's row 0 at samples = propensity_draws);
        # rows 1.. are the propensity's draws, independent of it.
        parts = slot.model.sample_noise_parts(sub, rng, 1 + policy.propensity_draws, policy.scale, columns, ITEM)
        served = _top(_clipped(slot, sub, pool_mean[None, :] + parts.noise[:1]), k - head)[0]
        propensity[pool[served]] = _conditional(slot, sub, pool_mean, served, parts, first=1)
        return np.concatenate([greedy[:head], pool[served]]), propensity
    # Monte Carlo: draws around the served (clipped) mean, clipped again as serving clips.
    noise = slot.model.sample_noise(sub, rng, n_samples=1 + policy.samples, scale=policy.scale,
                                    columns=columns)
    samples = _clipped(slot, sub, pool_mean[None, :] + noise)
    served = _top(samples[:1], k - head)[0]  # indices into pool
    hits = 1 + _hits(samples[1:], served)  # the served draw counts once
    propensity[pool[served]] = hits / samples.shape[0]
    return np.concatenate([greedy[:head], pool[served]]), propensity


def _clipped(slot: OnlineSlot, sub: OnlineInputs, samples: np.ndarray) -> np.ndarray:
    """Draws of the logits, clipped as serving clips the correction (in place)."""
    if math.isfinite(slot.max_correction):
        base = sub.base_logit[None, :]
        samples -= base
        np.clip(samples, -slot.max_correction, slot.max_correction, out=samples)
        samples += base
    return samples


def _descending(samples: np.ndarray, m: int) -> np.ndarray:
    """Each row's ``m`` largest values, descending (a new C-ordered array)."""
    part = -samples
    if m < samples.shape[1]:
        part = np.ascontiguousarray(np.partition(part, m - 1, axis=1)[:, :m])
    part.sort(axis=1)
    return np.negative(part, out=part)


def rao_blackwell(
    slot: OnlineSlot,
    pool: OnlineInputs,
    mean_logits: np.ndarray,
    served: np.ndarray,
    policy: ExplorationPolicy,
    rng: np.random.Generator,
) -> np.ndarray:
    """The Rao-Blackwellised probability that pool row ``served[j]`` lands at position ``j``
    of the pool's sampled order, for every ``j`` (module docstring), from
    ``policy.propensity_draws`` draws of ``rng`` under ``policy.focus`` and ``policy.scale``.
    ``mean_logits``: the pool's (served, clipped) mean logits. ``served`` need not be an
    order: a row repeated at every position gives its whole row of slot probabilities."""
    parts = slot.model.sample_noise_parts(pool, rng, max(policy.propensity_draws, 1), policy.scale,
                                          FOCUS[policy.focus], ITEM)
    return _conditional(slot, pool, mean_logits, served, parts)


def _conditional(slot: OnlineSlot, pool: OnlineInputs, mean_logits: np.ndarray, served: np.ndarray,
                 parts: NoiseParts, first: int = 0) -> np.ndarray:
    """``rao_blackwell`` given the draws (rows ``first``.. of ``parts``), in the kernel."""
    served = np.ascontiguousarray(served, dtype=np.int64)
    unclipped = mean_logits[None, :] + parts.noise[first:]
    rest = unclipped - parts.own[first:]
    scores = _clipped(slot, pool, unclipped)  # in place: ``rest`` is its own array
    out = np.empty(served.size, dtype=np.float64)
    cap = slot.max_correction if math.isfinite(slot.max_correction) else math.inf
    slot_probabilities(scores, _descending(scores, min(served.size + 1, len(pool))), rest,
                       np.ascontiguousarray(pool.base_logit, dtype=np.float64), parts.own_sd,
                       parts.alone.view(np.uint8), served, cap, out)
    return np.maximum(out, FLOOR, out=out)


def fill_exploration_status(reply: ranking_pb2.StatusReply, policy: ExplorationPolicy, explored: int) -> None:
    """Copy the replica's exploration policy and its count of exploring requests into Status."""
    reply.exploration_enabled = policy.enabled
    reply.exploration_share = policy.share
    reply.exploration_slots = policy.slots
    reply.exploration_scale = policy.scale
    reply.exploration_samples = policy.samples
    reply.exploration_propensity_draws = policy.propensity_draws
    reply.requests_explored = explored
