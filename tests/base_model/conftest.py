"""Shared data and models for the base-model tests.

One synthetic world (``base_model.synthetic``: learnable user x item structure, new ids over
time) serves every test. Ray Train fits are few and shared (session fixtures): v1 (cold, the
first champion), then a cold and a warm v2 on the next window. Each costs ~15-25 s here.
"""

from __future__ import annotations

import pathlib

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from protos.registry import ModelRegistry
from base_model.synthetic import synthetic_training_set
from base_model.training import TrainResult, train_base_model
from tests.base_model.base_world import TRAIN_CFG, WORLD, Trained, as_of_day


@pytest.fixture(scope="session")
def world() -> pa.Table:
    """Nine days of synthetic events with every catalog feature (~43k rows)."""
    return synthetic_training_set(WORLD)


@pytest.fixture(scope="session")
def world_parquet(world: pa.Table, tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    path = tmp_path_factory.mktemp("world") / "training_set.parquet"
    pq.write_table(world, path)
    return path


@pytest.fixture(scope="session")
def first_version(
    world: pa.Table, tmp_path_factory: pytest.TempPathFactory
) -> tuple[ModelRegistry, TrainResult]:
    """v1, a cold start on days 0-6 validated on day 7, promoted; fitted in-process
    (``backend="local"``: the loop a Ray Train worker runs). Ray Train's fit of the same
    seed and data, submitted as a job, must equal it bitwise (test_base_ray_job); an
    in-process Ray Train fit here as well cost ~45 s of Ray Train start-up for no other
    claim (two workers through Ray Train: test_base_triggers)."""
    registry = ModelRegistry(tmp_path_factory.mktemp("registry"))
    return registry, train_base_model(
        TRAIN_CFG, world, registry, as_of=as_of_day(7), backend="local"
    )


@pytest.fixture(scope="session")
def trained(first_version: tuple[ModelRegistry, TrainResult], world: pa.Table) -> Trained:
    """Two more fits on the next window (days 1-7, validated on day 8): cold and warm from v1.

    In-process (``backend="local"``: the Ray worker's loop, bitwise the same weights, which
    ``test_base_ray_job`` checks): each Ray fit costs ~20-45 s of start-up."""
    registry, v1 = first_version
    cold = train_base_model(
        TRAIN_CFG, world, registry, as_of=as_of_day(8), parent=None, promote=False, backend="local"
    )
    warm = train_base_model(
        TRAIN_CFG, world, registry, as_of=as_of_day(8), parent=v1.version, promote=False,
        backend="local",
    )
    return Trained(registry, v1, cold, warm)
