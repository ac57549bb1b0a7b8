"""freshrank's online correction layer: ``logit = base_logit + w . x``, learned live.

A shallow FTRL-Proximal model (Cython kernel, NumPy reference) on top of the base ranker,
its featurizer, and the learner service that turns feedback into validated mini-batches
and versioned snapshots bound to one base version. See ``online_layer/README.md``.

Names are imported lazily, so ``import online_layer`` stays cheap (no pyarrow until the
learner is used, never torch, Feast or Ray).
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "BaseVersionMismatch",
    "BreakerConfig",
    "CircuitBreaker",
    "FTRLProximal",
    "FTRLReference",
    "FeedbackGuard",
    "FeedbackResult",
    "GuardConfig",
    "InputError",
    "LearnerReport",
    "OnlineFeaturizer",
    "OnlineInputs",
    "OnlineLayerConfig",
    "OnlineLayerError",
    "OnlineLearner",
    "OnlineModel",
    "PublishedSnapshot",
    "Readiness",
    "RejectReason",
    "ReplayBatch",
    "ServedRecord",
    "ServedRecordError",
    "ServingView",
    "SnapshotError",
    "clip_correction",
    "load_snapshot",
    "read_snapshot_header",
]

_WHERE = {
    "BreakerConfig": "breaker",
    "CircuitBreaker": "breaker",
    "FeedbackGuard": "defences",
    "GuardConfig": "defences",
    "clip_correction": "defences",
    "ServingView": "publishing",
    "BaseVersionMismatch": "errors",
    "InputError": "errors",
    "OnlineLayerError": "errors",
    "ServedRecordError": "errors",
    "SnapshotError": "errors",
    "OnlineLayerConfig": "config",
    "OnlineFeaturizer": "features",
    "OnlineInputs": "features",
    "FTRLProximal": "ftrl",
    "FTRLReference": "reference",
    "OnlineModel": "model",
    "load_snapshot": "factory",
    "read_snapshot_header": "snapshot",
    "RejectReason": "validation",
    "ServedRecord": "served",
    "FeedbackResult": "reports",
    "LearnerReport": "reports",
    "OnlineLearner": "learner",
    "PublishedSnapshot": "publishing",
    "Readiness": "readiness",
    "ReplayBatch": "warm_start",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'online_layer' has no attribute {name!r}")
    target = "read_header" if name == "read_snapshot_header" else name
    value = getattr(importlib.import_module(f"online_layer.{module}"), target)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
