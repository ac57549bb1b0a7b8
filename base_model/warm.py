"""Warm start: a new version's initial weights from its parent's artifact.

The new vocabulary keeps the parent's ids in the parent's rows and appends the new ids. A new
id's row starts as the parent's hashed row for that id: exactly what the parent scored it
with while it was unseen, so a warm start changes no score before training. Hashed rows, the
MLP, the category table and the dense standardisation are copied. If the shapes disagree
(another embedding width, MLP, feature list, transform, or bucket count) the start is cold,
and the reason is recorded.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from base_model.artifact import BaseScorer
from base_model.vocab import Vocabulary, oov_bucket

if TYPE_CHECKING:  # model imports torch; warm starts are planned before torch is needed
    from base_model.model import ModelSpec

logger = logging.getLogger(__name__)

__all__ = ["WarmStart", "describe", "incompatibility", "warm_state"]


@dataclass(frozen=True)
class WarmStart:
    """The initial state and what the manifest says about it."""

    state: dict[str, np.ndarray]
    new_user_rows: int
    new_item_rows: int


def incompatibility(
    parent: BaseScorer, spec: ModelSpec, oov_buckets: int, feature_service: str
) -> str | None:
    """Why ``parent`` cannot seed a model of ``spec`` (None if it can)."""
    p = parent.manifest["spec"]
    if parent.feature_service != feature_service:
        return f"feature service {parent.feature_service} -> {feature_service}"
    if p["embedding_dim"] != spec.embedding_dim:
        return f"embedding_dim {p['embedding_dim']} -> {spec.embedding_dim}"
    if tuple(p["hidden_layers"]) != spec.hidden_layers:
        return f"hidden_layers {tuple(p['hidden_layers'])} -> {spec.hidden_layers}"
    if tuple(p["dense_kinds"]) != spec.dense_kinds:
        return "dense features changed"
    if int(p.get("category_buckets", 0)) != spec.category_buckets:
        return f"category_buckets {int(p.get('category_buckets', 0))} -> {spec.category_buckets}"
    if parent.manifest["oov_buckets"] != oov_buckets:
        return f"oov_buckets {parent.manifest['oov_buckets']} -> {oov_buckets}"
    return None


def warm_state(
    parent: BaseScorer,
    parent_weights: Mapping[str, np.ndarray],
    users: Vocabulary,
    items: Vocabulary,
) -> WarmStart:
    """Initial weights for ``users``/``items`` (vocabularies that start with the parent's ids)."""
    state = {k: np.array(v, copy=True) for k, v in parent_weights.items()}
    new_u = _grow(state, "user", parent.users, users)
    new_i = _grow(state, "item", parent.items, items)
    return WarmStart(state, new_u, new_i)


def _grow(state: dict[str, np.ndarray], side: str, old: Vocabulary, new: Vocabulary) -> int:
    n_old = len(old)
    if new.ids[:n_old].tolist() != old.ids.tolist():
        raise ValueError(f"the new {side} vocabulary must start with the parent's ids, in order")
    added = new.ids[n_old:].tolist()
    hashed = np.asarray([n_old + oov_bucket(i, old.oov_buckets) for i in added], dtype=np.int64)
    for table in (f"{side}_emb.weight", f"{side}_bias.weight"):
        w = state[table]
        known, buckets = w[:n_old], w[n_old:]
        fresh = w[hashed] if len(added) else np.zeros((0, w.shape[1]), w.dtype)
        state[table] = np.concatenate([known, fresh, buckets]).astype(np.float32)
    return len(added)


def describe(
    parent_version: str | None,
    lr: float,
    epochs: int,
    warm: WarmStart | None,
    skipped: str | None,
    patience: int | None = None,
) -> dict[str, Any]:
    """The manifest's ``warm_start`` entry (``patience``: the early-stopping patience used)."""
    if warm is None:
        return {
            "warm": False,
            "parent": parent_version,
            "skipped": skipped,
            "learning_rate": lr,
            "epochs": epochs,
            "early_stopping_patience": patience,
        }
    return {
        "warm": True,
        "parent": parent_version,
        "learning_rate": lr,
        "epochs": epochs,
        "early_stopping_patience": patience,
        "new_user_rows": warm.new_user_rows,
        "new_item_rows": warm.new_item_rows,
    }
