"""One online layer: everything the learner holds for one base version, and its learning step.

Weights learned against one base mean nothing on another, so all of this state (model,
featurizer, waiting examples, replay buffer, progressive metrics, counters, publishing) is
one object: ``OnlineLearner.rebase`` starts a new ``Layer`` instead of resetting fields.
What outlives a base (the join, the label-rate guard, the feedback counters, the snapshot
sink) stays with the learner.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from online_layer.batching import PendingExamples
from online_layer.defences import clip_correction
from online_layer.factory import new_model
from online_layer.features import OnlineFeaturizer, OnlineInputs
from online_layer.metrics import ProgressiveMetrics, RollingWindow
from online_layer.model import OnlineModel
from online_layer.publishing import PublishState, Sequencer
from online_layer.replay import ReplayBuffer
from protos.metrics import log_losses_from_logits

if TYPE_CHECKING:
    from online_layer.config import OnlineLayerConfig


@dataclass(eq=False)
class Layer:
    """The online layer of generation ``generation``, correcting ``model.base_version``.

    ``first_day``/``last_day`` bound the event time (days since the epoch) of what it
    learned, for lineage.
    """

    generation: int
    featurizer: OnlineFeaturizer
    model: OnlineModel
    pending: PendingExamples
    replay: ReplayBuffer | None
    metrics: ProgressiveMetrics
    rolling: RollingWindow
    publishing: PublishState
    batches: int = 0
    examples: int = 0
    replayed: int = 0
    warm_start: int = 0
    learn_seconds: float = 0.0
    first_day: int | None = None
    last_day: int | None = None
    max_correction: float = math.inf  # the most logits the layer may move a score

    @classmethod
    def start(
        cls,
        cfg: OnlineLayerConfig,
        base_version: str,
        embedding_dim: int,
        fresh_features: Sequence[str],
        generation: int,
        now: float,
        sequencer: Sequencer | None = None,
    ) -> Layer:
        """A fresh layer with zero weights: it scores exactly the base."""
        featurizer = OnlineFeaturizer(
            embedding_dim, fresh_features, cfg.hash_bits, cfg.position_buckets
        )
        model = new_model(
            cfg.implementation, featurizer.n_dense, cfg.hash_bits, base_version, cfg.ftrl_params()
        )
        replay = (
            ReplayBuffer(cfg.replay_capacity, featurizer.n_dense, featurizer.n_sparse, cfg.seed)
            if cfg.replay_fraction > 0
            else None
        )
        return cls(
            generation=generation,
            featurizer=featurizer,
            model=model,
            pending=PendingExamples(),
            replay=replay,
            metrics=ProgressiveMetrics(),
            rolling=RollingWindow(cfg.readiness_window),
            publishing=PublishState(cfg.keep_snapshots, now, sequencer),
            max_correction=cfg.guard.max_correction,
        )

    @property
    def base_version(self) -> str:
        return self.model.base_version

    def learn(
        self,
        served: OnlineInputs,
        positions: np.ndarray,
        labels: np.ndarray,
        days: np.ndarray,
        arrived: np.ndarray,
        replay_fraction: float,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Progressive validation, then one ``learn_many``; returns the per-example log
        losses (hybrid, base) of the progressive scoring, for the circuit breaker.

        The batch is first scored as serving scores it (``served``: rank-time position
        token; the correction clipped to ``max_correction``) and by the base alone; then
        learned with the positions it was shown at,
        plus ``replay_fraction`` of its size sampled from the replay buffer. ``days``
        (datetime64[D]) buckets the metrics, ``arrived`` (unix seconds, NaN: unknown)
        feeds the publish latency.
        """
        n = labels.shape[0]
        start = time.perf_counter()
        base = served.base_logit
        hybrid = self.score(served)
        self.metrics.update(days, labels, hybrid, base)
        self.rolling.add(labels, hybrid, base)
        shown = self.featurizer.with_positions(served, positions)
        learn_inputs, learn_labels = shown, labels
        if self.replay is not None:
            sample = self.replay.sample(int(round(replay_fraction * n)))
            if sample is not None:
                learn_inputs = OnlineInputs.concat([shown, sample[0]])
                learn_labels = np.concatenate([labels, sample[1]])
                self.replayed += len(sample[0])
            self.replay.add(shown, labels)
        self.model.learn_many(learn_inputs, learn_labels)
        self.learn_seconds += time.perf_counter() - start
        self.batches += 1
        self.examples += n
        self.publishing.note_batch(arrived)
        valid_days = days[~np.isnat(days)]
        if valid_days.size:
            lo = int(valid_days.min().astype(np.int64))
            hi = int(valid_days.max().astype(np.int64))
            self.first_day = lo if self.first_day is None else min(self.first_day, lo)
            self.last_day = hi if self.last_day is None else max(self.last_day, hi)
        return log_losses_from_logits(labels, hybrid), log_losses_from_logits(labels, base)

    def score(self, inputs: OnlineInputs) -> np.ndarray:
        """Hybrid logits as serving computes them: the correction clipped to
        ``max_correction`` (``online_layer.defences.clip_correction``)."""
        logits = self.model.predict_many(inputs)
        if math.isfinite(self.max_correction):
            logits = clip_correction(inputs.base_logit, logits, self.max_correction)
        return logits

    def rollback(self, before: float | None = None) -> str | None:
        """Restore the last ready snapshot (with ``before``: the newest one published
        before that time, else the oldest kept); the rolling window restarts, so readiness
        must be earned again. Returns the restored version, or None when there is none."""
        snap = self.publishing.last_ready(before)
        if snap is None:
            return None
        self.model.restore(snap.blob, self.base_version)
        self.rolling.clear()
        self.publishing.rolled_back()
        return snap.version
