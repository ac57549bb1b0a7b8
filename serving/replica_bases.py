"""One Ranker replica's bases: the champion, a staged candidate, and the ones kept for a
fast rollback; which serves a request; and the shadow comparison.

During a canary, ``serving.interleave_share`` of the champion's requests are interleaved
(``interleave``): both bases rank the request and the reply is the team-draft
interleaving of the two rankings (``serving.interleaving``), logged with the team of each
shown item and the champion's scores and online inputs.

A plan (``serving.plan``) names the bases; ``load`` builds a ``HybridRanker`` for each one
not yet loaded (off the request path: the caller runs it in a thread), and ``apply`` then
switches by reference assignment, so a request in flight finishes on the ranker it
started with and no request fails during a swap. At most ``serving.base_cache`` bases stay
loaded (least recently needed dropped first), so a rollback to the previous champion is a
switch, not a load.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import OrderedDict
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np

from serving.exploration import ExplorationPolicy
from serving.interleaving import team_draft
from serving.plan import CANARY, ServingPlan, in_canary
from serving.shadow import ShadowStats

if TYPE_CHECKING:
    from feature_store.online import OnlineFeatureReader
    from serving.ranking import HybridRanker, RankOutcome
    from serving.requests import RankQuery
    from serving.settings import Settings

logger = logging.getLogger(__name__)

__all__ = ["MAX_SHADOW_IN_FLIGHT", "ReplicaBases", "interleaved_outcome"]

MAX_SHADOW_IN_FLIGHT = 4  # shadow scorings waiting at once; more are skipped (counted)


class ReplicaBases:
    """Loaded bases, the plan in force, routing and shadow stats of one replica."""

    def __init__(self, settings: Settings, features: OnlineFeatureReader, champion: HybridRanker) -> None:
        self._settings = settings
        self._features = features
        self._loaded: OrderedDict[str, HybridRanker] = OrderedDict({champion.base_version: champion})
        self.champion = champion
        self.candidate: HybridRanker | None = None
        self.plan: ServingPlan | None = None
        self.shadow = ShadowStats()
        self._shadow_lock = threading.Lock()
        self._in_flight = 0
        self.shadow_skipped = 0
        self._random = random.Random(0)
        self._enabled = bool(settings.serving.online_enabled)
        self.exploration = champion.exploration  # serving.exploration: the operator's policy

    # -- plans -----------------------------------------------------------------------------

    def load(self, plan: ServingPlan) -> None:
        """Build a ranker for every base of ``plan`` not loaded yet (slow: run in a thread)."""
        for version in plan.bases:
            if version not in self._loaded:
                ranker = self._build(version)
                self._loaded[version] = ranker
                logger.info("loaded base %s", version)

    def apply(self, plan: ServingPlan) -> list[str]:
        """Switch to ``plan`` (its bases loaded); returns the base versions that changed
        role (whose online slots the caller must refresh)."""
        changed = []
        champion = self._loaded[plan.champion]
        if champion is not self.champion:
            changed.append(plan.champion)
            if champion.online is None or champion.online.base_version != plan.champion:
                champion.install_online(None)
            champion.absent_detail = plan.detail or "no online weights loaded"
        candidate = self._loaded[plan.candidate] if plan.candidate else None
        if candidate is not None and candidate is not self.candidate:
            changed.append(plan.candidate)
            candidate.install_online(None)  # a canary gets its own layer's weights
            candidate.absent_detail = f"candidate {plan.candidate}: its canary layer is not ready"
        # The switch itself: reference assignments, read once per request.
        self.champion, self.candidate, self.plan = champion, candidate, plan
        if self.shadow.serial != plan.serial:
            with self._shadow_lock:
                self.shadow.reset(plan.serial)
        for version in plan.bases:
            self._loaded.move_to_end(version)
        while len(self._loaded) > self._settings.serving.base_cache:
            oldest = next(iter(self._loaded))
            if oldest in plan.bases:
                break
            del self._loaded[oldest]
        return changed

    def _build(self, version: str) -> HybridRanker:
        from base_model.artifact import BaseScorer
        from online_layer.features import OnlineFeaturizer
        from protos.registry import ModelRegistry
        from serving.ranking import HybridRanker

        path = ModelRegistry(self._settings.registry_dir).get("base", version).path
        base = BaseScorer.load(path)
        cfg = self._settings.online_layer
        featurizer = OnlineFeaturizer(
            base.embedding_dim, hash_bits=cfg.hash_bits, position_buckets=cfg.position_buckets
        )
        ranker = HybridRanker(self._features, base, featurizer, self._settings.serving)
        ranker.set_enabled(self._enabled)
        ranker.exploration = self.exploration
        return ranker

    def set_exploration(self, policy: ExplorationPolicy) -> bool:
        """The operator's exploration policy, for every loaded base; whether it changed."""
        changed, self.exploration = policy != self.exploration, policy
        for ranker in self._loaded.values():
            ranker.exploration = policy
        return changed

    def set_enabled(self, enabled: bool) -> None:
        """The operator's switch, for every loaded base."""
        self._enabled = bool(enabled)
        for ranker in self._loaded.values():
            ranker.set_enabled(self._enabled)

    def ranker(self, base_version: str) -> HybridRanker | None:
        return self._loaded.get(base_version)

    def all(self) -> list[HybridRanker]:
        return list(self._loaded.values())

    # -- requests --------------------------------------------------------------------------

    def route(self, user_id: str) -> tuple[HybridRanker, bool]:
        """(the ranker serving ``user_id``, whether it is the candidate)."""
        plan, candidate = self.plan, self.candidate
        if plan is not None and candidate is not None and plan.phase == CANARY and in_canary(user_id, plan.share):
            return candidate, True
        return self.champion, False

    def interleave(
        self, query: RankQuery, outcome: RankOutcome, by_candidate: bool
    ) -> tuple[RankOutcome, np.ndarray] | None:
        """For ``serving.interleave_share`` of the champion's requests during a canary (by
        a hash of the request id): ``outcome`` (the champion's) shown as the interleaving
        of its ranking and the candidate's, with the teams; None: served as it is."""
        plan, candidate = self.plan, self.candidate
        share = self._settings.serving.interleave_share
        if (by_candidate or candidate is None or plan is None or plan.phase != CANARY
                or not in_canary(f"interleave\x1f{query.request_id}", share)):
            return None
        return interleaved_outcome(outcome, candidate.rank(query), plan.serial)

    def wants_shadow(self, by_candidate: bool) -> HybridRanker | None:
        """After a champion-served request while a candidate is staged: the candidate to
        shadow-score it with, for ``serving.shadow_share`` of them (None otherwise)."""
        candidate = self.candidate
        if candidate is None:
            return None
        self.shadow.served(by_candidate)
        if by_candidate or self._random.random() >= self._settings.serving.shadow_share:
            return None
        with self._shadow_lock:
            if self._in_flight >= MAX_SHADOW_IN_FLIGHT:
                self.shadow_skipped += 1
                return None
            self._in_flight += 1
        return candidate

    def shadow_score(self, query: RankQuery, champion: HybridRanker, candidate: HybridRanker) -> None:
        """Score ``query`` with both bases and fold the comparison in (runs in a thread)."""
        try:
            t0 = time.perf_counter()
            champ = champion.base_logits(query)
            t1 = time.perf_counter()
            cand = candidate.base_logits(query)
            t2 = time.perf_counter()
            with self._shadow_lock:
                if self.plan is not None and self.candidate is candidate:
                    self.shadow.add(champ, cand, query.top_k, (t1 - t0) * 1e3, (t2 - t1) * 1e3)
        except Exception:
            logger.exception("shadow scoring failed (never served; the champion answered)")
        finally:
            with self._shadow_lock:
                self._in_flight -= 1

    def shadow_stats(self) -> dict[str, Any]:
        with self._shadow_lock:
            return self.shadow.to_dict()


def interleaved_outcome(
    champion: RankOutcome, candidate: RankOutcome, salt: str
) -> tuple[RankOutcome, np.ndarray]:
    """``champion`` re-ordered as the team-draft interleaving of both outcomes' rankings
    (all candidates, best first; the coins from the request id and ``salt``, the plan's
    serial), and the team of each shown item. Scores and online inputs stay the
    champion's; the propensity is dropped (an interleaved list is not the champion's
    policy: off-policy estimates leave these rows out)."""
    ours = np.argsort(-champion.final_logits, kind="stable").tolist()
    theirs = np.argsort(-candidate.final_logits, kind="stable").tolist()
    mixed = team_draft(ours, theirs, len(champion.order), champion.query.request_id, salt)
    order = np.asarray(mixed.items, dtype=np.int64)
    return replace(champion, order=order, propensity=None), np.asarray(mixed.teams, dtype=np.int8)
