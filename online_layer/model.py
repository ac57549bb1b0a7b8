"""The contract every online correction model keeps, and the state they share.

``logit = base_logit + w . x``, learned by FTRL-Proximal (McMahan et al. 2013, "Ad Click
Prediction: a View from the Trenches", Algorithm 1). State per coordinate ``i``: ``z_i`` and
``n_i`` (sum of squared gradients); the weight is closed-form::

    w_i = 0                                                  if |z_i| <= l1
    w_i = -(z_i - sign(z_i) l1) / ((beta + sqrt(n_i)) / alpha + l2)   otherwise

``learn_many`` runs the per-example algorithm over the rows of a mini-batch, in order: for
each row, ``g = (sigmoid(logit) - y) x`` with the current weights, then for each coordinate
it touches::

    sigma_i = (sqrt(n_i + g_i^2) - sqrt(n_i)) / alpha
    z_i += g_i - sigma_i w_i ;  n_i += g_i^2

so a batch gives exactly the weights its rows give one by one: batching is transport, not
a modelling choice, and the learner may cut batches by size or by time freely. A hashed
index repeated within a row is one coordinate whose value is its count. The verbs are River's:
``learn_many`` updates in place, ``predict_many`` changes nothing. Subclasses (the Cython
``FTRLProximal`` and the NumPy ``FTRLReference``) implement ``_predict``/``_learn`` and
share validation, counters and the snapshot format, so a snapshot of one restores into the
other.

Beside ``z`` and ``n`` every model keeps ``prec``, the data precision of a diagonal Gaussian
posterior over the weights (``online_layer.posterior``; each example adds ``p (1 - p) x_i^2``),
with a prior precision ``prior_precision``; ``sample_logits`` draws Thompson samples from it.

This module is the contract only: it imports no implementation. Picking one by name
(``"cython"``, ``"numpy"``) and ``load_snapshot`` live in ``online_layer.factory``.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, ClassVar, TypeVar

import numpy as np

from online_layer import posterior
from online_layer import snapshot as snapshot_format
from online_layer.errors import InputError, SnapshotError
from online_layer.features import OnlineInputs

ModelT = TypeVar("ModelT", bound="OnlineModel")


@dataclass(frozen=True)
class FTRLParams:
    """FTRL-Proximal hyper-parameters (see ``OnlineLayerConfig`` for their meaning)."""

    alpha: float = 0.05
    beta: float = 1.0
    l1: float = 0.5
    l2: float = 1.0

    def __post_init__(self) -> None:
        for name, low_ok in (("alpha", False), ("beta", True), ("l1", True), ("l2", True)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise InputError(f"{name} must be a number, got {value!r}")
            if not math.isfinite(value) or value < 0 or (value == 0 and not low_ok):
                raise InputError(f"{name} must be finite and {'>=' if low_ok else '>'} 0, got {value!r}")
            object.__setattr__(self, name, float(value))


class OnlineModel(ABC):
    """A logistic correction on top of a base logit, bound to one base version.

    Parameters
    ----------
    n_dense : int
        Dense columns of every input.
    hash_bits : int
        Size of the hashed table (``2**hash_bits`` weights).
    base_version : str
        The base model these weights correct; snapshots carry it and restoring onto
        another base is refused.
    alpha, beta, l1, l2 : float
        FTRL-Proximal hyper-parameters.
    prior_precision : float
        Precision of the Gaussian prior on every weight (the variance of an untouched one
        is ``1 / prior_precision``).
    """

    implementation: ClassVar[str] = "abstract"

    def __init__(
        self,
        n_dense: int,
        hash_bits: int,
        base_version: str,
        *,
        alpha: float = 0.05,
        beta: float = 1.0,
        l1: float = 0.5,
        l2: float = 1.0,
        prior_precision: float = 1.0,
    ) -> None:
        if isinstance(prior_precision, bool) or not isinstance(prior_precision, (int, float)) or not (
            math.isfinite(prior_precision) and prior_precision > 0
        ):
            raise InputError(f"prior_precision must be finite and > 0, got {prior_precision!r}")
        if isinstance(n_dense, bool) or not isinstance(n_dense, int) or n_dense < 0:
            raise InputError(f"n_dense must be an integer >= 0, got {n_dense!r}")
        if isinstance(hash_bits, bool) or not isinstance(hash_bits, int) or not 4 <= hash_bits <= 30:
            raise InputError(f"hash_bits must be an integer in [4, 30], got {hash_bits!r}")
        if not isinstance(base_version, str) or not base_version:
            raise InputError(f"base_version must be a non-empty string, got {base_version!r}")
        self.n_dense = n_dense
        self.hash_bits = hash_bits
        self.base_version = base_version
        self.params = FTRLParams(alpha, beta, l1, l2)
        self.n_coords = n_dense + (1 << hash_bits)
        self.n_updates = 0
        self.n_examples = 0
        self._z = np.zeros(self.n_coords, dtype=np.float64)
        self._n = np.zeros(self.n_coords, dtype=np.float64)
        self._prec = np.zeros(self.n_coords, dtype=np.float64)
        self.prior_precision = float(prior_precision)
        self._state_changed()

    # -- what an implementation provides -------------------------------------------------

    @abstractmethod
    def _state_changed(self) -> None:
        """Rebuild anything derived from ``_z``, ``_n`` and ``params`` (after a restore)."""

    @abstractmethod
    def _predict(self, inputs: OnlineInputs) -> np.ndarray:
        """Logits of checked inputs."""

    @abstractmethod
    def _learn(self, inputs: OnlineInputs, labels: np.ndarray) -> None:
        """Learn checked inputs row by row; must raise before changing state on bad values."""

    @abstractmethod
    def weights(self) -> np.ndarray:
        """A copy of all weights, shape ``(n_dense + 2**hash_bits,)``."""

    # -- the shared contract --------------------------------------------------------------

    def predict_many(self, inputs: OnlineInputs) -> np.ndarray:
        """Logits ``base_logit + w . x`` of every row, shape ``(N,)``; changes nothing.

        Raises
        ------
        InputError
            Inputs of another width, or a hashed index outside the table.
        """
        self._check(inputs)
        if len(inputs) == 0:
            return np.zeros(0, dtype=np.float64)
        try:
            return self._predict(inputs)
        except InputError:
            raise
        except ValueError as exc:
            raise InputError(str(exc)) from exc

    def predict_proba_many(self, inputs: OnlineInputs) -> np.ndarray:
        """Click probabilities ``sigmoid(predict_many(inputs))``."""
        logits = self.predict_many(inputs)
        return 0.5 * (1.0 + np.tanh(0.5 * logits))

    def learn_many(self, inputs: OnlineInputs, labels: np.ndarray) -> None:
        """Learn a mini-batch in place, one FTRL-Proximal step per row (River's ``learn_many``).

        Raises
        ------
        InputError
            Wrong widths or lengths, a hashed index outside the table, non-finite inputs, or
            a label outside [0, 1]. The state is unchanged when it raises.
        """
        self._check(inputs)
        y = np.ascontiguousarray(labels, dtype=np.float64)
        if y.shape != (len(inputs),):
            raise InputError(f"labels must have shape ({len(inputs)},), got {y.shape}")
        if len(inputs) == 0:
            return
        try:
            self._learn(inputs, y)
        except InputError:
            raise
        except ValueError as exc:
            raise InputError(str(exc)) from exc
        self.n_updates += 1
        self.n_examples += len(inputs)

    def _check(self, inputs: OnlineInputs) -> None:
        if not isinstance(inputs, OnlineInputs):
            raise InputError(f"expected OnlineInputs, got {type(inputs).__name__}")
        if inputs.n_dense != self.n_dense:
            raise InputError(
                f"inputs have {inputs.n_dense} dense columns; this model has {self.n_dense}"
            )

    def state(self) -> tuple[np.ndarray, np.ndarray]:
        """Copies of the FTRL accumulators ``(z, n)``."""
        return self._z.copy(), self._n.copy()

    def posterior_precision(self) -> np.ndarray:
        """The posterior precision of every weight, ``prior_precision + prec`` (a copy)."""
        return self.prior_precision + self._prec

    def sample_logits(
        self,
        inputs: OnlineInputs,
        rng: np.random.Generator,
        n_samples: int = 1,
        scale: float = 1.0,
    ) -> np.ndarray:
        """Thompson samples of the rows' logits, shape ``(n_samples, N)``; changes nothing.

        Each sample draws the weights the rows touch from the posterior once (shared by
        the rows); ``scale`` multiplies its standard deviation (``online_layer.posterior``).
        """
        mean = self.predict_many(inputs)
        return posterior.sample_logits(mean, inputs, self._prec, self.prior_precision, rng, n_samples, scale)

    def sample_noise(
        self,
        inputs: OnlineInputs,
        rng: np.random.Generator,
        n_samples: int = 1,
        scale: float = 1.0,
        columns: tuple[int, ...] | None = None,
    ) -> np.ndarray:
        """The zero-mean part of ``sample_logits`` (for a caller that has the mean already);
        ``columns``: only these hashed slots' weights drawn (``posterior.sample_logits``)."""
        self._check(inputs)
        return posterior.sample_noise(inputs, self._prec, self.prior_precision, rng, n_samples, scale, columns)

    def sample_noise_parts(
        self,
        inputs: OnlineInputs,
        rng: np.random.Generator,
        n_samples: int,
        scale: float,
        columns: tuple[int, ...] | None,
        own: int,
    ) -> posterior.NoiseParts:
        """``sample_noise`` split at each row's weight in hashed slot ``own`` (the parts a
        Rao-Blackwellised propensity needs: ``posterior.sample_noise_parts``)."""
        self._check(inputs)
        return posterior.sample_noise_parts(inputs, self._prec, self.prior_precision, rng, n_samples, scale,
                                            columns, own)

    def logit_variance(self, inputs: OnlineInputs) -> np.ndarray:
        """The posterior variance of every row's logit, shape ``(N,)``."""
        self._check(inputs)
        return posterior.logit_variance(inputs, self.prior_precision + self._prec)

    def nnz(self) -> int:
        """Number of non-zero weights (L1 drives this down)."""
        return int(np.count_nonzero(self.weights()))

    def snapshot(self, metadata: Mapping[str, Any] | None = None) -> bytes:
        """The model as versioned bytes naming its base version (``online_layer.snapshot``).

        ``metadata`` (JSON-able) travels in the header, e.g. the featurizer layout.
        """
        return snapshot_format.encode(
            base_version=self.base_version,
            n_dense=self.n_dense,
            hash_bits=self.hash_bits,
            params=asdict(self.params),
            n_updates=self.n_updates,
            n_examples=self.n_examples,
            z=self._z,
            n=self._n,
            prec=self._prec,
            prior_precision=self.prior_precision,
            metadata=metadata,
        )

    def restore(
        self,
        blob: bytes,
        expected_base_version: str,
        expected_layout: Mapping[str, Any] | None = None,
    ) -> None:
        """Replace this model's state (and hyper-parameters) by a snapshot's.

        Raises
        ------
        BaseVersionMismatch
            The snapshot was trained against another base than ``expected_base_version``.
        SnapshotError
            Corrupt blob, other table dimensions, or (when given) another feature layout.
        """
        header, coords, z, n, prec = snapshot_format.decode(blob, expected_base_version)
        if (header.n_dense, header.hash_bits) != (self.n_dense, self.hash_bits):
            raise SnapshotError(
                f"snapshot has n_dense={header.n_dense}, hash_bits={header.hash_bits}; "
                f"this model has n_dense={self.n_dense}, hash_bits={self.hash_bits}"
            )
        if expected_layout is not None:
            layout = header.metadata.get("layout")
            if layout != dict(expected_layout):
                raise SnapshotError(
                    f"snapshot feature layout {layout!r} differs from the expected {dict(expected_layout)!r}"
                )
        params = FTRLParams(**header.params)
        self._z[:] = 0.0
        self._n[:] = 0.0
        self._z[coords] = z
        self._n[coords] = n
        self._prec[:] = 0.0
        self._prec[coords] = prec
        self.prior_precision = header.prior_precision
        self.params = params
        self.base_version = header.base_version
        self.n_updates = header.n_updates
        self.n_examples = header.n_examples
        self._state_changed()

    @classmethod
    def from_snapshot(
        cls: type[ModelT],
        blob: bytes,
        expected_base_version: str,
        expected_layout: Mapping[str, Any] | None = None,
    ) -> ModelT:
        """A new model holding a snapshot (see ``restore`` for what is refused)."""
        header = snapshot_format.read_header(blob)
        model = cls(
            header.n_dense,
            header.hash_bits,
            expected_base_version,
            prior_precision=header.prior_precision,
            **header.params,
        )
        model.restore(blob, expected_base_version, expected_layout)
        return model

    def clone(self: ModelT) -> ModelT:
        """A fresh model (zero weights) with the same shape, base version and parameters."""
        return type(self)(
            self.n_dense,
            self.hash_bits,
            self.base_version,
            prior_precision=self.prior_precision,
            **asdict(self.params),
        )

    def __repr__(self) -> str:
        p = self.params
        return (
            f"{type(self).__name__}(n_dense={self.n_dense}, hash_bits={self.hash_bits}, "
            f"base_version={self.base_version!r}, alpha={p.alpha}, beta={p.beta}, l1={p.l1}, "
            f"l2={p.l2}, updates={self.n_updates})"
        )

