"""``BaseModelConfig``: every knob of the base tier in one frozen, validated dataclass.

The lead's settings loader builds it from the ``[base_model]`` section of the TOML file
(``BaseModelConfig.from_dict``); Ray Train workers get ``dataclasses.asdict(cfg)`` and rebuild
it, so the config must round-trip through a plain dict.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from base_model.errors import ConfigError
from protos.settings_io import check_known_keys, from_section

__all__ = ["BaseModelConfig", "UseGpu"]

UseGpu = bool | Literal["auto"]


#: Ray placement-group strategies (``ray.train.ScalingConfig(placement_strategy=...)``).
PLACEMENT_STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")

@dataclass(frozen=True)
class BaseModelConfig:
    """How the base ranker is built, trained, gated and re-triggered.

    Parameters
    ----------
    embedding_dim
        Width D of the user and item embedding tables (also what the online layer receives).
    hidden_layers
        Widths of the MLP head over ``[u, i, u*i, dense]``.
    oov_buckets
        Hashed rows per table for ids outside the vocabulary, so an unseen id still scores.
    min_id_count
        An id enters the vocabulary only with at least this many training rows; rarer ids
        train the hashed rows, which is what unseen ids will use at serving time.
    oov_dropout
        Fraction of training rows whose ids are routed to their hashed row anyway, so the
        hashed rows learn an "average id" even when every id is frequent.
    category_buckets
        Hashed rows of the item-category table (plus one row for an unknown category); 0
        leaves the category out (every item "unknown").
    learning_rate, weight_decay, epochs, batch_size
        Adam settings for a cold start. ``weight_decay`` is Adam's (every parameter, every
        step); ``epochs`` is an upper bound when early stopping is on (drifting logs stop
        after 2-4 epochs; a small window may need dozens).
    embedding_l2
        L2 penalty on the embedding and bias rows a batch uses (times the mean squared row
        norm): keeps id rows from memorising the few rows of an id, where ``weight_decay``
        would shrink rarely seen rows hardest.
    keep_best
        Export the weights of the best validation point (after each epoch, and every
        ``eval_every_steps``), not the last; the manifest's ``metrics.best`` says which.
    early_stopping_patience
        Stop after this many epochs without a better validation loss (0: run every epoch).
    eval_every_steps
        Validation loss every this many optimizer steps (0: once per epoch); the curve lands
        in the manifest and in ``TrainResult.curve``.
    seed
        Seeds the initial weights, the shuffle and the bootstrap. On CPU with one worker the
        same seed and data give bitwise the same weights, in-process and through Ray Train
        (torch runs on ``max(1, int(cpus_per_worker))`` threads in both).
    num_workers, use_gpu, cpus_per_worker, placement_strategy
        Ray Train ``ScalingConfig``. ``use_gpu="auto"`` uses GPUs when the cluster has at
        least ``num_workers`` of them, CPU otherwise. ``placement_strategy`` is Ray's
        placement-group strategy for the workers: ``PACK`` (the default: as few nodes as
        fit, the cheapest gradient exchange) or ``SPREAD`` (one worker per node where it
        can: a node's loss costs one worker, and each node's CPUs and memory add up);
        ``STRICT_PACK`` and ``STRICT_SPREAD`` refuse to place otherwise.
    prefetch_batches, shuffle_buffer_rows, chunk_batches
        Ray Data iteration: a worker reads chunks of ``chunk_batches`` mini-batches (cut and
        shuffled on its device), ``prefetch_batches`` chunks ahead of training, through a
        local shuffle buffer of ``shuffle_buffer_rows`` (0 disables it).
    cache_max_rows
        A Ray worker whose shard has at most this many rows reads it once (in order, through
        Ray Data) into its device's memory and shuffles it there every epoch, as the bare
        PyTorch loop does (one CPU worker then trains bitwise the loop's weights); 0, or a
        bigger shard, streams every epoch through Ray Data and its local shuffle buffer.
    storage_path
        Ray Train checkpoint storage; empty means a temporary local directory, which is right
        for a single-node cluster. A multi-node cluster needs shared storage (``s3://...``).
    train_days
        Training window length; validation (and the promotion gate) uses the following day.
    warm_start, warm_lr_factor, warm_epochs, warm_early_stopping_patience
        A new version starts from its parent (the champion by default) with
        ``learning_rate * warm_lr_factor`` for at most ``warm_epochs`` epochs, and stops
        after ``warm_early_stopping_patience`` epochs without a better validation loss. A
        warm fit starts next to its optimum: in every backtest fit so far (simulator,
        ml-100k) its best epoch was the first or second and the epochs after it only got
        worse, so a second epoch of patience bought nothing (the best point is exported
        either way) and cost a third of the fit.
    min_train_rows, max_staleness_hours, min_hour_fraction, min_day_fraction
        Data gates: too few rows, data older than ``max_staleness_hours`` at training time,
        an hour holding fewer than ``min_hour_fraction`` of its usual events, or a day
        holding fewer than ``min_day_fraction`` of its usual count, block training. "Usual"
        is the log's own history (``base_model.seasonal``): the same day of the week and
        hour of that day when the history has enough weeks, else the other days; a bursty
        log's ordinary quiet days pass by its own spread. Days before the data's first
        event are not judged (the log starts there); 0 turns a gate off.
    min_valid_rows
        Rows the validation day must hold (the rows gate). 0 lets a fit run with an empty
        validation day: no early stopping or best-epoch choice (the last epoch is kept) and
        no offline evaluation, so the version is registered but neither approved nor
        promoted; promote it by hand if you trust it. Small values pass the gate, but the
        evaluation's interval is then wide and usually rejects.
    bootstrap_samples, confidence
        Evaluation gate: a user-clustered bootstrap of the relative log-loss gain on the
        validation day, two-sided interval at ``confidence``.
    min_gain_vs_champion, min_gain_vs_constant
        Promote only if the interval's lower bound is at least this gain over the champion
        (or, with no champion yet, over predicting the training click rate).
    retrain_every_days, perf_drop_threshold, drift_psi_threshold, oov_rate_threshold,
    new_data_fraction
        Triggers for a retrain: schedule; the champion's log loss on recent data above its
        validation log loss by this fraction; a feature's PSI above the threshold or this
        share of recent events with ids the champion never saw; new rows since the
        champion's window at least this fraction of its training rows.
    drift_exclude
        Features left out of the PSI check because they drift by construction (an item's
        age grows every hour).
    """

    embedding_dim: int = 32
    hidden_layers: tuple[int, ...] = (64, 32)
    oov_buckets: int = 64
    min_id_count: int = 2
    oov_dropout: float = 0.02
    category_buckets: int = 1024

    learning_rate: float = 0.002
    weight_decay: float = 0.0
    embedding_l2: float = 0.03
    epochs: int = 50
    batch_size: int = 1024
    keep_best: bool = True
    early_stopping_patience: int = 2
    eval_every_steps: int = 0
    seed: int = 0

    num_workers: int = 1
    use_gpu: UseGpu = "auto"
    cpus_per_worker: float = 1.0
    placement_strategy: str = "PACK"
    prefetch_batches: int = 2
    shuffle_buffer_rows: int = 16384
    cache_max_rows: int = 5_000_000
    chunk_batches: int = 16
    storage_path: str = ""

    train_days: int = 7

    warm_start: bool = True
    warm_lr_factor: float = 0.3
    warm_epochs: int = 10
    warm_early_stopping_patience: int = 1

    min_train_rows: int = 1000
    min_valid_rows: int = 1
    max_staleness_hours: float = 6.0
    min_hour_fraction: float = 0.25
    min_day_fraction: float = 0.5

    bootstrap_samples: int = 300
    confidence: float = 0.95
    min_gain_vs_champion: float = -0.005
    min_gain_vs_constant: float = 0.0

    retrain_every_days: float = 7.0
    perf_drop_threshold: float = 0.05
    drift_psi_threshold: float = 0.25
    oov_rate_threshold: float = 0.3
    new_data_fraction: float = 0.5
    drift_exclude: tuple[str, ...] = ("item_age_hours",)

    def __post_init__(self) -> None:
        _int(self, "embedding_dim", low=1)
        if not isinstance(self.hidden_layers, tuple) or not all(
            isinstance(w, int) and not isinstance(w, bool) and w > 0 for w in self.hidden_layers
        ):
            raise ConfigError(
                f"hidden_layers must be a tuple of positive ints, got {self.hidden_layers!r}"
            )
        _int(self, "oov_buckets", low=1)
        _int(self, "min_id_count", low=1)
        _float(self, "oov_dropout", low=0.0, high=0.5)
        _int(self, "category_buckets", low=0)
        _float(self, "learning_rate", low=0.0, low_open=True)
        _float(self, "weight_decay", low=0.0)
        _float(self, "embedding_l2", low=0.0)
        _int(self, "epochs", low=1)
        _int(self, "batch_size", low=1)
        if not isinstance(self.keep_best, bool):
            raise ConfigError(f"keep_best must be true or false, got {self.keep_best!r}")
        _int(self, "early_stopping_patience", low=0)
        _int(self, "eval_every_steps", low=0)
        _int(self, "seed", low=0)
        _int(self, "num_workers", low=1)
        if self.use_gpu != "auto" and not isinstance(self.use_gpu, bool):
            raise ConfigError(f"use_gpu must be 'auto', true or false, got {self.use_gpu!r}")
        _float(self, "cpus_per_worker", low=0.0, low_open=True)
        if self.placement_strategy not in PLACEMENT_STRATEGIES:
            raise ConfigError(
                f"placement_strategy must be one of {', '.join(PLACEMENT_STRATEGIES)}, "
                f"got {self.placement_strategy!r}"
            )
        _int(self, "prefetch_batches", low=0)
        _int(self, "shuffle_buffer_rows", low=0)
        _int(self, "cache_max_rows", low=0)
        _int(self, "chunk_batches", low=1)
        if not isinstance(self.storage_path, str):
            raise ConfigError(f"storage_path must be a string, got {self.storage_path!r}")
        _int(self, "train_days", low=1)
        if not isinstance(self.warm_start, bool):
            raise ConfigError(f"warm_start must be true or false, got {self.warm_start!r}")
        _float(self, "warm_lr_factor", low=0.0, high=1.0, low_open=True)
        _int(self, "warm_epochs", low=1)
        _int(self, "warm_early_stopping_patience", low=0)
        _int(self, "min_train_rows", low=1)
        _int(self, "min_valid_rows", low=0)
        _float(self, "max_staleness_hours", low=0.0, low_open=True)
        _float(self, "min_hour_fraction", low=0.0, high=1.0)
        _float(self, "min_day_fraction", low=0.0, high=1.0)
        _int(self, "bootstrap_samples", low=20)
        _float(self, "confidence", low=0.5, high=1.0, high_open=True)
        _float(self, "min_gain_vs_champion", low=-1.0, high=1.0)
        _float(self, "min_gain_vs_constant", low=-1.0, high=1.0)
        _float(self, "retrain_every_days", low=0.0, low_open=True)
        _float(self, "perf_drop_threshold", low=0.0, low_open=True)
        _float(self, "drift_psi_threshold", low=0.0, low_open=True)
        _float(self, "oov_rate_threshold", low=0.0, high=1.0, low_open=True)
        _float(self, "new_data_fraction", low=0.0, low_open=True)
        if not isinstance(self.drift_exclude, tuple) or not all(
            isinstance(n, str) for n in self.drift_exclude
        ):
            raise ConfigError(
                f"drift_exclude must be a list of feature names, got {self.drift_exclude!r}"
            )

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> BaseModelConfig:
        """Build from a mapping (a TOML section, or ``asdict`` of another config).

        Unknown keys are an error (a typo must not silently fall back to a default); lists
        become tuples (``protos.settings_io.from_section``); ``use_gpu`` also accepts the
        strings ``"true"``/``"false"``. Raises ``ConfigError`` naming the key.
        """
        check_known_keys(cls, values, "base_model", error=ConfigError)
        kwargs = dict(values)
        gpu = kwargs.get("use_gpu")
        if isinstance(gpu, str) and gpu.lower() in {"true", "false"}:
            kwargs["use_gpu"] = gpu.lower() == "true"
        return from_section(cls, kwargs, "base_model", error=ConfigError)

    def to_dict(self) -> dict[str, Any]:
        """A plain, JSON- and Ray-friendly dict that ``from_dict`` accepts back."""
        out = dataclasses.asdict(self)
        out["hidden_layers"] = list(self.hidden_layers)
        out["drift_exclude"] = list(self.drift_exclude)
        return out

    def replace(self, **changes: Any) -> BaseModelConfig:
        """A copy with ``changes`` applied (validated again)."""
        return dataclasses.replace(self, **changes)


def _int(cfg: BaseModelConfig, name: str, *, low: int) -> None:
    value = getattr(cfg, name)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name} must be an int, got {value!r}")
    if value < low:
        raise ConfigError(f"{name} must be >= {low}, got {value}")


def _float(
    cfg: BaseModelConfig,
    name: str,
    *,
    low: float,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> None:
    value = getattr(cfg, name)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise ConfigError(f"{name} must be finite, got {value!r}")
    if value < low or (low_open and value == low):
        raise ConfigError(f"{name} must be {'>' if low_open else '>='} {low}, got {value}")
    if high is not None and (value > high or (high_open and value == high)):
        raise ConfigError(f"{name} must be {'<' if high_open else '<='} {high}, got {value}")
