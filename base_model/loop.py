"""The training loop: epochs, validation points, best-state selection, and the bare loop.

``run_epochs`` is the loop both paths share: the bare PyTorch loop here (``bare_loop``) and
the Ray Train worker function (``base_model.ray_loop.ray_train_loop``). Both run the same
``Ranker`` with the same optimizer, loss and evaluation, so the benchmark's "Ray Train vs
bare loop" compares the pipelines and nothing else.

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
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from base_model.fit_types import FitOutcome, LoopSettings
from base_model.model import ModelSpec, Ranker, state_from_numpy

logger = logging.getLogger(__name__)

__all__ = [
    "BestTracker",
    "FitOutcome",
    "LoopSettings",
    "bare_loop",
    "evaluate",
    "make_optimizer",
    "reproducible",
    "run_epochs",
    "shuffled_batches",
    "sync_time",
    "train_step",
]

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
    tracker = BestTracker(eval_model, settings.keep_best)

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
        t0 = sync_time(device)
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
                epoch_seconds += sync_time(device) - t0
                validate(valid, epoch + 1, outcome.train_samples + epoch_samples)
                model.train()
                t0 = sync_time(device)
        epoch_seconds += sync_time(device) - t0
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


class BestTracker:
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


def sync_time(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()
