"""The production FTRL-Proximal model: state in NumPy, arithmetic in the Cython kernel.

The kernel (``online_layer._ftrl.FTRLKernel``) keeps pointers to ``z``, ``n``, ``sqrt(n)`` and a
cached weight vector, so ``predict_many`` is a plain dot product (no square root per
coordinate) and a learning step costs one square root and one division per coordinate it
touches. Both release the GIL for their loops: the learner actor keeps answering while it
learns, and a serving replica can score on another thread.
"""

from __future__ import annotations

from dataclasses import asdict

import numpy as np

from online_layer._ftrl import FTRLKernel
from online_layer.features import OnlineInputs
from online_layer.model import OnlineModel


class FTRLProximal(OnlineModel):
    """FTRL-Proximal logistic correction of a base logit, in Cython.

    Examples
    --------
    >>> import numpy as np
    >>> from online_layer.features import OnlineInputs
    >>> m = FTRLProximal(n_dense=2, hash_bits=8, base_version="b1")
    >>> x = OnlineInputs(np.array([0.5, -1.0]), np.ones((2, 2)), np.array([[3], [4]]))
    >>> m.predict_many(x).tolist()   # zero weights: exactly the base logit
    [0.5, -1.0]
    >>> m.learn_many(x, np.array([1.0, 1.0]))
    >>> bool((m.predict_many(x) > x.base_logit).all())
    True
    """

    implementation = "cython"

    def _state_changed(self) -> None:
        self._w = np.zeros(self.n_coords, dtype=np.float64)
        self._kernel = FTRLKernel(
            self._z, self._n, self._w, self._prec, self.n_dense, **asdict(self.params)
        )
        if self.n_updates or np.any(self._n):
            self._kernel.recompute_weights()

    def _predict(self, inputs: OnlineInputs) -> np.ndarray:
        out = np.empty(len(inputs), dtype=np.float64)
        self._kernel.predict(inputs.base_logit, inputs.dense, inputs.sparse, out)
        return out

    def _learn(self, inputs: OnlineInputs, labels: np.ndarray) -> None:
        self._kernel.learn(inputs.base_logit, inputs.dense, inputs.sparse, labels)

    def weights(self) -> np.ndarray:
        return self._w.copy()
