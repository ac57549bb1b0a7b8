"""The training loop, twice: as a Ray Train worker function and as a bare PyTorch loop.

Both run the same ``Ranker`` with the same optimizer, loss and evaluation, so the benchmark's
"Ray Train vs bare loop" compares the pipelines and nothing else. The worker function is
module-level (Ray pickles it by reference) and gets everything through its config dict.

Best-state selection: every validation point (after each epoch, and every
``eval_every_steps`` steps) that beats the best validation loss so far keeps a copy of the
weights; the fit returns the best copy (``keep_best``), and stops after
``early_stopping_patience`` epochs without a new best. On drifting data (items that live a
day) the first epoch is often the best one: later epochs memorise ids that die.

Determinism (CPU, ``deterministic``): both paths run with ``threads`` torch threads and
deterministic algorithms, start from the same weights, and, when a Ray worker keeps its
shard in memory (one worker, ``cache_max_rows``), read the same batches in the same order as
the bare loop: same seed + same data gives bitwise the same weights in-process and through
Ray Train.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from base_model.model import ModelSpec, Ranker, state_from_numpy, state_to_numpy

logger = logging.getLogger(__name__)

__all__ = ["FitOutcome", "LoopSettings", "bare_loop", "ray_train_loop", "shuffled_batches"]

CHECKPOINT_STATE, CHECKPOINT_METRICS = "model.pt", "metrics.json"
COLUMNS = ("user", "item", "category", "dense", "label")
DTYPES = {
    "user": torch.int64,
    "item": torch.int64,
    "category": torch.int64,
    "dense": torch.float32,
    "label": torch.float32,
}
# A validation loss counts as a new best only when it beats the best by this relative margin
# (float noise between evaluations must not reset the patience).
IMPROVEMENT = 1e-5


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
            "final_train_loss": _finite(self.final_train_loss),
            "val_logloss": self.val_logloss,
            "last_val_logloss": _finite(self.curve[-1]["val_logloss"]) if self.curve else None,
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
        return _finite(self.curve[-1]["val_logloss"]) if self.curve else None


def make_optimizer(model: torch.nn.Module, settings: LoopSettings) -> torch.optim.Optimizer:
    return torch.optim.Adam(
        model.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay
    )


def train_step(
    model: torch.nn.Module,
    opt: torch.optim.Optimizer,
    batch: Mapping[str, torch.Tensor],
    embedding_l2: float = 0.0,
) -> torch.Tensor:
    """One optimizer step on a batch; returns the (detached) mean log loss.

    ``embedding_l2`` adds that weight times the mean squared norm of the embedding and bias
    rows the batch used: an id seen in many rows is pulled towards 0 in proportion to its
    data, and a row no batch touches is left alone (weight decay would shrink every row at
    every step, the long tail most).
    """
    if embedding_l2 > 0:
        logits, penalty = model(
            batch["user"], batch["item"], batch["dense"], batch["category"], with_penalty=True
        )
        loss = F.binary_cross_entropy_with_logits(logits, batch["label"])
        total = loss + embedding_l2 * penalty
    else:
        logits = model(batch["user"], batch["item"], batch["dense"], batch["category"])
        loss = total = F.binary_cross_entropy_with_logits(logits, batch["label"])
    opt.zero_grad(set_to_none=True)
    total.backward()
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
        logits = model(valid["user"][s], valid["item"][s], valid["dense"][s], valid["category"][s])
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
    agree: Callable[[bool], bool] | None = None,
) -> FitOutcome:
    """The loop both paths share. ``batches_for_epoch(epoch)`` yields dicts of tensors on
    ``device``; validation (when ``valid`` is given) runs every ``eval_every_steps`` steps
    and after each epoch, outside the timed part. ``agree(stop)`` turns one worker's
    early-stopping decision into every worker's (DDP: the rank with the validation data
    decides; default: as is)."""
    outcome = FitOutcome(state={}, device=str(device))
    step = 0
    curve: list[dict[str, float]] = []
    tracker = _BestTracker(eval_model, settings.keep_best)

    def validate(data: Mapping[str, torch.Tensor], epoch: int, samples: int) -> None:
        point = {
            "step": step,
            "samples": samples,
            "epoch": epoch,
            "val_logloss": evaluate(eval_model, data),
        }
        curve.append(point)
        tracker.offer(point)

    if valid is not None:
        validate(valid, 0, 0)
    model.train()
    for epoch in range(settings.epochs):
        loss_sum = torch.zeros((), device=device)
        epoch_steps, epoch_seconds, epoch_samples = 0, 0.0, 0
        best_before = tracker.best_loss
        t0 = _sync_time(device)
        for batch in batches_for_epoch(epoch):
            loss_sum += train_step(model, opt, batch, settings.embedding_l2)
            step += 1
            epoch_steps += 1
            epoch_samples += int(batch["label"].shape[0])
            if (
                valid is not None
                and settings.eval_every_steps
                and step % settings.eval_every_steps == 0
            ):
                epoch_seconds += _sync_time(device) - t0
                validate(valid, epoch + 1, outcome.train_samples + epoch_samples)
                model.train()
                t0 = _sync_time(device)
        epoch_seconds += _sync_time(device) - t0
        outcome.epoch_seconds.append(epoch_seconds)
        outcome.epoch_samples.append(epoch_samples)
        outcome.train_seconds += epoch_seconds
        outcome.train_samples += epoch_samples
        outcome.final_train_loss = float(loss_sum) / max(epoch_steps, 1)
        if valid is not None and (not curve or curve[-1]["step"] != step):
            validate(valid, epoch + 1, outcome.train_samples)
            model.train()
        tracker.end_epoch(improved=tracker.best_loss < best_before)
        outcome.steps = step
        outcome.curve = curve
        outcome.best = tracker.best_point if settings.keep_best else None
        stop = (
            valid is not None
            and settings.early_stopping_patience > 0
            and tracker.epochs_without_best >= settings.early_stopping_patience
            and epoch + 1 < settings.epochs
        )
        if agree is not None:
            stop = agree(stop)
        outcome.stopped_early = stop
        if on_epoch_end is not None:
            on_epoch_end(epoch, outcome, tracker)
        if stop:
            logger.info(
                "early stop after epoch %d: no better validation loss for %d epoch(s); best %s",
                epoch + 1,
                tracker.epochs_without_best,
                tracker.best_point,
            )
            break
    outcome.state = tracker.state_to_return()
    return outcome


class _BestTracker:
    """The best validation point so far and a copy of the weights that scored it."""

    def __init__(self, model: torch.nn.Module, keep: bool) -> None:
        self.model, self.keep = model, keep
        self.best_loss = float("inf")
        self.best_point: dict[str, Any] | None = None
        self.best_state: dict[str, torch.Tensor] | None = None
        self.epochs_without_best = 0
        self.improved = False  # in the epoch that just ended

    def offer(self, point: Mapping[str, Any]) -> None:
        loss = float(point["val_logloss"])
        if not np.isfinite(loss):
            return
        if self.best_point is None or loss < self.best_loss * (1 - IMPROVEMENT):
            self.best_loss = loss
            self.best_point = {
                "step": int(point["step"]),
                "epoch": int(point["epoch"]),
                "samples": int(point["samples"]),
                "val_logloss": loss,
            }
            if self.keep:
                self.best_state = {
                    k: v.detach().clone() for k, v in self.model.state_dict().items()
                }

    def end_epoch(self, improved: bool) -> None:
        self.improved = improved
        self.epochs_without_best = 0 if improved else self.epochs_without_best + 1

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """The weights to export now: the best seen (``keep``), else the current ones."""
        if self.keep and self.best_state is not None:
            return self.best_state
        return self.model.state_dict()

    def state_to_return(self) -> dict[str, np.ndarray]:
        return {k: v.detach().cpu().numpy().copy() for k, v in self.state_tensors().items()}


def shuffled_batches(
    data: Mapping[str, torch.Tensor], batch_size: int, seed: int
) -> Iterable[dict[str, torch.Tensor]]:
    """Batches of tensors already on their device, in a seeded random order (same seed, same
    order, on any device): every epoch of the bare loop and of a Ray worker that keeps its
    shard in memory, and each streamed chunk otherwise."""
    n = int(data["label"].shape[0])
    if n == 0:
        return
    device = data["label"].device
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).to(device)
    # One gather per epoch, then contiguous slices: the same batches as a gather per batch,
    # but a batch no longer reads rows scattered over the whole (cached) shard.
    shuffled = {k: v.index_select(0, order) for k, v in data.items()}
    for start in range(0, n, batch_size):
        yield {k: v[start : start + batch_size] for k, v in shuffled.items()}


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
    with reproducible(settings, dev):
        model = Ranker(spec)
        state_from_numpy(model, init_state)
        model.to(dev)
        opt = make_optimizer(model, settings)
        resident = _to_tensors(train, dev)
        valid_t = None if valid is None else _to_tensors(valid, dev)

        def batches(epoch: int) -> Iterable[dict[str, torch.Tensor]]:
            return shuffled_batches(resident, settings.batch_size, settings.seed + epoch)

        return run_epochs(model, opt, settings, batches, valid_t, model, dev)


@contextlib.contextmanager
def reproducible(settings: LoopSettings, device: torch.device) -> Iterator[None]:
    """Seed torch; on CPU with ``deterministic``, pin the thread count and use deterministic
    algorithms for the duration (restored after: the bare loop runs in the caller's process).

    The thread count matters: a matrix product split over 2 threads sums in another order
    than over 1, so the same fit with other thread counts differs in the last bits, and
    from there on in every step.
    """
    torch.manual_seed(settings.seed)
    if not (settings.deterministic and device.type == "cpu"):
        yield
        return
    threads = torch.get_num_threads()
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    if settings.threads > 0:
        torch.set_num_threads(settings.threads)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(was_deterministic)


def _to_tensors(arrays: Mapping[str, np.ndarray], device: torch.device) -> dict[str, torch.Tensor]:
    out = {}
    for k in COLUMNS:
        v = arrays.get(k)
        if v is None and k == "category":
            v = np.zeros(len(arrays["label"]), dtype=np.int64)
        out[k] = torch.from_numpy(np.ascontiguousarray(v)).to(device=device, dtype=DTYPES[k])
    return out


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
    model = Ranker(spec)
    state_from_numpy(model, init_state)
    model = ray.train.torch.prepare_model(model)  # to the device; DDP when world > 1
    eval_model = model.module if hasattr(model, "module") else model
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
        t0 = _sync_time(device)
        cached = _materialize(shard, device, chunk_rows, settings.prefetch_batches)
        load_seconds = _sync_time(device) - t0

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

    def report(epoch: int, outcome: FitOutcome, tracker: _BestTracker) -> None:
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


def _sync_time(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def _finite(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None
