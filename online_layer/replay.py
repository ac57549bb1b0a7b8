"""A ring buffer of recently learned examples, sampled into each new mini-batch.

Mixing a few older examples into every batch damps the layer's reaction to one burst of
feedback (it keeps seeing the recent past while it learns the present). The buffer holds
examples as learned (with their logged position), for the current base version only: the
learner clears it on a rebase, because old rows carry the old base's embeddings.
"""

from __future__ import annotations

import numpy as np

from online_layer.features import OnlineInputs


class ReplayBuffer:
    """Fixed-capacity ring of ``(inputs row, label)``; uniform sampling with a seeded RNG."""

    def __init__(self, capacity: int, n_dense: int, n_sparse: int, seed: int = 0) -> None:
        self.capacity = capacity
        self._base = np.zeros(capacity, dtype=np.float64)
        self._dense = np.zeros((capacity, n_dense), dtype=np.float64)
        self._sparse = np.zeros((capacity, n_sparse), dtype=np.int64)
        self._labels = np.zeros(capacity, dtype=np.float64)
        self._next = 0
        self._size = 0
        self._rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return self._size

    def add(self, inputs: OnlineInputs, labels: np.ndarray) -> None:
        """Append rows, overwriting the oldest once full."""
        n = len(inputs)
        if n >= self.capacity:
            inputs = inputs.take(slice(n - self.capacity, n))
            labels = labels[n - self.capacity:]
            n = self.capacity
        slots = (self._next + np.arange(n)) % self.capacity
        self._base[slots] = inputs.base_logit
        self._dense[slots] = inputs.dense
        self._sparse[slots] = inputs.sparse
        self._labels[slots] = labels
        self._next = int((self._next + n) % self.capacity)
        self._size = min(self._size + n, self.capacity)

    def sample(self, k: int) -> tuple[OnlineInputs, np.ndarray] | None:
        """``k`` rows drawn uniformly with replacement, or None when empty or ``k == 0``."""
        if self._size == 0 or k <= 0:
            return None
        rows = self._rng.integers(0, self._size, size=k)
        return (
            OnlineInputs(self._base[rows], self._dense[rows], self._sparse[rows]),
            self._labels[rows].copy(),
        )

    def clear(self) -> None:
        self._next = 0
        self._size = 0
