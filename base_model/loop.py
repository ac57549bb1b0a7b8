"""The training loop, twice: as a Ray Train worker function and as a bare PyTorch loop.

Both run the same ``Ranker`` with the same optimizer, loss and evaluation, so the benchmark's
"Ray Train vs bare loop" compares the pipelines and nothing else. The worker function is
module-level (Ray pickles it by reference) and gets everything through its config dict.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from base_model.model import ModelSpec, Ranker, state_from_numpy, state_to_numpy

logger = logging.getLogger(__name__)

__all__ = ["FitOutcome", "LoopSettings", "bare_loop", "ray_train_loop", "shuffled_batches"]

CHECKPOINT_STATE, CHECKPOINT_METRICS = "model.pt", "metrics.json"


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
            "final_train_loss": _finite(self.final_train_loss),
            "val_logloss": self.curve[-1]["val_logloss"] if self.curve else None,
            "device": self.device,
            "workers": self.workers,
        }


def make_optimizer(model: torch.nn.Module, settings: LoopSettings) -> torch.optim.Optimizer:
    return torch.optim.Adam(
        model.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay
    )


def train_step(
    model: torch.nn.Module, opt: torch.optim.Optimizer, batch: Mapping[str, torch.Tensor]
) -> torch.Tensor:
    """One optimizer step on a batch; returns the (detached) mean log loss."""
    logits = model(batch["user"], batch["item"], batch["dense"])
    loss = F.binary_cross_entropy_with_logits(logits, batch["label"])
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.detach()


@torch.inference_mode()
def evaluate(
    model: torch.nn.Module, valid: Mapping[str, torch.Tensor], batch_size: int = 65536
) -> float:
    """Mean log loss of ``model`` over the validation tensors."""
    n = int(valid["label"].shape[0])
    if n == 0:
        return float("nan")
    was_training = model.training
    model.eval()
    total = torch.zeros((), dtype=torch.float64, device=valid["label"].device)
    for start in range(0, n, batch_size):
        s = slice(start, start + batch_size)
        logits = model(valid["user"][s], valid["item"][s], valid["dense"][s])
        total += F.binary_cross_entropy_with_logits(
            logits, valid["label"][s], reduction="sum"
        ).double()
    model.train(was_training)
    return float(total) / n


def run_epochs(
    model: torch.nn.Module,
    opt: torch.optim.Optimizer,
    settings: LoopSettings,
    batches_for_epoch: Any,
    valid: Mapping[str, torch.Tensor] | None,
    eval_model: torch.nn.Module,
    device: torch.device,
    on_epoch_end: Any = None,
) -> FitOutcome:
    """The loop both paths share. ``batches_for_epoch(epoch)`` yields dicts of tensors on
    ``device``; validation (when ``valid`` is given) runs every ``eval_every_steps`` steps
    and after each epoch, outside the timed part."""
    outcome = FitOutcome(state={}, device=str(device))
    step = 0
    curve: list[dict[str, float]] = []
    if valid is not None:
        curve.append(
            {"step": 0, "samples": 0, "epoch": 0, "val_logloss": evaluate(eval_model, valid)}
        )
    model.train()
    for epoch in range(settings.epochs):
        loss_sum = torch.zeros((), device=device)
        epoch_steps, epoch_seconds, epoch_samples = 0, 0.0, 0
        t0 = _sync_time(device)
        for batch in batches_for_epoch(epoch):
            loss_sum += train_step(model, opt, batch)
            step += 1
            epoch_steps += 1
            epoch_samples += int(batch["label"].shape[0])
            if (
                valid is not None
                and settings.eval_every_steps
                and step % settings.eval_every_steps == 0
            ):
                epoch_seconds += _sync_time(device) - t0
                curve.append(
                    {
                        "step": step,
                        "samples": outcome.train_samples + epoch_samples,
                        "epoch": epoch + 1,
                        "val_logloss": evaluate(eval_model, valid),
                    }
                )
                t0 = _sync_time(device)
        epoch_seconds += _sync_time(device) - t0
        outcome.epoch_seconds.append(epoch_seconds)
        outcome.epoch_samples.append(epoch_samples)
        outcome.train_seconds += epoch_seconds
        outcome.train_samples += epoch_samples
        outcome.final_train_loss = float(loss_sum) / max(epoch_steps, 1)
        if valid is not None and (not curve or curve[-1]["step"] != step):
            curve.append(
                {
                    "step": step,
                    "samples": outcome.train_samples,
                    "epoch": epoch + 1,
                    "val_logloss": evaluate(eval_model, valid),
                }
            )
        outcome.steps = step
        outcome.curve = curve
        if on_epoch_end is not None:
            on_epoch_end(epoch, outcome)
    outcome.state = state_to_numpy(eval_model)
    return outcome


def shuffled_batches(
    data: Mapping[str, torch.Tensor], batch_size: int, seed: int
) -> Iterable[dict[str, torch.Tensor]]:
    """Batches of tensors already on their device, in a seeded random order (same seed, same
    order, on any device): the bare loop's every epoch, and a Ray worker's epochs after the
    first when its shard is cached."""
    n = int(data["label"].shape[0])
    device = data["label"].device
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).to(device)
    for start in range(0, n, batch_size):
        idx = order[start : start + batch_size]
        yield {k: v.index_select(0, idx) for k, v in data.items()}


def bare_loop(
    spec: ModelSpec,
    init_state: Mapping[str, np.ndarray],
    settings: LoopSettings,
    train: Mapping[str, np.ndarray],
    valid: Mapping[str, np.ndarray] | None,
    device: str = "cpu",
) -> FitOutcome:
    """Plain PyTorch, the best case: the whole training set moved to ``device`` once, a seeded
    on-device shuffle per epoch. No Ray, no data pipeline."""
    dev = torch.device(device)
    torch.manual_seed(settings.seed)
    model = Ranker(spec)
    state_from_numpy(model, init_state)
    model.to(dev)
    opt = make_optimizer(model, settings)
    resident = {k: torch.from_numpy(np.ascontiguousarray(v)).to(dev) for k, v in train.items()}
    valid_t = (
        None
        if valid is None
        else {k: torch.from_numpy(np.ascontiguousarray(v)).to(dev) for k, v in valid.items()}
    )

    def batches(epoch: int) -> Iterable[dict[str, torch.Tensor]]:
        return shuffled_batches(resident, settings.batch_size, settings.seed + epoch)

    return run_epochs(model, opt, settings, batches, valid_t, model, dev)


def ray_train_loop(config: dict[str, Any]) -> None:
    """Ray Train worker: reads its shard of ``train`` (and all of ``valid`` on rank 0) through
    Ray Data, trains, and reports metrics plus a checkpoint after every epoch."""
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
    else:
        torch.manual_seed(settings.seed)
    init_state = config["init_state"]
    if isinstance(init_state, ray.ObjectRef):
        init_state = ray.get(init_state)
    model = Ranker(spec)
    state_from_numpy(model, init_state)
    model = ray.train.torch.prepare_model(model)  # to the device; DDP when world > 1
    eval_model = model.module if hasattr(model, "module") else model
    opt = make_optimizer(model, settings)
    shard = ray.train.get_dataset_shard("train")
    valid = _materialize(ray.train.get_dataset_shard("valid"), device) if rank == 0 else None
    dtypes = {
        "user": torch.int64,
        "item": torch.int64,
        "dense": torch.float32,
        "label": torch.float32,
    }

    cache: dict[str, Any] = {
        "kept": [] if settings.cache_max_rows > 0 else None,
        "rows": 0,
        "data": None,
    }
    chunk_rows = settings.batch_size * max(1, settings.chunk_batches)

    def batches(epoch: int) -> Iterable[Mapping[str, torch.Tensor]]:
        """Ray Data delivers chunks of ``chunk_batches`` batches to the device (prefetched, pinned
        on CUDA); mini-batches are cut from each chunk there, so the pipeline's per-batch cost
        is paid once per chunk. A shard small enough is kept on the device after epoch 1."""
        if cache["data"] is not None:
            yield from shuffled_batches(cache["data"], settings.batch_size, settings.seed + epoch)
            return
        chunks = shard.iter_torch_batches(
            batch_size=chunk_rows,
            dtypes=dtypes,
            device=device,
            prefetch_batches=settings.prefetch_batches,
            local_shuffle_buffer_size=settings.shuffle_buffer_rows or None,
            local_shuffle_seed=(settings.seed + epoch) if settings.shuffle_buffer_rows else None,
            pin_memory=device.type == "cuda",
        )
        for k, chunk in enumerate(chunks):
            if cache["kept"] is not None:
                cache["rows"] += int(chunk["label"].shape[0])
                if cache["rows"] > settings.cache_max_rows:
                    cache["kept"] = None  # too big to keep: stream every epoch
                else:
                    cache["kept"].append(chunk)
            yield from shuffled_batches(
                chunk, settings.batch_size, (settings.seed + epoch) * 100_003 + k
            )
        if cache["kept"]:
            cache["data"] = {k: torch.cat([c[k] for c in cache["kept"]]) for k in dtypes}
            cache["kept"] = None

    def report(epoch: int, outcome: FitOutcome) -> None:
        metrics = {**outcome.metrics(), "epoch": epoch + 1, "rank": rank, "world_size": world}
        if rank != 0:
            ray.train.report(metrics)
            return
        metrics["curve"] = outcome.curve
        with tempfile.TemporaryDirectory() as tmp:
            torch.save(
                {k: v.detach().cpu() for k, v in eval_model.state_dict().items()},
                os.path.join(tmp, CHECKPOINT_STATE),
            )
            with open(os.path.join(tmp, CHECKPOINT_METRICS), "w", encoding="utf-8") as f:
                json.dump(metrics, f)
            ray.train.report(metrics, checkpoint=Checkpoint.from_directory(tmp))

    run_epochs(model, opt, settings, batches, valid, eval_model, device, on_epoch_end=report)


def load_checkpoint(directory: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """State (NumPy) and metrics from a checkpoint directory written by ``ray_train_loop``."""
    state = torch.load(
        os.path.join(directory, CHECKPOINT_STATE), map_location="cpu", weights_only=True
    )
    with open(os.path.join(directory, CHECKPOINT_METRICS), encoding="utf-8") as f:
        metrics = json.load(f)
    return {k: v.numpy().copy() for k, v in state.items()}, metrics


def _materialize(shard: Any, device: torch.device) -> dict[str, torch.Tensor]:
    parts: dict[str, list[torch.Tensor]] = {"user": [], "item": [], "dense": [], "label": []}
    for batch in shard.iter_torch_batches(batch_size=65536, device=device):
        for k in parts:
            parts[k].append(batch[k])
    if not parts["label"]:
        return {
            "user": torch.zeros(0, dtype=torch.int64, device=device),
            "item": torch.zeros(0, dtype=torch.int64, device=device),
            "dense": torch.zeros((0, 0), device=device),
            "label": torch.zeros(0, device=device),
        }
    out = {k: torch.cat(v) for k, v in parts.items()}
    out["user"], out["item"] = out["user"].long(), out["item"].long()
    out["dense"], out["label"] = out["dense"].float(), out["label"].float()
    return out


def _sync_time(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def _finite(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None
