"""Training: a cold first version, then warm vs cold on the next window.

The three fits are shared session fixtures (``conftest.trained``), in-process: the loop a
Ray Train worker runs, bitwise the same weights as Ray Train's fit of the same seed and data
(checked by ``test_base_ray_job``, which submits that fit as a Ray job; two workers through
Ray Train: ``test_base_triggers``).
"""

from __future__ import annotations

import pathlib

import numpy as np
import pyarrow as pa
import pytest
import torch

from base_model.artifact import BaseScorer, read_weights
from protos.registry import ModelRegistry
from base_model.training import train_base_model
from tests.base_model.base_world import TRAIN_CFG, Trained, as_of_day
from feature_store.catalog import FEATURE_SERVICE_NAME, ITEM_FEATURES, USER_FEATURES

pytestmark = pytest.mark.slow


def test_the_first_version_is_a_gated_cold_start_with_full_lineage(trained: Trained) -> None:
    v1, registry = trained.v1, trained.registry
    assert (v1.status, v1.promoted) == ("approved", True)
    assert registry.champion("base").version == v1.version == "base-0001"
    stored = registry.get("base", v1.version)
    lineage = stored.lineage
    assert lineage["parent"] is None
    assert lineage["feature_service"] == FEATURE_SERVICE_NAME
    assert lineage["data_window"] == {
        "train_start": "2026-01-01T00:00:00+00:00",
        "train_end": "2026-01-08T00:00:00+00:00",
        "valid_start": "2026-01-08T00:00:00+00:00",
        "valid_end": "2026-01-09T00:00:00+00:00",
    }
    assert "src:" in lineage["code_version"]
    assert lineage["trigger"]["reasons"] == ["manual"]
    metrics = lineage["metrics"]
    assert metrics["backend"] == "local" and metrics["device"] == "cpu" and metrics["workers"] == 1
    assert metrics["steps"] == v1.curve[-1]["step"] > 0
    assert v1.curve[-1]["val_logloss"] < v1.curve[0]["val_logloss"] - 0.05  # it learned
    assert set(stored.gate_results) == {
        "rows",
        "freshness",
        "daily_completeness",
        "hourly_completeness",
        "offline_evaluation",
    }
    assert all(g["passed"] for g in stored.gate_results.values())
    assert (
        stored.gate_results["offline_evaluation"]["details"]["ci_low"] > 0
    )  # beats the click rate


def test_the_registered_artifact_scores_for_serving(trained: Trained) -> None:
    scorer = BaseScorer.load(trained.registry.champion("base").path)
    assert scorer.version == trained.v1.version
    assert scorer.feature_service == FEATURE_SERVICE_NAME
    assert scorer.embedding_dim == TRAIN_CFG.embedding_dim
    n = 300
    items = [f"i{k % 140}" for k in range(n)]  # includes ids the model never saw
    uf = np.ones((len(USER_FEATURES),), np.float32)
    itf = np.full((n, len(ITEM_FEATURES)), 3.0, np.float32)
    s = scorer.score("u5", items, uf, itf)
    assert s.logits.shape == (n,) and s.user_embeddings.shape == s.item_embeddings.shape == (n, 16)
    assert np.isfinite(s.logits).all()
    assert len(np.unique(s.logits)) > 50  # items are told apart
    manifest = scorer.manifest
    assert manifest["warm_start"]["warm"] is False
    assert manifest["reference"].keys() == {*USER_FEATURES, *ITEM_FEATURES}


def test_warm_start_reaches_the_cold_start_validation_loss_in_fewer_steps(trained: Trained) -> None:
    cold, warm = trained.cold_v2, trained.warm_v2
    assert cold.windows == warm.windows  # same data, same validation day
    assert warm.parent == trained.v1.version and cold.parent is None
    ws = warm.warm_start
    assert ws["warm"] is True and ws["parent"] == trained.v1.version
    assert ws["learning_rate"] == pytest.approx(TRAIN_CFG.learning_rate * TRAIN_CFG.warm_lr_factor)
    assert ws["epochs"] == TRAIN_CFG.warm_epochs < TRAIN_CFG.epochs
    assert ws["early_stopping_patience"] == TRAIN_CFG.warm_early_stopping_patience
    assert ws["new_user_rows"] + ws["new_item_rows"] > 0  # ids that appeared on the new day
    manifest = BaseScorer.load(warm.path).manifest
    assert manifest["warm_start"] == ws
    assert trained.registry.get("base", warm.version).lineage["parent"] == trained.v1.version

    target = cold.curve[-1]["val_logloss"]
    cold_steps = cold.curve[-1]["step"]
    reached = next((c["step"] for c in warm.curve if c["val_logloss"] <= target), None)
    assert reached is not None, f"warm never reached {target:.4f}: {warm.curve}"
    assert reached < cold_steps
    assert warm.curve[-1]["step"] < cold_steps
    assert warm.curve[-1]["val_logloss"] <= target


def test_candidates_are_judged_against_the_champion_and_recorded(trained: Trained) -> None:
    registry: ModelRegistry = trained.registry
    for result in (trained.cold_v2, trained.warm_v2):
        stored = registry.get("base", result.version)
        evaluation = stored.gate_results["offline_evaluation"]
        assert evaluation["details"]["reference"] == f"champion {trained.v1.version}"
        assert stored.status == ("approved" if evaluation["passed"] else "rejected")
        assert not result.promoted  # promote=False: the champion stays
    assert registry.champion("base").version == trained.v1.version


def assert_same_weights(a: pathlib.Path, b: pathlib.Path) -> None:
    wa, wb = read_weights(a), read_weights(b)
    assert wa.keys() == wb.keys()
    for name in wa:
        np.testing.assert_array_equal(wa[name], wb[name], err_msg=name)


def test_the_callers_thread_count_does_not_change_the_weights(
    world: pa.Table, tmp_path: pathlib.Path
) -> None:
    """A matrix product over 2 threads sums in another order than over 1: the fit pins
    torch to ``int(cpus_per_worker)`` threads (what a Ray worker gets) and restores the
    caller's count afterwards."""
    cfg = TRAIN_CFG.replace(epochs=2, eval_every_steps=0)
    before = torch.get_num_threads()
    paths = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            result = train_base_model(
                cfg, world, tmp_path / f"r{threads}", as_of=as_of_day(7), backend="local"
            )
            assert torch.get_num_threads() == threads
            paths.append(result.path)
    finally:
        torch.set_num_threads(before)
    assert_same_weights(*paths)
