"""What a base version records about itself: its lineage (in the registry) and its manifest.

The lineage answers "where did this version come from": the data window, the feature
service, the parent it was warm-started from, the code that trained it, the metrics, and the
trigger that asked for it. The manifest (inside the artifact) adds what a scorer needs to
load it: features, shapes, vocabulary sizes, the config, and the drift reference histograms.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from base_model.config import BaseModelConfig
from base_model.data import Encoded, TimeWindows, feature_names
from base_model.drift import reference_histograms
from base_model.triggers import TriggerDecision, manual_trigger
from feature_store.catalog import ITEM_FEATURES, USER_FEATURES
from protos.code_version import code_version

if TYPE_CHECKING:
    from base_model.warm import StartPoint

__all__ = ["lineage_record", "manifest_record", "trigger_record"]


def trigger_record(
    trigger: TriggerDecision | Mapping[str, Any] | None, as_of: datetime
) -> dict[str, Any]:
    """The lineage's ``trigger``: the decision that asked for this training (default:
    ``manual`` at ``as_of``)."""
    if trigger is None:
        return manual_trigger(as_of).to_dict()
    if isinstance(trigger, TriggerDecision):
        return trigger.to_dict()
    return dict(trigger)


def lineage_record(
    *,
    windows: TimeWindows,
    feature_service: str,
    start: StartPoint,
    metrics: Mapping[str, Any],
    trigger: Mapping[str, Any],
    champion: str | None,
) -> dict[str, Any]:
    """The registry's lineage entry for one version."""
    return {
        "data_window": windows.to_dict(),
        "feature_service": feature_service,
        "parent": start.parent,
        "code_version": code_version(),
        "metrics": dict(metrics),
        "warm_start": start.warm_info,
        "trigger": dict(trigger),
        "champion_at_training": champion,
    }


def manifest_record(
    lineage: Mapping[str, Any],
    *,
    cfg: BaseModelConfig,
    start: StartPoint,
    train: Encoded,
    curve: Sequence[Mapping[str, float]],
) -> dict[str, Any]:
    """The artifact's manifest: the lineage plus what a scorer and the drift trigger read."""
    return {
        **lineage,
        "user_features": list(USER_FEATURES),
        "item_features": list(ITEM_FEATURES),
        "spec": start.spec.to_dict(),
        "oov_buckets": cfg.oov_buckets,
        "category_buckets": start.spec.category_buckets,
        "vocab_sizes": {"user": len(start.users), "item": len(start.items)},
        "train_rows": len(train),
        "curve": list(curve),
        "config": cfg.to_dict(),
        "reference": reference_histograms(train.dense, feature_names()),
    }
