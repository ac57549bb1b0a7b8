"""The backtest's door to the base tier: base fits on the local Ray cluster, and scoring.

- bases: ``base_model.training`` (a Ray Train ``TorchTrainer`` on the local Ray cluster,
  ``protos.ray_local.init_local_ray``), scored with ``base_model.artifact.BaseScorer``;
- the log and its features come from ``serving.backtest.data``, online sessions from
  ``serving.backtest.online`` (``TierContext.online_session``).

Everything calls the real tiers through their public APIs (no copies of their logic).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from serving.backtest.config import BacktestConfig
from serving.backtest.data import ReplayData, tier_settings
from serving.backtest.online import OnlineSession, describe_online_learning, online_delay_us
from serving.backtest.policies import Fit

if TYPE_CHECKING:
    from base_model.artifact import BaseScorer, BaseScores
    from online_layer.config import OnlineLayerConfig

__all__ = ["TierContext", "start_ray", "tier_settings"]

logger = logging.getLogger(__name__)


def start_ray(address: str | None) -> None:
    """Join ``address`` or start a loopback-only local cluster (no-op if already joined).

    Ray workers' own log lines (Train controller, Data executor) are not forwarded to this
    process: they would bury the progress lines. Failures still surface as exceptions, and
    the workers' logs stay in Ray's session directory.
    """
    from protos.ray_local import init_local_ray

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
        from protos.registry import ModelRegistry

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
        self,
        data: ReplayData,
        n_rows: int,
        cutoff: datetime,
        parent: Fit | None,
        *,
        no_holdout: bool = False,
        overrides: Mapping[str, Any] | None = None,
        train_days: int | None = None,
    ) -> tuple[Fit, BaseScorer] | None:
        """Train on rows ``[0, n_rows)`` (all before ``cutoff``) as of ``cutoff``.

        ``parent`` warm-starts the fit from that version (as the base tier does, when its
        config allows). Returns None when the base tier's data gates block the fit (the
        caller keeps its previous base, as production would).

        ``no_holdout``: the fresh ceiling's fit (``serving.backtest.ceiling``): the base
        tier validates on the day before ``as_of``, so the fit runs as of ``cutoff + 1 day``
        with that day empty: it trains on every row up to ``cutoff`` (no day held out, no
        early stopping: a fixed epoch count, from ``overrides``), with ``min_valid_rows = 0``,
        the staleness allowance raised by that day and the completeness gates off. ``overrides``: base settings for
        this fit only (``BaseModelConfig.replace``). ``train_days``: this fit's window
        (days before its validation day, or before the cut-off with ``no_holdout``).
        """
        from base_model.artifact import BaseScorer
        from base_model.errors import DataGateError
        from base_model.training import train_base_model

        rows = data.training_set.slice(0, n_rows)
        cfg = self.base_cfg.replace(**dict(overrides or {}))
        as_of = cutoff
        if no_holdout:
            as_of = cutoff + timedelta(days=1)
            # The empty day would read as a loading failure to the completeness gates:
            # they are off for this fit (its rows are the ones the validated fits' gates
            # already judged, plus the newest day).
            cfg = cfg.replace(
                min_valid_rows=0, max_staleness_hours=cfg.max_staleness_hours + 24.0,
                min_day_fraction=0.0, min_hour_fraction=0.0,
            )
        if train_days is not None:
            cfg = cfg.replace(train_days=train_days)
        elif not self._window_from_settings:
            days = int(math.ceil((_to_us(cutoff) - int(data.ts_us[0])) / _DAY_US))
            cfg = cfg.replace(train_days=max(1, days if no_holdout else days - 1))
        t0 = time.perf_counter()
        try:
            result = train_base_model(
                cfg,
                rows,
                self.registry,
                parent=parent.version if parent is not None else None,
                as_of=as_of,
                trigger={"kind": "backtest", "summary": f"backtest fit at {cutoff.isoformat()}"},
                promote=False,
                address=self.ray_address,
                backend="local" if self.cfg.fit_backend == "local" else "ray",
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
            best_epoch=int((metrics.get("best") or {}).get("epoch", 0) or 0),
        )
        return fit, BaseScorer.load(result.path)

    def score_base(
        self, scorer: BaseScorer, data: ReplayData, lo: int, hi: int, chunk: int = 8192
    ) -> BaseScores:
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

    def online_session(
        self, fit: Fit, scorer: BaseScorer, online_cfg: OnlineLayerConfig | None = None
    ) -> OnlineSession:
        """A fresh online layer bound to ``fit``'s base (``online_cfg``: another online
        config than the run's, for a sweep over the online layer alone)."""
        return OnlineSession(fit.version, scorer.embedding_dim, online_cfg or self.online_cfg)


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
