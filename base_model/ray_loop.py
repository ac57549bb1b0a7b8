"""The Ray Train worker function: ``run_epochs`` on a Ray Data shard, with checkpoints.

Module-level (Ray pickles it by reference) and configured only through its config dict
(``settings``, ``spec``, ``init_state``, ``train_rows``). Each worker reads its shard of
``train`` (and rank 0 all of ``valid``) through Ray Data, trains with the loop of
``base_model.loop``, and reports metrics plus a checkpoint that ``load_checkpoint`` reads
back on the driver. With one worker that keeps its shard in memory (``cache_max_rows``) it
reads the same batches in the same order as the bare loop, so the weights match bitwise.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import torch

from base_model.loop import (
    COLUMNS,
    DTYPES,
    BestTracker,
    FitOutcome,
    LoopSettings,
    make_optimizer,
    reproducible,
    run_epochs,
    shuffled_batches,
    sync_time,
)
from base_model.model import ModelSpec, Ranker, state_from_numpy

__all__ = ["CHECKPOINT_METRICS", "CHECKPOINT_STATE", "load_checkpoint", "ray_train_loop"]

CHECKPOINT_STATE, CHECKPOINT_METRICS = "model.pt", "metrics.json"


def ray_train_loop(config: dict[str, Any]) -> None:
    """Ray Train worker: reads its shard of ``train`` (and all of ``valid`` on rank 0) through
    Ray Data, trains, and reports metrics plus a checkpoint (the best weights so far, with
    ``keep_best``) after every epoch."""
    import ray
    import ray.train
    import ray.train.torch
    from ray.train import Checkpoint

    settings = LoopSettings(**config["settings"])
    spec = ModelSpec.from_dict(config["spec"])
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    if settings.deterministic and device.type == "cpu":
        ray.train.torch.enable_reproducibility(settings.seed)
    with reproducible(settings, device):
        _ray_fit(config, settings, spec, rank, world, device, Checkpoint)


def _ray_fit(
    config: dict[str, Any],
    settings: LoopSettings,
    spec: ModelSpec,
    rank: int,
    world: int,
    device: torch.device,
    checkpoint_cls: Any,
) -> None:
    import ray
    import ray.train
    import ray.train.torch

    init_state = config["init_state"]
    if isinstance(init_state, ray.ObjectRef):
        init_state = ray.get(init_state)
    ranker = Ranker(spec)
    state_from_numpy(ranker, init_state)
    model = ray.train.torch.prepare_model(ranker)  # to the device; DDP when world > 1
    eval_model: torch.nn.Module = ranker  # DDP wraps it: the same module, unwrapped
    opt = make_optimizer(model, settings)
    shard = ray.train.get_dataset_shard("train")
    valid = _materialize(ray.train.get_dataset_shard("valid"), device) if rank == 0 else None
    if valid is not None and valid["label"].numel() == 0:
        valid = None  # an empty validation day (min_valid_rows = 0): no validation points
    chunk_rows = settings.batch_size * max(1, settings.chunk_batches)
    shard_rows = -(-int(config.get("train_rows", 0)) // world)
    cached: dict[str, torch.Tensor] | None = None
    load_seconds = 0.0
    if 0 < shard_rows <= settings.cache_max_rows:
        # The shard fits: read it once, in order, then shuffle it on the device every epoch
        # exactly as the bare loop does (one worker: the same batches, the same weights).
        t0 = sync_time(device)
        cached = _materialize(shard, device, chunk_rows, settings.prefetch_batches)
        load_seconds = sync_time(device) - t0

    def batches(epoch: int) -> Iterable[Mapping[str, torch.Tensor]]:
        """A cached shard: a seeded on-device shuffle. Otherwise Ray Data streams chunks of
        ``chunk_batches`` batches to the device (prefetched, pinned on CUDA, through the local
        shuffle buffer) and mini-batches are cut from each chunk there, so the pipeline's
        per-batch cost is paid once per chunk."""
        if cached is not None:
            yield from shuffled_batches(cached, settings.batch_size, settings.seed + epoch)
            return
        chunks = shard.iter_torch_batches(
            batch_size=chunk_rows,
            dtypes=DTYPES,
            device=device,
            prefetch_batches=settings.prefetch_batches,
            local_shuffle_buffer_size=settings.shuffle_buffer_rows or None,
            local_shuffle_seed=(settings.seed + epoch) if settings.shuffle_buffer_rows else None,
            pin_memory=device.type == "cuda",
        )
        for k, chunk in enumerate(chunks):
            yield from shuffled_batches(
                chunk, settings.batch_size, (settings.seed + epoch) * 100_003 + k
            )

    def agree(stop: bool) -> bool:
        """Rank 0 (the validation data) decides; DDP workers must stop at the same step."""
        if world == 1:
            return stop
        flag = torch.tensor([1 if stop else 0], device=device)
        torch.distributed.broadcast(flag, src=0)
        return bool(flag.item())

    def report(epoch: int, outcome: FitOutcome, tracker: BestTracker) -> None:
        """Metrics every epoch; a checkpoint (the weights to export so far, and every metric
        the driver reads back) when they changed or the fit ends: the last checkpoint is the
        result, and a 50-epoch fit does not write 50 of them."""
        outcome.load_seconds = load_seconds
        metrics = {**outcome.metrics(), "epoch": epoch + 1, "rank": rank, "world_size": world}
        last = outcome.stopped_early or epoch + 1 == settings.epochs
        changed = not settings.keep_best or tracker.best_state is None or tracker.improved
        if rank != 0 or not (last or changed):
            ray.train.report(metrics)
            return
        metrics["curve"] = outcome.curve
        with tempfile.TemporaryDirectory() as tmp:
            torch.save(
                {k: v.detach().cpu() for k, v in tracker.state_tensors().items()},
                os.path.join(tmp, CHECKPOINT_STATE),
            )
            with open(os.path.join(tmp, CHECKPOINT_METRICS), "w", encoding="utf-8") as f:
                json.dump(metrics, f)
            ray.train.report(metrics, checkpoint=checkpoint_cls.from_directory(tmp))

    run_epochs(
        model, opt, settings, batches, valid, eval_model, device, on_epoch_end=report, agree=agree
    )


def load_checkpoint(directory: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """State (NumPy) and metrics from a checkpoint directory written by ``ray_train_loop``."""
    state = torch.load(
        os.path.join(directory, CHECKPOINT_STATE), map_location="cpu", weights_only=True
    )
    with open(os.path.join(directory, CHECKPOINT_METRICS), encoding="utf-8") as f:
        metrics = json.load(f)
    return {k: v.numpy().copy() for k, v in state.items()}, metrics


def _materialize(
    shard: Any, device: torch.device, chunk_rows: int = 65536, prefetch_batches: int = 1
) -> dict[str, torch.Tensor]:
    """A whole dataset shard as tensors on ``device``, rows in the dataset's order."""
    parts: dict[str, list[torch.Tensor]] = {k: [] for k in COLUMNS}
    for batch in shard.iter_torch_batches(
        batch_size=chunk_rows,
        dtypes=DTYPES,
        device=device,
        prefetch_batches=prefetch_batches,
        pin_memory=device.type == "cuda",
    ):
        for k in parts:
            parts[k].append(batch[k])
    if not parts["label"]:
        return {
            k: torch.zeros((0, 0) if k == "dense" else 0, dtype=DTYPES[k], device=device)
            for k in COLUMNS
        }
    return {k: torch.cat(v) for k, v in parts.items()}
