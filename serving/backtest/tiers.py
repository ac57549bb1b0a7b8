"""The backtest's only door to the other packages: events, features, base fits, online layer.

Everything here calls the real tiers through their public APIs (no copies of their logic):

- events: ``feature_store.events_io.load_events`` / ``normalize_events``;
- features: ``feature_store.training_set.build_training_set`` once over the whole log (each
  row gets the features of events strictly before it);
- bases: ``base_model.training`` (a Ray Train ``TorchTrainer`` on the local Ray cluster,
  ``base_model.ray_cluster.init_local_ray``), scored with ``base_model.artifact.BaseScorer``;
- online layer: ``online_layer.features.OnlineFeaturizer`` + ``online_layer.ftrl.FTRLProximal``
  learning test-then-train per mini-batch; the hybrid logit is ``model.predict_many``
  (``base_logit + w . x``), the same call ``serving.ranking.HybridRanker.rank`` makes, turned
  into a probability by ``serving.ranking.sigmoid``.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from feature_store.catalog import FRESH_ITEM_FEATURES, ITEM_FEATURES, USER_FEATURES
from serving.backtest.config import BacktestConfig
from serving.backtest.policies import Fit

__all__ = [
    "ReplayData",
    "load_events",
    "conform_events",
    "prepare",
    "start_ray",
    "TierContext",
    "OnlineSession",
]

logger = logging.getLogger(__name__)


def load_events(path: Path) -> pa.Table:
    """A user's events file, validated and sorted by the feature store's loader."""
    from feature_store.events_io import load_events as _load

    return _load(path)


def conform_events(table: pa.Table) -> pa.Table:
    """An in-memory events table, validated and sorted like a file would be."""
    from feature_store.events_io import normalize_events

    return normalize_events(table, source="events table")


@dataclass(frozen=True, eq=False)
class ReplayData:
    """The log as arrays, aligned row for row, sorted by time.

    ``training_set`` is what base fits are cut from (the events plus the point-in-time
    feature columns); the arrays are what scoring and the online layer read.
    """

    training_set: pa.Table
    ts_us: np.ndarray  # (N,) int64 microseconds since the epoch, non-decreasing
    labels: np.ndarray  # (N,) float64 in [0, 1]
    user_ids: np.ndarray  # (N,) object (str)
    item_ids: np.ndarray  # (N,) object (str)
    user_features: np.ndarray  # (N, Fu) float32, USER_FEATURES order
    item_features: np.ndarray  # (N, Fi) float32, ITEM_FEATURES order
    fresh: np.ndarray  # (N, F) float32, FRESH_ITEM_FEATURES order
    item_categories: np.ndarray  # (N,) object (str, "" when unknown): base and online layer
    positions: np.ndarray  # (N,) int64, -1 when unknown
    hours: np.ndarray  # (N,) int64 hour of day (UTC)


def _column(table: pa.Table, name: str) -> np.ndarray:
    return table.column(name).to_numpy(zero_copy_only=False)


def prepare(events: pa.Table, workspace: Path, cfg: BacktestConfig) -> ReplayData:
    """Point-in-time features for every event, computed once, and the arrays replay reads."""
    from feature_store.compute import compute_features
    from feature_store.events_io import write_event_log
    from feature_store.training_set import build_training_set

    settings = tier_settings(workspace, cfg)
    fs = settings.feature_store
    write_event_log(events, fs.events_dir, mode="replace")
    summary = compute_features(fs, full=True)
    logger.info("features computed: %s", summary)
    ts_set = build_training_set(fs, events)
    if ts_set.num_rows != events.num_rows:
        raise RuntimeError(
            f"training set has {ts_set.num_rows} rows for {events.num_rows} events"
        )
    ts_us = events.column("ts").cast(pa.int64()).to_numpy(zero_copy_only=False).astype(np.int64)
    user_f = np.column_stack([_column(ts_set, n) for n in USER_FEATURES]).astype(np.float32)
    item_f = np.column_stack([_column(ts_set, n) for n in ITEM_FEATURES]).astype(np.float32)
    fresh = np.column_stack([_column(ts_set, n) for n in FRESH_ITEM_FEATURES]).astype(np.float32)
    cats = events.column("item_category").fill_null("").to_numpy(zero_copy_only=False).astype(object)
    pos = events.column("position").fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
    hours = (ts_us // 3_600_000_000) % 24
    return ReplayData(
        training_set=ts_set,
        ts_us=ts_us,
        labels=_column(events, "label").astype(np.float64),
        user_ids=_column(events, "user_id").astype(object),
        item_ids=_column(events, "item_id").astype(object),
        user_features=np.ascontiguousarray(user_f),
        item_features=np.ascontiguousarray(item_f),
        fresh=np.ascontiguousarray(fresh),
        item_categories=cats,
        positions=pos,
        hours=hours.astype(np.int64),
    )


def tier_settings(workspace: Path, cfg: BacktestConfig) -> Any:
    """Every tier's config from ``cfg.settings_file`` + ``cfg.tier_settings`` (serving.settings)."""
    from serving.settings import load_settings

    overrides = {k: dict(v) for k, v in cfg.tier_settings.items()}
    return load_settings(cfg.settings_file, workspace=workspace, overrides=overrides)


def start_ray(address: str | None) -> None:
    """Join ``address`` or start a loopback-only local cluster (no-op if already joined).

    Ray workers' own log lines (Train controller, Data executor) are not forwarded to this
    process: they would bury the progress lines. Failures still surface as exceptions, and
    the workers' logs stay in Ray's session directory.
    """
    from base_model.ray_cluster import init_local_ray

    init_local_ray(address=address, log_to_driver=False)


_DAY_US = 86_400_000_000


class TierContext:
    """Base fits and scoring through the base tier; online sessions through the online tier.

    One registry (``<workspace>/registry``) holds every fit of the replay; nothing is
    promoted (each policy picks its own base, by version). ``train_days``: unless the
    settings name it, each fit's window reaches back to the log's first day, so every fit
    trains on all the data available before its cut-off (the base tier validates on the
    last day before the cut-off and trains on the days before that).
    """

    def __init__(self, workspace: Path, cfg: BacktestConfig, ray_address: str | None = None) -> None:
        from base_model.registry import ModelRegistry

        self.cfg = cfg
        self.settings = tier_settings(workspace, cfg)
        self.registry = ModelRegistry(self.settings.registry_dir)
        self.ray_address = ray_address
        base_overrides = cfg.tier_settings.get("base_model", {})
        self._window_from_settings = "train_days" in base_overrides or _file_sets(
            cfg.settings_file, "base_model", "train_days"
        )
        self.base_cfg = self.settings.base_model.replace(seed=cfg.seed, num_workers=cfg.workers)
        self.online_cfg = self.settings.online_layer
        self.last_block = ""

    @property
    def online_batch(self) -> int:
        """Events per mini-batch (``online_batch`` mode), else per ``learn_many`` call (the
        online layer's ``batch_size``; it does not change the weights)."""
        return self.cfg.online_batch or self.online_cfg.batch_size

    @property
    def online_delay_us(self) -> int | None:
        """Event-time delay before an event's feedback is learned and published, in
        microseconds; None in ``online_batch`` mode (see ``BacktestConfig``)."""
        return online_delay_us(self.cfg, self.online_cfg)

    def online_learning(self) -> str:
        """How the replay's online layer learns, in words (for the report)."""
        return describe_online_learning(self.cfg, self.online_cfg)

    @property
    def train_window(self) -> str:
        """How long every fit's training window is, for every policy alike."""
        if self._window_from_settings:
            return f"the last {self.base_cfg.train_days} day(s) before the validation day"
        return "all history before the validation day"

    def tier_config_json(self) -> dict[str, Any]:
        """The tier settings the replay ran with (for the report)."""
        from dataclasses import asdict

        fs = asdict(self.settings.feature_store)
        fs["workspace"] = str(fs["workspace"])
        return {
            "base_model": self.base_cfg.to_dict(),
            "base_model_train_days": "as set" if self._window_from_settings else "all history",
            "train_window": self.train_window,
            "online_layer": asdict(self.online_cfg),
            "feature_store": fs,
        }

    def fit_base(
        self, data: ReplayData, n_rows: int, cutoff: datetime, parent: Fit | None
    ) -> tuple[Fit, Any] | None:
        """Train on rows ``[0, n_rows)`` (all before ``cutoff``) as of ``cutoff``.

        ``parent`` warm-starts the fit from that version (as the base tier does, when its
        config allows). Returns None when the base tier's data gates block the fit (the
        caller keeps its previous base, as production would).
        """
        from base_model.artifact import BaseScorer
        from base_model.errors import DataGateError
        from base_model.training import train_base_model

        rows = data.training_set.slice(0, n_rows)
        cfg = self.base_cfg
        if not self._window_from_settings:
            days = int(math.ceil((_to_us(cutoff) - int(data.ts_us[0])) / _DAY_US))
            cfg = cfg.replace(train_days=max(1, days - 1))
        t0 = time.perf_counter()
        try:
            result = train_base_model(
                cfg,
                rows,
                self.registry,
                parent=parent.version if parent is not None else None,
                as_of=cutoff,
                trigger={"kind": "backtest", "summary": f"backtest fit at {cutoff.isoformat()}"},
                promote=False,
                address=self.ray_address,
                backend="ray",
            )
        except DataGateError as exc:
            logger.warning("fit at %s blocked: %s", cutoff, exc)
            self.last_block = str(exc)
            return None
        seconds = time.perf_counter() - t0
        max_ts = int(data.ts_us[n_rows - 1]) if n_rows else None
        metrics = result.metrics
        fit = Fit(
            cutoff=cutoff,
            train_rows=n_rows,
            train_max_ts=_from_us(max_ts) if max_ts is not None else None,
            seconds=seconds,
            artifact=str(result.path),
            version=result.version,
            parent=result.parent,
            status=result.status,
            fit_seconds=float(metrics.get("train_seconds", 0.0)),
            samples=int(metrics.get("train_samples", 0)),
            epochs=int(metrics.get("epochs_run", 0)),
        )
        return fit, BaseScorer.load(result.path)

    def score_base(self, scorer: Any, data: ReplayData, lo: int, hi: int, chunk: int = 8192) -> Any:
        """``BaseScorer.score`` over rows ``[lo, hi)`` in chunks (logits and embeddings).

        Item categories are passed as serving passes them (``RankFeatures.item_categories``):
        without them the base scores every item as "category unknown".
        """
        from base_model.artifact import BaseScores

        parts = []
        for start in range(lo, hi, chunk):
            stop = min(start + chunk, hi)
            parts.append(
                scorer.score(
                    list(data.user_ids[start:stop]),
                    list(data.item_ids[start:stop]),
                    data.user_features[start:stop],
                    data.item_features[start:stop],
                    list(data.item_categories[start:stop]),
                )
            )
        if len(parts) == 1:
            return parts[0]
        return BaseScores(
            np.concatenate([p.logits for p in parts]),
            np.concatenate([p.user_embeddings for p in parts]),
            np.concatenate([p.item_embeddings for p in parts]),
        )

    def online_session(self, fit: Fit, scorer: Any, online_cfg: Any = None) -> OnlineSession:
        """A fresh online layer bound to ``fit``'s base (``online_cfg``: another online
        config than the run's, for a sweep over the online layer alone)."""
        return OnlineSession(fit.version, scorer.embedding_dim, online_cfg or self.online_cfg)


def online_delay_us(cfg: BacktestConfig, online_cfg: Any) -> int | None:
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


def describe_online_learning(cfg: BacktestConfig, online_cfg: Any) -> str:
    """One line for the report: which learning-delay model the replay used."""
    if cfg.online_batch is not None:
        return f"mini-batches of {cfg.online_batch} events, each scored, then learned"
    delay = online_delay_us(cfg, online_cfg) / 1_000_000
    if cfg.online_delay is not None:
        source = "--online-delay"
    else:
        window = f"join_window_s {online_cfg.join_window_s:g}" if online_cfg.emit == "window_close" else "emit on_arrival"
        source = (
            f"online_layer {window} + max_batch_delay_s {online_cfg.max_batch_delay_s:g} + "
            f"publish_every_s {online_cfg.publish_every_s:g}"
        )
    return f"each event's feedback learned {delay:g} s after it, in event time ({source})"


def _file_sets(path: Path | None, section: str, key: str) -> bool:
    """Whether the settings file names ``[section] key`` explicitly."""
    import tomllib

    if path is None:
        return False
    with open(path, "rb") as handle:
        return key in tomllib.load(handle).get(section, {})


def _to_us(t: datetime) -> int:
    return int(round(t.timestamp() * 1_000_000))


def _from_us(us: int) -> datetime:
    return datetime.fromtimestamp(us / 1_000_000, tz=UTC)


class OnlineSession:
    """The online layer bound to one base: featurize, score, then learn what is due.

    One session per base version (weights learned against one base mean nothing on another).
    ``learn_seconds`` counts what the learner spends (featurizing feedback with its logged
    positions and the FTRL steps), not the scoring serving would do anyway.
    """

    def __init__(self, base_version: str, embedding_dim: int, online_cfg: Any) -> None:
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

    def _inputs(self, data: ReplayData, lo: int, hi: int, scores: Any) -> Any:
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

    def learn_only(self, data: ReplayData, lo: int, hi: int, scores: Any, batch: int) -> None:
        """Warm-start: learn rows ``[lo, hi)`` (events before the base's cut-off), no scoring."""
        inputs = self._inputs(data, lo, hi, scores)
        for start in range(0, hi - lo, batch):
            rows = slice(start, min(start + batch, hi - lo))
            self._learn(inputs.take(rows), data.positions[lo:hi][rows], data.labels[lo:hi][rows])

    def _learn(self, inputs: Any, positions: np.ndarray, labels: np.ndarray) -> None:
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
        scores: Any,
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
        from serving.ranking import sigmoid

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
        self, inputs: Any, positions: np.ndarray, labels: np.ndarray, lo: int, hi: int, batch: int
    ) -> int:
        """Learn rows ``[lo, hi)`` of a session's inputs in calls of at most ``batch``; -> hi."""
        for start in range(lo, hi, batch):
            rows = slice(start, min(start + batch, hi))
            self._learn(inputs.take(rows), positions[rows], labels[rows])
        return max(lo, hi)
