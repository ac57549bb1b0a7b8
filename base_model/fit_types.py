"""What one fit is told (``LoopSettings``) and what it returns (``FitOutcome``).

Torch-free, so the driver can plan a fit (``base_model.warm``) and read its result
(``base_model.trainer``) without importing torch; the loop itself is ``base_model.loop``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["FitOutcome", "LoopSettings", "finite_or_none"]


@dataclass(frozen=True)
class LoopSettings:
    """What one fit does (the cold or warm learning rate and epochs already chosen)."""

    learning_rate: float
    epochs: int
    batch_size: int
    weight_decay: float
    eval_every_steps: int
    seed: int
    prefetch_batches: int = 2
    shuffle_buffer_rows: int = 0
    cache_max_rows: int = 0
    chunk_batches: int = 16
    deterministic: bool = True
    embedding_l2: float = 0.0
    keep_best: bool = False
    early_stopping_patience: int = 0
    threads: int = 0  # torch threads on CPU when deterministic (0: leave as is)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class FitOutcome:
    """Final weights plus what happened: the validation curve and the throughput."""

    state: dict[str, np.ndarray]
    curve: list[dict[str, float]] = field(default_factory=list)
    train_samples: int = 0
    train_seconds: float = 0.0
    epoch_seconds: list[float] = field(default_factory=list)
    epoch_samples: list[int] = field(default_factory=list)
    steps: int = 0
    final_train_loss: float = float("nan")
    device: str = "cpu"
    workers: int = 1
    best: dict[str, Any] | None = None  # {"step", "epoch", "samples", "val_logloss"}
    stopped_early: bool = False
    load_seconds: float = 0.0

    @property
    def samples_per_second(self) -> float:
        return self.train_samples / self.train_seconds if self.train_seconds > 0 else 0.0

    @property
    def steady_samples_per_second(self) -> float:
        """Throughput after the first epoch (start-up, warm-up and any shard caching excluded)."""
        seconds, samples = sum(self.epoch_seconds[1:]), sum(self.epoch_samples[1:])
        return samples / seconds if seconds > 0 else self.samples_per_second

    def metrics(self) -> dict[str, Any]:
        return {
            "steps": self.steps,
            "train_samples": self.train_samples,
            "train_seconds": round(self.train_seconds, 4),
            "samples_per_second": round(self.samples_per_second, 1),
            "steady_samples_per_second": round(self.steady_samples_per_second, 1),
            "epoch_seconds": [round(x, 4) for x in self.epoch_seconds],
            "epoch_samples": list(self.epoch_samples),
            "final_train_loss": finite_or_none(self.final_train_loss),
            "val_logloss": self.val_logloss,
            "last_val_logloss": finite_or_none(self.curve[-1]["val_logloss"]) if self.curve else None,
            "best": self.best,
            "epochs_run": len(self.epoch_seconds),
            "stopped_early": self.stopped_early,
            "load_seconds": round(self.load_seconds, 4),
            "device": self.device,
            "workers": self.workers,
        }

    @property
    def val_logloss(self) -> float | None:
        """The validation loss of the weights returned: the best point's, else the last's."""
        if self.best is not None:
            return self.best["val_logloss"]
        return finite_or_none(self.curve[-1]["val_logloss"]) if self.curve else None


def finite_or_none(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None
