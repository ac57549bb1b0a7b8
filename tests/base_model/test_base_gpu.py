"""The GPU path: a Ray Train fit with ``use_gpu=True`` on a real GPU (skipped without CUDA)."""

from __future__ import annotations

import pathlib

import numpy as np
import pyarrow as pa
import pytest
import torch

from base_model.artifact import BaseScorer
from protos.registry import ModelRegistry
from base_model.training import train_base_model
from tests.base_model.base_world import TRAIN_CFG, as_of_day

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.slow,
    pytest.mark.skipif(
        not torch.cuda.is_available(),
        reason="needs a CUDA GPU (torch.cuda.is_available() is False)",
    ),
]


def test_ray_train_uses_the_gpu_and_the_artifact_scores_on_cpu(
    ray_cluster: None, world: pa.Table, tmp_path: pathlib.Path
) -> None:
    registry = ModelRegistry(tmp_path / "registry")
    result = train_base_model(
        TRAIN_CFG.replace(use_gpu="auto"), world, registry, as_of=as_of_day(7)
    )
    assert result.metrics["device"].startswith("cuda"), result.metrics
    assert result.status == "approved"
    scorer = BaseScorer.load(result.path)
    n_user, n_item = len(scorer.user_features), len(scorer.item_features)
    s = scorer.score(
        "u1", ["i1", "i2"], np.ones(n_user, np.float32), np.ones((2, n_item), np.float32)
    )
    assert np.isfinite(s.logits).all()
