"""The backtest's online layer: one session per base, learning test-then-train.

Calls the online tier through its public API: ``online_layer.features.OnlineFeaturizer`` +
``online_layer.ftrl.FTRLProximal`` (or the NumPy reference) learning per mini-batch; the
hybrid logit is ``model.predict_many`` (``base_logit + w . x``), the same call
``serving.ranking.HybridRanker.rank`` makes, turned into a probability by
``protos.metrics.sigmoid``. ``online_delay_us`` says when, in event time, serving's learner
would have learned an event's feedback.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np

from feature_store.catalog import FRESH_ITEM_FEATURES
from serving.backtest.config import BacktestConfig
from serving.backtest.data import ReplayData

if TYPE_CHECKING:
    from base_model.artifact import BaseScores
    from online_layer.config import OnlineLayerConfig
    from online_layer.features import OnlineInputs

__all__ = ["OnlineSession", "describe_online_learning", "online_delay_us"]


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


class OnlineSession:
    """The online layer bound to one base: featurize, score, then learn what is due.

    One session per base version (weights learned against one base mean nothing on another).
    ``learn_seconds`` counts what the learner spends (featurizing feedback with its logged
    positions and the FTRL steps), not the scoring serving would do anyway.
    """

    def __init__(
        self, base_version: str, embedding_dim: int, online_cfg: OnlineLayerConfig
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

    def _learn(self, inputs: OnlineInputs, positions: np.ndarray, labels: np.ndarray) -> None:
        t0 = time.perf_counter()
        self.model.learn_many(self.featurizer.with_positions(inputs, positions), labels)
        self.learn_seconds += time.perf_counter() - t0
        self.batches += 1
        self.examples += len(labels)

    def test_then_train(
        self,
        data: ReplayData,
        lo: int,
        hi: int,
        scores: BaseScores,
        batch: int,
        delay_us: int | None = None,
    ) -> np.ndarray:
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
        out = np.empty(n, dtype=np.float64)
        if delay_us is None:
            for start in range(0, n, batch):
                rows = slice(start, min(start + batch, n))
                chunk = inputs.take(rows)
                # The hybrid logit exactly as serving.ranking.HybridRanker.rank composes it:
                # final = online_model.predict_many(inputs) (= base logit + w . x).
                out[rows] = sigmoid(self.model.predict_many(chunk))
                self._learn(chunk, positions[rows], labels[rows])
            return out
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
            rows = slice(int(start), int(end))
            out[rows] = sigmoid(self.model.predict_many(inputs.take(rows)))
        self._learn_rows(inputs, positions, labels, learned, n, batch)
        return out

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
