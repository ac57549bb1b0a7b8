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
- ``samples``: Monte Carlo draws for the propensity;
- ``focus``: which weights the sample draws: ``"all"`` (the whole posterior) or ``"item"``
  (only the item-id weight, the rest at its mean: the uncertainty aimed at new items, whose
  id weight no example touched, rather than spread over the user, category and dense
  weights every candidate of a request shares in part).

The propensity logged for a shown item (the served log's ``propensity``) is the probability
that the randomised policy shows it at its position, estimated from ``samples`` further
draws of the same posterior plus the served one: ``(1 + hits) / (1 + samples)``; never zero,
so an off-policy estimate can divide by it. The draws are seeded by the request id, so a
request's ranking and propensities are reproducible.

An exploring reply lists the items in the sample's order with their posterior-mean scores
(so its scores need not be sorted); Status counts a replica's exploring requests.

The switch lives with the other operator controls (``serving.admin.Controls``): the
``SetExploration`` rpc / ``freshrank explore on|off`` changes it in place on every replica.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from online_layer.features import SLOTS
from protos.errors import InvalidInput
from serving.plan import in_share, stable_digest

if TYPE_CHECKING:
    from online_layer.features import OnlineInputs
    from protos.freshrank.v1 import ranking_pb2
    from serving.config import ServingConfig
    from serving.ranking import OnlineSlot

__all__ = ["ExplorationPolicy", "explore", "explores", "fill_exploration_status"]

MAX_SAMPLES = 1024
MAX_SCALE = 10.0
FOCUS: dict[str, tuple[int, ...] | None] = {"all": None, "item": (SLOTS.index("item"),)}


@dataclass(frozen=True)
class ExplorationPolicy:
    """When and how Rank explores (module docstring). Frozen; replaced by the operator."""

    enabled: bool = False
    share: float = 0.05
    slots: int = 0
    scale: float = 1.0
    samples: int = 64
    focus: str = "all"

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
        if self.focus not in FOCUS:
            raise InvalidInput(f"exploration.focus must be one of {', '.join(FOCUS)}, got {self.focus!r}")
        object.__setattr__(self, "share", float(self.share))
        object.__setattr__(self, "scale", float(self.scale))

    @classmethod
    def of(cls, config: ServingConfig) -> ExplorationPolicy:
        """The policy a replica starts with: ``[serving] explore_*``."""
        return cls(config.explore_enabled, config.explore_share, config.explore_slots,
                   config.explore_scale, config.explore_samples, config.explore_focus)

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
        return f"on: {self.share:g} of requests, {where}, scale {self.scale:g}, {self.samples} samples{aim}"

    def applies(self, request_id: str) -> bool:
        """Whether this request explores (on, and its id falls in ``share``)."""
        return self.enabled and explores(request_id, self.share)


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
    greedy head, the Monte Carlo probability in the explored slots)."""
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
    # Draws around the served (clipped) mean, clipped again as serving clips the correction.
    noise = slot.model.sample_noise(sub, rng, n_samples=1 + policy.samples, scale=policy.scale,
                                    columns=FOCUS[policy.focus])
    samples = mean_logits[pool][None, :] + noise
    if math.isfinite(slot.max_correction):
        base = sub.base_logit[None, :]
        samples = base + np.clip(samples - base, -slot.max_correction, slot.max_correction)
    served = _top(samples[:1], k - head)[0]  # indices into pool
    hits = 1 + _hits(samples[1:], served)  # the served draw counts once
    propensity[pool[served]] = hits / samples.shape[0]
    return np.concatenate([greedy[:head], pool[served]]), propensity


def fill_exploration_status(reply: ranking_pb2.StatusReply, policy: ExplorationPolicy, explored: int) -> None:
    """Copy the replica's exploration policy and its count of exploring requests into Status."""
    reply.exploration_enabled = policy.enabled
    reply.exploration_share = policy.share
    reply.exploration_slots = policy.slots
    reply.exploration_scale = policy.scale
    reply.exploration_samples = policy.samples
    reply.requests_explored = explored
