"""Thompson samples of the online correction from its diagonal Gaussian posterior.

The online layer's weights carry a Laplace posterior (Chapelle & Li 2011, Algorithm 3):
weight ``i`` is ``N(w_i, 1 / (prior + prec_i))`` with ``w_i`` the FTRL weight and ``prec_i``
the sum of ``p (1 - p) x_i^2`` over the examples that touched it (the kernel keeps it). A
coordinate no example touched keeps the prior's variance, so a new item's hashed row is
where the samples spread most: that spread is what Thompson sampling explores with.

One sample is one draw of the whole weight vector, shared by every row of the batch (the
rows of one request that hash to the same coordinate move together), so only the
coordinates the batch touches are drawn. ``scale`` multiplies the standard deviation
(Chapelle & Li's variance scaling; ``scale = 0`` is the posterior mean).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from online_layer._ftrl import add_gathered, distinct_sorted
from online_layer.errors import InputError
from online_layer.features import OnlineInputs


def _row_coordinates(inputs: OnlineInputs) -> tuple[np.ndarray, np.ndarray]:
    """Every row's coordinates and values, shape ``(N, n_dense + n_sparse)`` each."""
    n_rows, n_dense = inputs.dense.shape
    dense_coords = np.broadcast_to(np.arange(n_dense, dtype=np.int64), (n_rows, n_dense))
    coords = np.concatenate([dense_coords, inputs.sparse + n_dense], axis=1)
    values = np.concatenate([inputs.dense, np.ones(inputs.sparse.shape, dtype=np.float64)], axis=1)
    return coords, values


def logit_variance(inputs: OnlineInputs, precision: np.ndarray) -> np.ndarray:
    """The posterior variance of every row's logit, ``sum_i x_i^2 / precision_i``, shape ``(N,)``.

    A hashed index repeated in a row is one coordinate of value its count (as in learning).
    """
    coords, values = _row_coordinates(inputs)
    out = np.empty(len(inputs), dtype=np.float64)
    for i in range(len(inputs)):  # per row: repeated coordinates are summed before squaring
        uniq, inv = np.unique(coords[i], return_inverse=True)
        x = np.bincount(inv, weights=values[i], minlength=uniq.size)
        out[i] = float(np.sum(x * x / precision[uniq]))
    return out


def sample_noise(
    inputs: OnlineInputs,
    data_precision: np.ndarray,
    prior_precision: float,
    rng: np.random.Generator,
    n_samples: int = 1,
    scale: float = 1.0,
    columns: tuple[int, ...] | None = None,
) -> np.ndarray:
    """The zero-mean part of ``sample_logits``: ``(n_samples, N)`` draws of ``(w - mean) . x``."""
    return sample_logits(np.zeros(len(inputs)), inputs, data_precision, prior_precision, rng,
                         n_samples, scale, columns)


def sample_logits(
    mean_logits: np.ndarray,
    inputs: OnlineInputs,
    data_precision: np.ndarray,
    prior_precision: float,
    rng: np.random.Generator,
    n_samples: int = 1,
    scale: float = 1.0,
    columns: tuple[int, ...] | None = None,
) -> np.ndarray:
    """``n_samples`` Thompson samples of every row's logit, shape ``(n_samples, N)``.

    ``mean_logits`` are the rows' posterior-mean logits (``predict_many``); a coordinate's
    precision is ``prior_precision + data_precision[i]`` (read only where the batch touches).
    Dense columns: one draw each, projected by a small matrix product; hashed coordinates:
    one draw per distinct index of the batch, gathered per row (a repeated index counts
    once per occurrence, as its value is its count).

    ``columns``: None draws every weight; a tuple of hashed slot columns (``SLOTS``
    positions) draws only the weights those slots touch and holds the dense and other
    hashed weights at their mean (the sample's uncertainty aimed at, say, the item's own
    weight: the conditional posterior given the rest at its mean).

    Raises
    ------
    InputError
        ``n_samples`` below 1, a negative or non-finite ``scale``, or mismatched lengths.
    """
    mean = np.asarray(mean_logits, dtype=np.float64)
    _check(mean, inputs, n_samples, scale, columns)
    if len(inputs) == 0:
        return np.zeros((n_samples, 0), dtype=np.float64)
    return _draw(mean, inputs, data_precision, prior_precision, rng, n_samples, scale, columns)[0]


def _check(mean: np.ndarray, inputs: OnlineInputs, n_samples: int, scale: float,
           columns: tuple[int, ...] | None) -> None:
    if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 1:
        raise InputError(f"n_samples must be an integer >= 1, got {n_samples!r}")
    if not np.isfinite(scale) or scale < 0:
        raise InputError(f"scale must be finite and >= 0, got {scale!r}")
    if mean.shape != (len(inputs),):
        raise InputError(f"mean_logits must have shape ({len(inputs)},), got {mean.shape}")
    if columns is not None and not all(0 <= c < inputs.sparse.shape[1] for c in columns):
        raise InputError(f"columns must be hashed slot positions below {inputs.sparse.shape[1]}, got {columns!r}")


def _layout(inputs: OnlineInputs, columns: tuple[int, ...] | None) -> tuple[np.ndarray, np.ndarray]:
    """The batch's distinct drawn hashed indices (ascending) and each drawn cell's column
    among them, ``(rows, drawn slots)``: what every draw of the batch shares."""
    sparse = inputs.sparse if columns is None else np.ascontiguousarray(inputs.sparse[:, list(columns)])
    if not sparse.shape[1]:
        return np.zeros(0, dtype=np.int64), np.zeros(sparse.shape, dtype=np.int64)
    cells = sparse.ravel()
    uniq, inv = distinct_sorted(np.sort(cells), cells)  # = np.unique(..., return_inverse=True)
    return uniq, inv.reshape(sparse.shape)


def _draw(
    mean: np.ndarray,
    inputs: OnlineInputs,
    data_precision: np.ndarray,
    prior_precision: float,
    rng: np.random.Generator,
    n_samples: int,
    scale: float,
    columns: tuple[int, ...] | None,
    layout: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``sample_logits``'s draws (checked arguments, at least one row), with the hashed part's
    ingredients: the per-coordinate draws ``eps`` (samples x distinct, ``layout``'s order)
    and each distinct coordinate's sd."""
    n_dense = inputs.dense.shape[1]
    uniq, inv = _layout(inputs, columns) if layout is None else layout
    out = np.repeat(mean[None, :], n_samples, axis=0)
    if n_dense and columns is None:
        sd = scale / np.sqrt(prior_precision + data_precision[:n_dense])
        out += (rng.standard_normal((n_samples, n_dense)) * sd) @ inputs.dense.T
    if not inv.shape[1]:
        return out, np.zeros((n_samples, 0), dtype=np.float32), np.zeros(0)
    sd = scale / np.sqrt(prior_precision + data_precision[n_dense + uniq])
    # float32 draws: half the cost of the dominant step, far below the noise's own scale
    eps = rng.standard_normal((n_samples, uniq.size), dtype=np.float32) * sd.astype(np.float32)
    add_gathered(out, eps, inv)  # in the kernel, no (S, N, slots) temporary
    return out, eps, sd


class NoiseParts(NamedTuple):
    """``sample_noise_parts``: draws split at one hashed slot's weight (each row's "own" one).

    ``noise``: ``(S, N)``, as ``sample_noise``; ``own``: ``(S, N)``, the part of ``noise``
    that the row's own coordinate contributes (its draw times its count in the row);
    ``own_sd``: ``(N,)``, that part's standard deviation; ``alone``: ``(N,)``, True where no
    other row of the batch touches the row's own coordinate in a drawn slot (a hashed
    collision, or the same item twice, makes two rows share it: then their own terms are
    one draw, not independent ones).
    """

    noise: np.ndarray
    own: np.ndarray
    own_sd: np.ndarray
    alone: np.ndarray


def sample_noise_parts(
    inputs: OnlineInputs,
    data_precision: np.ndarray,
    prior_precision: float,
    rng: np.random.Generator,
    n_samples: int,
    scale: float,
    columns: tuple[int, ...] | None,
    own: int,
) -> NoiseParts:
    """``sample_noise`` (the same draws for the same ``rng``), split at hashed slot ``own``
    (a ``SLOTS`` position, drawn under ``columns``): what a Rao-Blackwellised estimate needs
    to integrate each row's own weight out given the rest of a draw.

    Raises
    ------
    InputError
        As ``sample_logits``; or ``own`` is not a drawn hashed slot.
    """
    drawn = tuple(range(inputs.sparse.shape[1])) if columns is None else tuple(columns)
    if own not in drawn:
        raise InputError(f"own must be a drawn hashed slot ({drawn}), got {own!r}")
    mean = np.zeros(len(inputs))
    _check(mean, inputs, n_samples, scale, columns)
    if len(inputs) == 0:
        empty = np.zeros((n_samples, 0))
        return NoiseParts(empty, empty, np.zeros(0), np.zeros(0, dtype=bool))
    layout = _layout(inputs, columns)
    noise, eps, sd = _draw(mean, inputs, data_precision, prior_precision, rng, n_samples, scale, columns, layout)
    inv = layout[1]
    mine = inv[:, drawn.index(own)]  # each row's own coordinate, among the distinct ones
    count = (inv == mine[:, None]).sum(axis=1)  # its value in the row (a repeated index counts)
    alone = np.bincount(inv.ravel(), minlength=eps.shape[1])[mine] == count
    return NoiseParts(noise, eps[:, mine] * count, count * sd[mine], alone)
