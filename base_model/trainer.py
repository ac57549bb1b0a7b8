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
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from base_model.config import BaseModelConfig
from base_model.fit_types import FitOutcome, LoopSettings
from protos.ray_local import init_local_ray

if TYPE_CHECKING:  # torch: imported by the fit, not by planning it
    from base_model.data import Encoded
    from base_model.model import ModelSpec

logger = logging.getLogger(__name__)

__all__ = ["RayFit", "connect", "fit_with_ray", "quiet_worker_logging", "resolve_use_gpu"]

#: Loggers of Ray Train's helpers that speak in a normal fit on the loopback cluster without
#: anything for the user to do: the placement-group cleaner asks the State API whether the
#: controller is alive once a second and warns each time it cannot (the loopback cluster runs
#: no dashboard, so it never can): ~25 lines per fit.
QUIET_WORKER_LOGGERS = ("ray.train.v2._internal.execution.controller.placement_group_cleaner",)
#: Driver-side Ray loggers a quiet run keeps at ERROR: the token notice of a cluster started
#: on loopback, which suggests turning authentication off (not advice to pass on). Ray's own
#: start-up banner (INFO) goes with ``ray.init(logging_level=WARNING)``.
QUIET_DRIVER_LOGGERS = ("ray._private.authentication.authentication_token_setup",)


@dataclass(frozen=True)
class RayFit:
    """The outcome of one fit, plus its wall time including Ray's start-up."""

    outcome: FitOutcome
    wall_seconds: float
    use_gpu: bool


def quiet_worker_logging() -> None:
    """Ray worker set-up hook: ``QUIET_WORKER_LOGGERS`` log errors only."""
    for name in QUIET_WORKER_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)


def connect(address: str | None = None, *, quiet: bool = False) -> None:
    """Join ``address`` (or ``$RAY_ADDRESS``, set in a Ray job), else start a loopback cluster
    whose workers run ``quiet_worker_logging`` first. Does nothing if Ray is initialised.

    ``quiet`` (the ``freshrank`` command's normal run): Ray logs warnings and errors only
    (``QUIET_DRIVER_LOGGERS``: errors only) and the workers' output is not echoed here (a
    failed fit still raises with its traceback; the logs stay in Ray's session directory).
    """
    import ray  # sets Ray's loggers up: quiet them after this, before the cluster starts

    options: dict[str, Any] = {}
    if quiet:
        for name in QUIET_DRIVER_LOGGERS:
            logging.getLogger(name).setLevel(logging.ERROR)
        options = {"log_to_driver": False, "logging_level": logging.WARNING}
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address:
        init_local_ray(address=address, **options)
        return
    if not ray.is_initialized():
        hook = f"{__name__}.{quiet_worker_logging.__name__}"
        options["runtime_env"] = {"worker_process_setup_hook": hook}
    init_local_ray(**options)


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

    from base_model.ray_loop import load_checkpoint, ray_train_loop

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
    ingest = _ingest_options()
    trainer = TorchTrainer(
        ray_train_loop,
        train_loop_config={
            "settings": settings.to_dict(),
            "spec": spec.to_dict(),
            "init_state": ray.put(init_state),
            "train_rows": len(train),
        },
        scaling_config=ray.train.ScalingConfig(
            num_workers=cfg.num_workers, use_gpu=use_gpu, resources_per_worker=resources,
            placement_strategy=cfg.placement_strategy,
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


def _ingest_options() -> Any:
    """Ray Train's default ingest options, in order (with the seeded shuffle: same seed, same
    batches). Built here rather than by ``DataConfig.default_ingest_options()``, which in
    Ray 2.60 passes the deprecated ``exclude_resources`` and warns on every fit."""
    from ray.data import ExecutionOptions
    from ray.data.context import DataContext

    current = DataContext.get_current().execution_options
    return ExecutionOptions(
        resource_limits=current.resource_limits,
        preserve_order=True,
        verbose_progress=current.verbose_progress,
    )


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
