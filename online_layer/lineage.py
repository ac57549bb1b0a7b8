"""What a published snapshot says about itself: its version, header metadata and lineage.

Versions read ``ol-<base>-g<generation>-<sequence>``. The snapshot's header carries the
metadata serving checks before it loads the weights (``layout``, ``version``, ``ready``,
...); the lineage dict goes to the sink (the registry) beside the bytes: parent version,
what was learned, over which event-time days, readiness, progressive metrics,
hyper-parameters, layout and kernel version.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict
from typing import Any

import numpy as np

from online_layer._ftrl import kernel_version
from online_layer.layer import Layer
from online_layer.publishing import PublishedSnapshot
from online_layer.readiness import Readiness


def layer_version(base_version: str, generation: int, sequence: int) -> str:
    """
    >>> layer_version("base-1", 0, 7)
    'ol-base-1-g0-000007'
    """
    return f"ol-{base_version}-g{generation}-{sequence:06d}"


def _day(day: int | None) -> str | None:
    return None if day is None else str(np.datetime64(day, "D"))


def snapshot_of(
    layer: Layer,
    readiness: Readiness,
    params: Mapping[str, float],
    now: float,
    breaker: Mapping[str, Any] | None = None,
) -> PublishedSnapshot:
    """The layer's current weights as the next published snapshot (nothing is recorded:
    ``PublishState.record`` does that once it is published). ``breaker``: the circuit
    breaker's judgement at publish time (``state``, ``losing_since``), kept in the lineage
    so that a sink never promotes a snapshot published while the layer was losing."""
    sequence = layer.publishing.next_sequence()
    base_version = layer.base_version
    version = layer_version(base_version, layer.generation, sequence)
    latest = layer.publishing.latest
    layout = layer.featurizer.layout()
    metadata = {
        "version": version,
        "layout": layout,
        "generation": layer.generation,
        "sequence": sequence,
        "ready": readiness.ready,
        "implementation": layer.model.implementation,
        "kernel_version": kernel_version(),
    }
    blob = layer.model.snapshot(metadata)
    lineage: dict[str, Any] = {
        "tier": "online",
        "version": version,
        "base_version": base_version,
        "parent_version": latest.version if latest is not None else None,
        "generation": layer.generation,
        "sequence": sequence,
        "batches_learned": layer.batches,
        "examples_learned": layer.examples,
        "warm_start_examples": layer.warm_start,
        "data_window": {"first_day": _day(layer.first_day), "last_day": _day(layer.last_day)},
        "readiness": asdict(readiness),
        "progressive": asdict(layer.metrics.overall()),
        "params": dict(params),
        "layout": layer.featurizer.layout(),
        "kernel_version": kernel_version(),
        "published_at": now,
        "breaker": dict(breaker) if breaker is not None else None,
    }
    oldest, newest = layer.publishing.arrival_span()
    return PublishedSnapshot(
        version=version,
        base_version=base_version,
        blob=blob,
        published_at=now,
        ready=readiness.ready,
        lineage=lineage,
        feedback_oldest=oldest,
        feedback_newest=newest,
    )
