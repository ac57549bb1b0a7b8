"""Feature drift: a reference histogram per feature at training time, PSI against recent data.

The reference (quantile bin edges of the training window and the share of rows in each bin)
goes into the manifest, so the trigger check needs only the champion's artifact and recent
rows, never the old training set.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["psi", "reference_histograms"]

BINS = 10
_FLOOR = 1e-4


def reference_histograms(
    dense: np.ndarray, names: Sequence[str], bins: int = BINS
) -> dict[str, Any]:
    """Per feature: inner quantile edges and the fraction of rows in each resulting bin."""
    out: dict[str, Any] = {}
    for j, name in enumerate(names):
        col = np.nan_to_num(dense[:, j].astype(np.float64), nan=0.0)
        if col.size == 0:
            out[name] = {"edges": [], "fractions": [1.0]}
            continue
        edges = np.unique(np.quantile(col, np.linspace(0, 1, bins + 1)[1:-1]))
        out[name] = {"edges": edges.tolist(), "fractions": _fractions(col, edges).tolist()}
    return out


def psi(reference: Mapping[str, Any], dense: np.ndarray, names: Sequence[str]) -> dict[str, float]:
    """Population stability index of each feature of ``dense`` against ``reference``."""
    out: dict[str, float] = {}
    for j, name in enumerate(names):
        ref = reference.get(name)
        if ref is None or dense.shape[0] == 0:
            continue
        edges = np.asarray(ref["edges"], dtype=np.float64)
        expected = np.maximum(np.asarray(ref["fractions"], dtype=np.float64), _FLOOR)
        actual = np.maximum(
            _fractions(np.nan_to_num(dense[:, j].astype(np.float64), nan=0.0), edges), _FLOOR
        )
        out[name] = float(np.sum((actual - expected) * np.log(actual / expected)))
    return out


def _fractions(col: np.ndarray, edges: np.ndarray) -> np.ndarray:
    counts = np.bincount(np.searchsorted(edges, col, side="right"), minlength=len(edges) + 1)
    return counts / max(col.size, 1)
