"""The synthetic world and training config every base-model test shares (imported by name)."""

from __future__ import annotations

import socket
from dataclasses import dataclass
from datetime import datetime

from base_model.config import BaseModelConfig
from protos.registry import ModelRegistry
from base_model.synthetic import SyntheticSpec, day_end
from base_model.training import TrainResult

WORLD = SyntheticSpec(events_per_hour=200, days=9, seed=0)

# Small and quick: a few epochs on ~34k rows. Early stopping and best-epoch export are on (the
# defaults); the synthetic world is stationary, so its curve falls for all 4 epochs.
TRAIN_CFG = BaseModelConfig(
    embedding_dim=16,
    hidden_layers=(32, 16),
    learning_rate=0.01,
    epochs=4,
    batch_size=1024,
    eval_every_steps=5,
    warm_epochs=2,
    warm_lr_factor=0.3,
    min_train_rows=500,
    bootstrap_samples=200,
    min_gain_vs_champion=-0.02,
    num_workers=1,
    use_gpu=False,
)


def as_of_day(day: int) -> datetime:
    """Training time at the end of ``day``: validates on ``day``, trains on the 7 before."""
    return day_end(WORLD, day)


@dataclass(frozen=True)
class Trained:
    """The session's three fits (``conftest.trained``): v1 through Ray Train, v2 cold and warm in-process."""

    registry: ModelRegistry
    v1: TrainResult
    cold_v2: TrainResult
    warm_v2: TrainResult


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (as ``tests/conftest.py``)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
