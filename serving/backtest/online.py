"""The backtest's online layer: one session per base, learning test-then-train.

Calls the online tier through its public API: ``online_layer.features.OnlineFeaturizer`` +
``online_layer.ftrl.FTRLProximal`` (or the NumPy reference) learning per mini-batch; the
hybrid logit is ``model.predict_many`` (``base_logit + w . x``), the same call
``serving.ranking.HybridRanker.rank`` makes, turned into a probability by
``protos.metrics.sigmoid``. ``online_delay_us`` says when, in event time, serving's learner
would have learned an event's feedback.

Production's policy (issue 18): serving applies a layer only once it passes
``online_layer.readiness.assess`` (enough examples learned; over the rolling window of
progressively scored examples, log loss and AUC no worse than the base's), with serving's
own settings; until then a request is served by the base alone. A replica keeps the last
ready weights it installed while a later snapshot is not ready. ``OnlineSession`` keeps
that rolling window exactly as ``online_layer.layer.Layer.learn`` does (each learned batch
scored by the current weights just before it is learned, the correction clipped to
``[online_layer.guard] max_correction``), re-assesses readiness every ``batch_size``
learned examples (the learner publishes after whole batches), and reports both what was
served (``served``) and the layer's ungated score. The circuit breaker and the
manipulation guard's quarantine are not replayed (the report says so).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from feature_store.catalog import FRESH_ITEM_FEATURES
from serving.backtest.config import BacktestConfig
from serving.backtest.data import ReplayData

if TYPE_CHECKING:
    from base_model.artifact import BaseScores
    from online_layer.config import OnlineLayerConfig
    from online_layer.features import OnlineInputs

__all__ = [
    "OnlineSession",
    "SessionScores",
    "describe_online_learning",
    "no_base_scores",
    "online_delay_us",
]


def no_base_scores(logits: np.ndarray, embedding_dim: int = 1) -> BaseScores:
    """Base scores for the layer with no neural base (``serving.backtest.online_baselines``):
    the given logits and zero embeddings of ``embedding_dim`` columns (the featurizer needs
    at least one), so the embedding block of the dense features is 0 on every row."""
    from base_model.artifact import BaseScores

    zeros = np.zeros((np.asarray(logits).shape[0], embedding_dim), dtype=np.float32)
    return BaseScores(logits=np.asarray(logits, dtype=np.float64), user_embeddings=zeros,
                      item_embeddings=zeros)


def online_delay_us(cfg: BacktestConfig, online_cfg: OnlineLayerConfig) -> int | None:
    """The learning delay in microseconds of event time (None: ``online_batch`` mode).

    Serving's learner learns an example when its join window closes (``emit =
    "window_close"``: ``join_window_s`` after its request; ``"on_arrival"``: when its
    feedback arrives, taken here as the event's time), in a mini-batch closed at the latest
    ``max_batch_delay_s`` later, and serving sees it in the next snapshot, published at the
    latest ``publish_every_s`` after that. The backtest takes the latest of each: it may
    learn later than production, never earlier.
    """
    if cfg.online_batch is not None:
        return None
    if cfg.online_delay is not None:
        return int(round(cfg.online_delay.total_seconds() * 1_000_000))
    window = online_cfg.join_window_s if online_cfg.emit == "window_close" else 0.0
    seconds = window + online_cfg.max_batch_delay_s + online_cfg.publish_every_s
    return int(round(seconds * 1_000_000))


def describe_online_learning(cfg: BacktestConfig, online_cfg: OnlineLayerConfig) -> str:
    """One line for the report: which learning-delay model the replay used."""
    delay_us = online_delay_us(cfg, online_cfg)
    if delay_us is None:  # online_batch mode
        return f"mini-batches of {cfg.online_batch} events, each scored, then learned"
    delay = delay_us / 1_000_000
    if cfg.online_delay is not None:
        source = "--online-delay"
    else:
        window = f"join_window_s {online_cfg.join_window_s:g}" if online_cfg.emit == "window_close" else "emit on_arrival"
        source = (
            f"online_layer {window} + max_batch_delay_s {online_cfg.max_batch_delay_s:g} + "
            f"publish_every_s {online_cfg.publish_every_s:g}"
        )
    return f"each event's feedback learned {delay:g} s after it, in event time ({source})"


@dataclass(frozen=True)
class SessionScores:
    """One session's probabilities for its rows: ``ungated`` (the layer's own progressive
    score), ``served`` (what production served: the layer when it was ready, else the base)
    and ``online`` (True where the layer served)."""

    ungated: np.ndarray
    served: np.ndarray
    online: np.ndarray


class OnlineSession:
    """The online layer bound to one base: featurize, score, then learn what is due.

    One session per base version (weights learned against one base mean nothing on another).
    ``learn_seconds`` counts what the learner spends (featurizing feedback with its logged
    positions and the FTRL steps), not the scoring serving would do anyway. ``gated`` False
    (the baselines with no base, ``serving.backtest.online_baselines``): no rolling window
    and no readiness check; the layer serves from the first event (``served`` is
    ``ungated``).
    """

    def __init__(
        self, base_version: str, embedding_dim: int, online_cfg: OnlineLayerConfig,
        *, gated: bool = True,
    ) -> None:
        from online_layer.features import OnlineFeaturizer
        from online_layer.ftrl import FTRLProximal
        from online_layer.reference import FTRLReference

        self.featurizer = OnlineFeaturizer(
            embedding_dim=embedding_dim,
            fresh_features=FRESH_ITEM_FEATURES,
            hash_bits=online_cfg.hash_bits,
            position_buckets=online_cfg.position_buckets,
        )
        cls = FTRLProximal if online_cfg.implementation == "cython" else FTRLReference
        self.model = cls(
            self.featurizer.n_dense, online_cfg.hash_bits, base_version, **online_cfg.ftrl_params()
        )
        from online_layer.metrics import RollingWindow

        self.cfg = online_cfg
        self.gated = gated
        self.rolling = RollingWindow(online_cfg.readiness_window)
        self.max_correction = float(online_cfg.guard.max_correction)
        self.ready = False  # the last readiness check passed: the live weights serve
        self.served_model: object | None = None  # frozen ready weights after a failed check
        self.ever_ready = False
        self.readiness_checks = 0
        self.ready_checks = 0
        self.first_ready_after: int | None = None  # examples learned at the first ready check
        self._checked_at = 0
        self.base_version = base_version
        self.learn_seconds = 0.0
        self.batches = 0
        self.examples = 0

    def _inputs(self, data: ReplayData, lo: int, hi: int, scores: BaseScores) -> OnlineInputs:
        """Rank-time inputs (position token = "rank") for rows ``[lo, hi)``."""
        return self.featurizer.transform(
            scores.logits,
            scores.user_embeddings,
            scores.item_embeddings,
            data.fresh[lo:hi],
            list(data.user_ids[lo:hi]),
            list(data.item_ids[lo:hi]),
            list(data.item_categories[lo:hi]),
            data.hours[lo:hi],
            positions=None,
        )

    def learn_only(self, data: ReplayData, lo: int, hi: int, scores: BaseScores, batch: int) -> None:
        """Warm-start: learn rows ``[lo, hi)`` (events before the base's cut-off), no scoring."""
        inputs = self._inputs(data, lo, hi, scores)
        for start in range(0, hi - lo, batch):
            rows = slice(start, min(start + batch, hi - lo))
            self._learn(inputs.take(rows), data.positions[lo:hi][rows], data.labels[lo:hi][rows])

    def _score(self, model: object, inputs: OnlineInputs) -> np.ndarray:
        """Hybrid logits as serving composes them (``serving.ranking`` /
        ``online_layer.layer.Layer.score``): ``predict_many``, the correction clipped."""
        from online_layer.defences import clip_correction

        logits = model.predict_many(inputs)  # type: ignore[attr-defined]
        if math.isfinite(self.max_correction):
            logits = clip_correction(inputs.base_logit, logits, self.max_correction)
        return np.asarray(logits, dtype=np.float64)

    def _learn(self, inputs: OnlineInputs, positions: np.ndarray, labels: np.ndarray) -> None:
        t0 = time.perf_counter()
        # Progressive validation as the learner does it: scored by the current weights
        # just before they learn the batch.
        if self.gated:
            self.rolling.add(labels, self._score(self.model, inputs), inputs.base_logit)
        self.model.learn_many(self.featurizer.with_positions(inputs, positions), labels)
        self.learn_seconds += time.perf_counter() - t0
        self.batches += 1
        self.examples += len(labels)
        if self.gated and self.examples - self._checked_at >= self.cfg.batch_size:
            self.check_readiness()

    def check_readiness(self) -> bool:
        """``online_layer.readiness.assess`` on what was learned so far; updates which weights
        serve (the live ones when ready, else the last ready ones, else none)."""
        from online_layer.readiness import assess

        self._checked_at = self.examples
        self.readiness_checks += 1
        verdict = assess(self.cfg, self.examples, self.rolling)
        if verdict.ready:
            self.ready = True
            self.ready_checks += 1
            self.served_model = None
            if not self.ever_ready:
                self.ever_ready = True
                self.first_ready_after = self.examples
        elif self.ready:
            # A replica keeps the last ready snapshot it installed: freeze the weights here
            # (they are at most batch_size examples past the last ready check's: copying
            # the weights at every ready check would cost a snapshot per batch).
            self.ready = False
            self.served_model = type(self.model).from_snapshot(  # type: ignore[attr-defined]
                self.model.snapshot(), self.base_version
            )
        return verdict.ready

    def _serve(self, inputs: OnlineInputs, ungated_logits: np.ndarray) -> tuple[np.ndarray, bool]:
        """What production serves now for ``inputs``: (logits, whether the layer served)."""
        if self.ready or not self.gated:
            return ungated_logits, True
        if self.served_model is not None:
            return self._score(self.served_model, inputs), True
        return np.asarray(inputs.base_logit, dtype=np.float64), False

    def test_then_train(
        self,
        data: ReplayData,
        lo: int,
        hi: int,
        scores: BaseScores,
        batch: int,
        delay_us: int | None = None,
    ) -> np.ndarray:
        """The layer's ungated probabilities for rows ``[lo, hi)`` (``run`` has all three)."""
        return self.run(data, lo, hi, scores, batch, delay_us).ungated

    def run(
        self,
        data: ReplayData,
        lo: int,
        hi: int,
        scores: BaseScores,
        batch: int,
        delay_us: int | None = None,
    ) -> SessionScores:
        """Probabilities for rows ``[lo, hi)``, each scored before its label is learned.

        ``delay_us`` None: mini-batches of ``batch`` events, each scored, then learned.
        ``delay_us`` d: as serving's learner would have it: row ``j``'s feedback is learned
        (and published) ``d`` microseconds of event time after it, so row ``i`` is scored
        by the weights that learned exactly the rows ``j < i`` with ``ts_j + d <= ts_i``
        (``batch`` then only sizes the ``learn_many`` calls, which give the same weights
        whatever their size: FTRL runs per example). Rows whose feedback is not due by
        ``hi`` are learned at the end (they change no score of this session).
        """
        from protos.metrics import sigmoid

        inputs = self._inputs(data, lo, hi, scores)
        labels = data.labels[lo:hi]
        positions = data.positions[lo:hi]
        n = hi - lo
        ungated = np.empty(n, dtype=np.float64)
        served = np.empty(n, dtype=np.float64)
        online = np.zeros(n, dtype=bool)

        def score(rows: slice) -> None:
            chunk = inputs.take(rows)
            logits = self._score(self.model, chunk)
            ungated[rows] = sigmoid(logits)
            served_logits, by_layer = self._serve(chunk, logits)
            served[rows] = sigmoid(served_logits)
            online[rows] = by_layer

        if delay_us is None:
            for start in range(0, n, batch):
                rows = slice(start, min(start + batch, n))
                score(rows)
                self._learn(inputs.take(rows), positions[rows], labels[rows])
            return SessionScores(ungated, served, online)
        if delay_us < 0:
            raise ValueError(f"delay_us must be >= 0, got {delay_us}")
        ts = data.ts_us[lo:hi]
        # due[i]: how many rows' feedback is learned by row i's time (never row i or later).
        due = np.minimum(np.searchsorted(ts + delay_us, ts, side="right"), np.arange(n))
        starts = np.concatenate(([0], np.flatnonzero(np.diff(due)) + 1))
        ends = np.append(starts[1:], n)
        learned = 0
        for start, end in zip(starts, ends):
            learned = self._learn_rows(inputs, positions, labels, learned, int(due[start]), batch)
            score(slice(int(start), int(end)))
        self._learn_rows(inputs, positions, labels, learned, n, batch)
        return SessionScores(ungated, served, online)

    def _learn_rows(
        self,
        inputs: OnlineInputs,
        positions: np.ndarray,
        labels: np.ndarray,
        lo: int,
        hi: int,
        batch: int,
    ) -> int:
        """Learn rows ``[lo, hi)`` of a session's inputs in calls of at most ``batch``; -> hi."""
        for start in range(lo, hi, batch):
            rows = slice(start, min(start + batch, hi))
            self._learn(inputs.take(rows), positions[rows], labels[rows])
        return max(lo, hi)
