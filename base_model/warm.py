"""Where a fit starts: warm from its parent's artifact, or cold (and why).

The new vocabulary keeps the parent's ids in the parent's rows and appends the new ids. A new
id's row starts as the parent's hashed row for that id: exactly what the parent scored it
with while it was unseen, so a warm start changes no score before training. Hashed rows, the
MLP, the category table and the dense standardisation are copied. If the shapes disagree
(another embedding width, MLP, feature list, transform, or bucket count) the start is cold,
and the reason is recorded. ``start_point`` makes that choice for one training and returns
everything the fit starts from (vocabularies, shapes, loop settings, weights).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from base_model.artifact import BaseScorer, read_weights
from base_model.config import BaseModelConfig
from base_model.data import Encoded, feature_names
from base_model.fit_types import LoopSettings
from protos.registry import ModelVersion
from base_model.vocab import Vocabulary, build_vocabulary, oov_bucket
from feature_store.catalog import ITEM_FEATURES, USER_FEATURES

if TYPE_CHECKING:  # model imports torch; warm starts are planned before torch is needed
    from base_model.model import ModelSpec

logger = logging.getLogger(__name__)

__all__ = [
    "StartPoint",
    "WarmStart",
    "describe",
    "incompatibility",
    "model_spec",
    "start_point",
    "warm_state",
]


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


# -- where a fit starts -------------------------------------------------------------------
@dataclass(frozen=True)
class StartPoint:
    """Where a fit starts: vocabularies, shapes, learning rate and epochs, and the weights
    (the parent's, grown for new ids, or fresh ones seeded by ``cfg.seed``)."""

    cfg: BaseModelConfig
    users: Vocabulary
    items: Vocabulary
    spec: ModelSpec
    settings: LoopSettings
    warm_info: dict[str, Any]
    parent: str | None
    parent_state: dict[str, np.ndarray] | None

    def init_state(self, train: Encoded) -> dict[str, np.ndarray]:
        """The parent's weights (warm), or fresh ones (cold): standardisation from the
        training window, output bias at the logit of its click rate."""
        if self.parent_state is not None:
            return self.parent_state
        from base_model.model import cold_state, dense_stats

        mean, std = dense_stats(train.dense, self.spec.dense_kinds)
        rate = float(train.label.mean()) if len(train) else 0.5
        return cold_state(self.spec, self.cfg.seed, mean, std, label_rate=rate)


def start_point(
    cfg: BaseModelConfig, parent: ModelVersion | None, train: pa.Table, feature_service: str
) -> StartPoint:
    """Warm from ``parent`` when its artifact fits ``cfg`` (else cold, with the reason):
    vocabularies over ``train`` that keep the parent's ids first, and the loop's settings
    (the warm learning rate, epochs and patience, or the cold ones)."""
    scorer = BaseScorer.load(parent.path) if parent is not None else None
    skipped = None
    if scorer is not None and parent is not None:
        skipped = incompatibility(scorer, model_spec(cfg, 0, 0), cfg.oov_buckets, feature_service)
        if skipped:
            logger.warning("cold start instead of warm from %s: %s", parent.version, skipped)
    warm = scorer is not None and skipped is None
    keep_u = scorer.users.ids.tolist() if warm and scorer is not None else []
    keep_i = scorer.items.ids.tolist() if warm and scorer is not None else []
    users = Vocabulary(
        build_vocabulary(train.column("user_id"), cfg.min_id_count, keep_u), cfg.oov_buckets
    )
    items = Vocabulary(
        build_vocabulary(train.column("item_id"), cfg.min_id_count, keep_i), cfg.oov_buckets
    )
    state: dict[str, np.ndarray] | None
    if warm and scorer is not None and parent is not None:
        grown = warm_state(scorer, read_weights(parent.path), users, items)
        lr, epochs, state = cfg.learning_rate * cfg.warm_lr_factor, cfg.warm_epochs, grown.state
        patience = cfg.warm_early_stopping_patience
        info = describe(parent.version, lr, epochs, grown, None, patience)
    else:
        lr, epochs, state = cfg.learning_rate, cfg.epochs, None
        patience = cfg.early_stopping_patience
        why = skipped or ("no parent" if parent is None else None)
        info = describe(parent.version if parent else None, lr, epochs, None, why, patience)
    settings = LoopSettings(
        learning_rate=lr,
        epochs=epochs,
        batch_size=cfg.batch_size,
        weight_decay=cfg.weight_decay,
        eval_every_steps=cfg.eval_every_steps,
        seed=cfg.seed,
        prefetch_batches=cfg.prefetch_batches,
        shuffle_buffer_rows=cfg.shuffle_buffer_rows,
        cache_max_rows=cfg.cache_max_rows,
        chunk_batches=cfg.chunk_batches,
        embedding_l2=cfg.embedding_l2,
        keep_best=cfg.keep_best,
        early_stopping_patience=patience,
        threads=max(1, int(cfg.cpus_per_worker)),
    )
    return StartPoint(
        cfg=cfg,
        users=users,
        items=items,
        spec=model_spec(cfg, users.rows, items.rows),
        settings=settings,
        warm_info=info,
        parent=parent.version if warm and parent is not None else None,
        parent_state=state,
    )


def model_spec(cfg: BaseModelConfig, user_rows: int, item_rows: int) -> ModelSpec:
    """The model's shapes for ``cfg`` and tables of ``user_rows`` x ``item_rows``."""
    from base_model.model import ModelSpec, dense_kinds

    return ModelSpec(
        user_rows=user_rows,
        item_rows=item_rows,
        n_user_features=len(USER_FEATURES),
        n_item_features=len(ITEM_FEATURES),
        embedding_dim=cfg.embedding_dim,
        hidden_layers=cfg.hidden_layers,
        dense_kinds=dense_kinds(feature_names()),
        category_buckets=cfg.category_buckets,
    )
