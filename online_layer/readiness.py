"""May the current layer be served? The readiness check, and its verdict.

A layer is ready when it has learned ``readiness_min_examples`` and, over the last
``readiness_window`` progressively scored examples, its log loss is no worse than the
base's (within ``readiness_tolerance``, relative) and its AUC no worse than the base's
(within ``readiness_auc_tolerance``). Both matter: a layer can fix the base's calibration
(better log loss) while adding ranking noise (worse AUC). Until then serving runs the base
alone (``OnlineLearner.latest_snapshot`` returns None).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from online_layer.config import OnlineLayerConfig
    from online_layer.metrics import RollingWindow


@dataclass(frozen=True)
class Readiness:
    """Whether the current layer may be served, and why (or why not)."""

    ready: bool
    reason: str
    examples_learned: int
    rolling_examples: int
    rolling_logloss_hybrid: float | None
    rolling_logloss_base: float | None
    rolling_auc_hybrid: float | None = None
    rolling_auc_base: float | None = None


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def assess(cfg: OnlineLayerConfig, examples_learned: int, rolling: RollingWindow) -> Readiness:
    """The readiness of a layer that learned ``examples_learned`` examples and scored the
    ``rolling`` window progressively (see the module docstring)."""
    losses = rolling.log_losses()
    h, b = losses if losses is not None else (None, None)
    auc_h, auc_b = rolling.aucs()
    window = rolling.examples
    if examples_learned < cfg.readiness_min_examples:
        ready, reason = False, (
            f"learned {examples_learned} of {cfg.readiness_min_examples} examples"
        )
    elif h is None or b is None:
        ready, reason = False, "no progressive validation since the last rollback"
    elif h > b * (1.0 + cfg.readiness_tolerance):
        ready, reason = False, f"rolling log loss {h:.5f} > base {b:.5f} over {window} examples"
    elif auc_h is not None and auc_b is not None and auc_h < auc_b - cfg.readiness_auc_tolerance:
        ready, reason = False, f"rolling AUC {auc_h:.4f} < base {auc_b:.4f} over {window} examples"
    else:
        ready, reason = True, (
            f"rolling log loss {h:.5f} <= base {b:.5f} and AUC "
            f"{_fmt(auc_h)} vs base {_fmt(auc_b)} over {window} examples"
        )
    return Readiness(ready, reason, examples_learned, window, h, b, auc_h, auc_b)
