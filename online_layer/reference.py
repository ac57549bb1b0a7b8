"""A pure NumPy FTRL-Proximal: the readable statement of the algorithm the kernel runs.

Per-coordinate FTRL-Proximal is sequential: each example's step uses the weights that the
previous example left, so it cannot be vectorised across the examples of a batch. This
reference loops over the rows of a mini-batch in Python and vectorises within a row (its
dense columns and its unique hashed coordinates). That is the algorithm at its clearest,
and it is why the production model is a compiled kernel. Tests feed this and the Cython
``FTRLProximal`` the same batches and require the same weights to 1e-9; the benchmark
measures what the kernel buys.
"""

from __future__ import annotations

import numpy as np

from online_layer.errors import InputError
from online_layer.features import OnlineInputs
from online_layer.model import OnlineModel


class FTRLReference(OnlineModel):
    """FTRL-Proximal logistic correction of a base logit, in NumPy (reference)."""

    implementation = "numpy"

    def _state_changed(self) -> None:
        pass

    def _weight(self, z: np.ndarray, n: np.ndarray) -> np.ndarray:
        p = self.params
        w = -(z - np.sign(z) * p.l1) / ((p.beta + np.sqrt(n)) / p.alpha + p.l2)
        return np.where(np.abs(z) <= p.l1, 0.0, w)

    def weights(self) -> np.ndarray:
        return self._weight(self._z, self._n)

    def _check_values(self, inputs: OnlineInputs) -> None:
        size = 1 << self.hash_bits
        if inputs.sparse.size and (inputs.sparse.min() < 0 or inputs.sparse.max() >= size):
            raise InputError(f"a hashed index is outside [0, {size})")

    def _predict(self, inputs: OnlineInputs) -> np.ndarray:
        self._check_values(inputs)
        nd = self.n_dense
        coords = inputs.sparse + nd  # (N, n_sparse)
        w_dense = self._weight(self._z[:nd], self._n[:nd])
        w_sparse = self._weight(self._z[coords], self._n[coords])
        return inputs.base_logit + inputs.dense @ w_dense + w_sparse.sum(axis=1)

    def _learn(self, inputs: OnlineInputs, labels: np.ndarray) -> None:
        self._check_values(inputs)
        if not (np.isfinite(inputs.base_logit).all() and np.isfinite(inputs.dense).all()):
            raise InputError("an input is not finite (NaN or inf in base_logit or dense)")
        if not ((labels >= 0.0) & (labels <= 1.0)).all():
            raise InputError("a label is NaN or outside [0, 1]")
        nd = self.n_dense
        dense_coords = np.arange(nd)
        for i in range(len(inputs)):
            # x: the dense row, then each distinct hashed coordinate with its count.
            hashed, counts = np.unique(inputs.sparse[i] + nd, return_counts=True)
            coords = np.concatenate([dense_coords, hashed])
            x = np.concatenate([inputs.dense[i], counts.astype(np.float64)])
            z, n = self._z[coords], self._n[coords]
            w = self._weight(z, n)
            logit = inputs.base_logit[i] + w @ x
            p = 0.5 * (1.0 + np.tanh(0.5 * logit))
            self._prec[coords] += p * (1.0 - p) * x * x
            g = (p - labels[i]) * x
            n_new = n + g * g
            sigma = (np.sqrt(n_new) - np.sqrt(n)) / self.params.alpha
            self._z[coords] = z + g - sigma * w
            self._n[coords] = n_new
