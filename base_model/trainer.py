"""Run ``loop.ray_train_loop`` as a Ray Train ``TorchTrainer`` fit, on GPUs when there are some.

Data travels as Ray Data datasets (``train`` split across workers, ``valid`` whole to rank 0),
the initial weights through the object store, and the result comes back as the last
checkpoint reported with ``ray.train.report`` (the best weights seen, with ``keep_best``).
Ray Data keeps the datasets' order (``preserve_order``), so a worker reads its rows in the
order the driver wrote them: with the seeded shuffles, one CPU worker trains exactly the
weights the in-process loop trains.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from base_model.config import BaseModelConfig
from base_model.data import Encoded
from base_model.loop import FitOutcome, LoopSettings, load_checkpoint, ray_train_loop
from base_model.model import ModelSpec
from protos.ray_local import init_local_ray

logger = logging.getLogger(__name__)

__all__ = ["RayFit", "connect", "fit_with_ray", "resolve_use_gpu"]


@dataclass(frozen=True)
class RayFit:
    """The outcome of one fit, plus its wall time including Ray's start-up."""

    outcome: FitOutcome
    wall_seconds: float
    use_gpu: bool


def connect(address: str | None = None) -> None:
    """Join ``address`` (or ``$RAY_ADDRESS``, set in a Ray job), else start a loopback cluster."""
    import os

    init_local_ray(address=address or os.environ.get("RAY_ADDRESS") or None)


def resolve_use_gpu(cfg: BaseModelConfig) -> bool:
    """``use_gpu="auto"``: GPUs when the cluster has at least one per worker."""
    import ray

    if cfg.use_gpu != "auto":
        return bool(cfg.use_gpu)
    gpus = float(ray.cluster_resources().get("GPU", 0))
    if 0 < gpus < cfg.num_workers:
        logger.warning(
            "cluster has %s GPU(s) for %s workers: training on CPU", gpus, cfg.num_workers
        )
    return gpus >= cfg.num_workers


def fit_with_ray(
    cfg: BaseModelConfig,
    spec: ModelSpec,
    init_state: dict[str, np.ndarray],
    settings: LoopSettings,
    train: Encoded,
    valid: Encoded,
    run_name: str,
    address: str | None = None,
) -> RayFit:
    """One ``TorchTrainer.fit``; returns the final weights, the curve and the throughput."""
    import ray
    import ray.data
    import ray.train
    from ray.train.torch import TorchTrainer

    connect(address)
    # Progress bars from the split coordinator and every worker flood a job's log; the
    # context is captured by the datasets created below.
    ray.data.DataContext.get_current().enable_progress_bars = False
    use_gpu = resolve_use_gpu(cfg)
    settings = LoopSettings(
        **{**settings.to_dict(), "deterministic": settings.deterministic and not use_gpu}
    )
    _warn_if_short(cfg, use_gpu)
    storage = cfg.storage_path or tempfile.mkdtemp(prefix="freshrank-raytrain-")
    resources: dict[str, Any] = {"CPU": cfg.cpus_per_worker}
    if use_gpu:
        resources["GPU"] = 1
    ingest = ray.train.DataConfig.default_ingest_options()
    ingest.preserve_order = True  # with the seeded shuffle: same seed, same batches
    trainer = TorchTrainer(
        ray_train_loop,
        train_loop_config={
            "settings": settings.to_dict(),
            "spec": spec.to_dict(),
            "init_state": ray.put(init_state),
            "train_rows": len(train),
        },
        scaling_config=ray.train.ScalingConfig(
            num_workers=cfg.num_workers, use_gpu=use_gpu, resources_per_worker=resources
        ),
        run_config=ray.train.RunConfig(name=run_name, storage_path=storage),
        datasets={
            "train": ray.data.from_arrow(train.to_arrow()),
            "valid": ray.data.from_arrow(valid.to_arrow()),
        },
        dataset_config=ray.train.DataConfig(datasets_to_split=["train"], execution_options=ingest),
    )
    t0 = time.perf_counter()
    try:
        result = trainer.fit()
        wall = time.perf_counter() - t0
        if result.checkpoint is None:
            raise RuntimeError(f"Ray Train run {run_name} reported no checkpoint")
        with result.checkpoint.as_directory() as directory:
            state, metrics = load_checkpoint(directory)
    finally:
        if not cfg.storage_path:
            shutil.rmtree(storage, ignore_errors=True)
    outcome = FitOutcome(
        state=state,
        curve=list(metrics.get("curve", [])),
        train_samples=int(metrics["train_samples"]) * cfg.num_workers,
        train_seconds=float(metrics["train_seconds"]),
        epoch_seconds=[float(x) for x in metrics.get("epoch_seconds", [])],
        epoch_samples=[int(x) * cfg.num_workers for x in metrics.get("epoch_samples", [])],
        steps=int(metrics["steps"]),
        final_train_loss=_float_or_nan(metrics.get("final_train_loss")),
        device=str(metrics["device"]),
        workers=cfg.num_workers,
        best=metrics.get("best"),
        stopped_early=bool(metrics.get("stopped_early", False)),
        load_seconds=float(metrics.get("load_seconds", 0.0)),
    )
    logger.info(
        "fit %s: %d steps, %.0f samples/s, %.1f s wall (%s)",
        run_name,
        outcome.steps,
        outcome.samples_per_second,
        wall,
        outcome.device,
    )
    return RayFit(outcome, wall, use_gpu)


def _warn_if_short(cfg: BaseModelConfig, use_gpu: bool) -> None:
    import ray

    have = ray.cluster_resources()
    need_cpu = cfg.num_workers * cfg.cpus_per_worker
    if have.get("CPU", 0) < need_cpu or (use_gpu and have.get("GPU", 0) < cfg.num_workers):
        logger.warning(
            "the cluster has %s CPU / %s GPU now; %d workers need %s CPU%s: the fit waits for an "
            "autoscaler or hangs",
            have.get("CPU", 0),
            have.get("GPU", 0),
            cfg.num_workers,
            need_cpu,
            f" + {cfg.num_workers} GPU" if use_gpu else "",
        )


def _float_or_nan(value: float | None) -> float:
    return float("nan") if value is None else float(value)
