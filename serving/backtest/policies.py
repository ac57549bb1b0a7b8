"""The four policies: what each retrains, when, and what it costs.

The schedule is pure arithmetic on times, so it is tested without any tier:

- ``static``: one base, trained on ``[first day, eval_start)``; never updated.
- ``base_only``: a base at ``eval_start`` (the same fit as ``static``: same data, same seed,
  from scratch) and then every ``base_every``, each warm-started from the previous one, as a
  user's weekly job would be.
- ``hybrid``: ``base_only``'s bases (shared artifacts, their compute counted for both) plus
  the online layer, re-bound to each new base and learning test-then-train.
- ``daily_retrain``: a base from scratch at ``eval_start`` (again the shared first fit) and
  then every ``daily_every``: the freshness ceiling a user would pay for.

A base fitted at time ``t`` is trained on events with ``ts < t`` only and scores events in
``[t, next fit)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

import numpy as np

from serving.backtest import POLICIES

__all__ = ["POLICIES", "retrain_times", "Fit", "PolicyRun"]


def retrain_times(eval_start: datetime, eval_end: datetime, every: timedelta) -> list[datetime]:
    """``eval_start + k * every`` for every k >= 0 that falls before ``eval_end``.

    Examples
    --------
    >>> from datetime import UTC
    >>> t0 = datetime(2024, 1, 3, tzinfo=UTC)
    >>> [t.day for t in retrain_times(t0, t0 + timedelta(days=5), timedelta(days=2))]
    [3, 5, 7]
    """
    if every <= timedelta(0):
        raise ValueError("retrain cadence must be positive")
    times, t = [], eval_start
    while t < eval_end:
        times.append(t)
        t += every
    return times


@dataclass(frozen=True)
class Fit:
    """One trained base: when, on what, at what cost.

    Attributes:
        cutoff: Training used events with ``ts < cutoff`` only.
        train_rows: Rows handed to the trainer.
        train_max_ts: Latest event time among those rows (recorded from the data itself, so a
            test can check that no fit saw the events it scores).
        seconds: Wall seconds of the whole ``train_base_model`` call: Ray Train start-up
            (~12-15 s per ``TorchTrainer.fit`` on the 2-core development machine, whatever
            the data), data gates, encoding, the timed steps, validation, evaluation gate,
            registry write. The figure this machine paid.
        fit_seconds: The fit's own training compute: the seconds of its timed training steps
            as the trainer reports them (``TrainResult.metrics["train_seconds"]``; start-up,
            data loading and validation passes excluded). Grows with the work (rows x epochs).
        samples: Training samples processed, ``rows x epochs actually run`` (early stopping
            included; ``TrainResult.metrics["train_samples"]``): the same work counted
            without a clock, so it is identical from run to run.
        epochs: Epochs actually run (``TrainResult.metrics["epochs_run"]``).
        artifact: Where the base artifact lies.
        version: The artifact's version.
        parent: Version it was warm-started from, or None (from scratch).
        status: The base tier's evaluation gate verdict (``approved``/``rejected``/
            ``registered``). ``base_only`` and ``hybrid`` obey it as production does: a
            rejected base is never served (the previous one keeps serving); the ceilings
            use every fit.
        best_epoch: The epoch of the exported best validation point (0: none, no
            validation).
    """

    cutoff: datetime
    train_rows: int
    train_max_ts: datetime | None
    seconds: float
    artifact: str
    version: str
    parent: str | None
    status: str = "approved"
    fit_seconds: float = 0.0
    samples: int = 0
    epochs: int = 0
    best_epoch: int = 0


@dataclass
class PolicyRun:
    """One policy's scores on the evaluation events and the compute it spent.

    ``probs[i]`` is the click probability the policy gave evaluation event ``i`` before
    learning from it; ``base_version[i]`` names the base that scored it.
    """

    name: str
    probs: np.ndarray
    fits: list[Fit] = field(default_factory=list)
    base_version: np.ndarray | None = None
    online_seconds: float = 0.0
    online_batches: int = 0
    online_examples: int = 0
    online_share: float | None = None  # share of events the online layer served (hybrid)

    @property
    def base_train_seconds(self) -> float:
        """Wall seconds of the base fits it depends on (Ray Train start-up included)."""
        return float(sum(f.seconds for f in self.fits))

    @property
    def train_seconds(self) -> float:
        """Wall compute: the base fits' wall seconds plus its online learning."""
        return self.base_train_seconds + self.online_seconds

    @property
    def base_fit_seconds(self) -> float:
        """The base fits' own training seconds (start-up, loading, validation excluded)."""
        return float(sum(f.fit_seconds for f in self.fits))

    @property
    def compute_seconds(self) -> float:
        """Training compute: the fits' own training seconds plus its online learning (the
        figure the target's compute clause is judged on; see ``report``)."""
        return self.base_fit_seconds + self.online_seconds

    @property
    def train_samples(self) -> int:
        """Base training samples processed (rows x epochs run) over its fits."""
        return int(sum(f.samples for f in self.fits))
