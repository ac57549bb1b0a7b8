"""The one definition of every click metric freshrank reports or decides on.

Why here: the base tier's gates, the online tier's readiness, the demo and the backtest must
mean the same thing by "log loss" and "AUC", or their numbers cannot be compared. NumPy only
(no scikit-learn), so the definitions can be read in one screen.

Conventions, everywhere:

- The argument order is always ``(labels, scores)``: labels first, then probabilities (or
  logits for the ``*_from_logits`` functions, or any scores for ``auc``).
- Labels may be graded in [0, 1]. Log loss uses them as soft targets; AUC counts
  ``label >= 0.5`` as a positive.
- Probabilities are clipped to ``[eps, 1 - eps]`` (``EPS`` = 1e-7 by default): one
  confident miss costs about 16 nats instead of infinity.
- An undefined value is ``nan``, never ``None`` and never an exception: the mean of no
  events, AUC when one class is absent (or a score is NaN), the normalised entropy of a
  slice with a base rate of 0 or 1, the calibration ratio of a slice without positives.
  Callers that store JSON (the registry forbids NaN) turn it into ``None`` with
  ``nan_to_none``.
- Mismatched lengths raise ``protos.errors.InvalidInput`` (a ``ValueError``).

Examples
--------
>>> labels, probs = [1, 0, 1, 0], [0.8, 0.3, 0.6, 0.1]
>>> round(log_loss(labels, probs), 4)
0.299
>>> auc(labels, probs)
1.0
>>> round(normalized_entropy(labels, [0.5] * 4), 6)
1.0
>>> round(calibration_ratio(labels, probs), 6)
0.9
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike

from protos.errors import InvalidInput

__all__ = [
    "EPS",
    "as_arrays",
    "auc",
    "calibration_ratio",
    "log_loss",
    "log_loss_from_logits",
    "log_losses",
    "log_losses_from_logits",
    "nan_to_none",
    "normalized_entropy",
    "sigmoid",
]

EPS = 1e-7


def sigmoid(x: ArrayLike) -> np.ndarray:
    """The logistic function ``1 / (1 + exp(-x))``, computed as ``(1 + tanh(x / 2)) / 2``.

    The ``tanh`` form never overflows and keeps the input's floating dtype.

    Examples
    --------
    >>> sigmoid(np.array([0.0, 2.0, -2.0])).round(6)
    array([0.5     , 0.880797, 0.119203])
    >>> float(sigmoid(np.array([-1000.0]))[0]), float(sigmoid(np.array([1000.0]))[0])
    (0.0, 1.0)
    """
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(x)))


def as_arrays(labels: ArrayLike, scores: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """``labels`` and ``scores`` as flat float64 arrays of one length (else ``InvalidInput``).

    Examples
    --------
    >>> as_arrays([1, 0], [0.5, 0.25])
    (array([1., 0.]), array([0.5 , 0.25]))
    """
    y = np.asarray(labels, dtype=np.float64).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise InvalidInput(f"labels has {y.size} values but scores has {s.size}")
    return y, s


def log_losses(labels: ArrayLike, probs: ArrayLike, *, eps: float = EPS) -> np.ndarray:
    """Cross-entropy of each example, in nats, on probabilities clipped to ``[eps, 1 - eps]``.

    Examples
    --------
    >>> log_losses([1, 0], [0.5, 0.75]).round(6)
    array([0.693147, 1.386294])
    """
    y, p = as_arrays(labels, probs)
    p = np.clip(p, eps, 1.0 - eps)
    return -(y * np.log(p) + (1.0 - y) * np.log1p(-p))


def log_loss(labels: ArrayLike, probs: ArrayLike, *, eps: float = EPS) -> float:
    """Mean cross-entropy in nats (see ``log_losses``); ``nan`` for no examples.

    Examples
    --------
    >>> round(log_loss([1, 0], [0.5, 0.5]), 6) == round(math.log(2), 6)
    True
    >>> round(log_loss([1], [0.0]), 4)  # clipped to 1e-7, not infinite
    16.1181
    """
    losses = log_losses(labels, probs, eps=eps)
    return float(losses.mean()) if losses.size else math.nan


def log_losses_from_logits(labels: ArrayLike, logits: ArrayLike) -> np.ndarray:
    """Per-example log loss of ``sigmoid(logits)``, exact for any logit (no clipping).

    ``log(1 + exp(z)) - y * z``, computed with ``logaddexp`` so that it never overflows.

    Examples
    --------
    >>> log_losses_from_logits([1, 0], [0.0, 0.0]).round(6)
    array([0.693147, 0.693147])
    >>> float(log_losses_from_logits([0], [1000.0])[0])
    1000.0
    """
    y, z = as_arrays(labels, logits)
    return np.logaddexp(0.0, z) - y * z


def log_loss_from_logits(labels: ArrayLike, logits: ArrayLike) -> float:
    """Mean of ``log_losses_from_logits``; ``nan`` for no examples.

    Examples
    --------
    >>> round(log_loss_from_logits([1, 0], [2.0, -2.0]), 6)
    0.126928
    """
    losses = log_losses_from_logits(labels, logits)
    return float(losses.mean()) if losses.size else math.nan


def auc(labels: ArrayLike, scores: ArrayLike) -> float:
    """Area under the ROC curve: P(score of a positive > score of a negative), ties count 1/2.

    Exact, from average ranks (the Mann-Whitney U statistic), O(n log n). ``nan`` when the
    examples hold no positive or no negative, or a score is NaN.

    Examples
    --------
    >>> auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    0.75
    >>> auc([0, 1], [0.5, 0.5])
    0.5
    >>> auc([1, 1], [0.1, 0.2])
    nan
    """
    y, s = as_arrays(labels, scores)
    positive = y >= 0.5
    n_pos = int(positive.sum())
    n_neg = positive.size - n_pos
    if n_pos == 0 or n_neg == 0 or np.isnan(s).any():
        return math.nan
    order = np.argsort(s, kind="mergesort")
    sorted_scores = s[order]
    # Average rank (1-based) over each run of equal scores.
    boundaries = np.flatnonzero(np.diff(sorted_scores)) + 1
    starts = np.concatenate(([0], boundaries))
    ends = np.concatenate((boundaries, [s.size]))
    ranks = np.empty(s.size, dtype=np.float64)
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)
    u = ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def normalized_entropy(labels: ArrayLike, probs: ArrayLike, *, eps: float = EPS) -> float:
    """Log loss divided by the entropy of the base rate (He et al., 2014, "NE").

    1.0 is what always predicting the slice's own click rate scores; below 1 the model
    knows more than the base rate. ``nan`` for no examples or a base rate of 0 or 1.

    Examples
    --------
    >>> round(normalized_entropy([1, 0, 0, 0], [0.25] * 4), 6)
    1.0
    >>> normalized_entropy([1, 0, 0, 0], [0.9, 0.1, 0.1, 0.1]) < 1
    True
    """
    y, _ = as_arrays(labels, probs)
    if y.size == 0:
        return math.nan
    rate = float(y.mean())
    if rate <= 0.0 or rate >= 1.0:
        return math.nan
    p = min(max(rate, eps), 1.0 - eps)
    entropy = -(rate * math.log(p) + (1.0 - rate) * math.log1p(-p))
    return log_loss(labels, probs, eps=eps) / entropy


def calibration_ratio(labels: ArrayLike, probs: ArrayLike) -> float:
    """Predicted clicks over observed clicks, ``sum(probs) / sum(labels)``; 1.0 is calibrated.

    Above 1 the model over-predicts. ``nan`` when the labels sum to 0.

    Examples
    --------
    >>> calibration_ratio([1, 0, 0, 1], [0.5, 0.25, 0.25, 0.5])
    0.75
    >>> calibration_ratio([0, 0], [0.1, 0.2])
    nan
    """
    y, p = as_arrays(labels, probs)
    clicks = float(y.sum())
    return float(p.sum()) / clicks if clicks > 0 else math.nan


def nan_to_none(value: float) -> float | None:
    """``None`` for ``nan`` (for JSON, which has no NaN), else ``value`` as a float.

    Examples
    --------
    >>> nan_to_none(float("nan")) is None, nan_to_none(0.5)
    (True, 0.5)
    """
    return None if math.isnan(value) else float(value)
