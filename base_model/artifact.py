"""The base artifact the other tiers use: scorer weights, embedding tables, vocabularies, manifest.

Files of an artifact directory (and so of a registered base version)::

    manifest.json    what it is: format, feature service, feature order, transforms, shapes,
                     data window, warm start, metrics (and the best validation point that
                     was exported), validation curve, drift reference
    weights.npz      every parameter and buffer of ``model.Ranker``, float32, by state-dict name
    vocab.npz        ``user_ids`` and ``item_ids`` in row order (fixed-width unicode, no pickle)
    version.json     added by the registry: the version name

``BaseScorer`` is the serving path: NumPy only (no torch import, no per-call thread pools), a
dict lookup per id, one small MLP. It computes exactly ``model.Ranker.forward``.

Format ``freshrank.base/2`` added the item-category table (``cat_emb``, ``cat_bias``) and the
logit transform of click rates; ``/1`` artifacts still load and score (no category table:
every category reads as unknown, and their manifest's transforms are used as written).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from base_model.errors import ArtifactError
from base_model.vocab import Vocabulary, category_rows
from protos.metrics import sigmoid

logger = logging.getLogger(__name__)

__all__ = ["FORMAT", "BaseScorer", "BaseScores", "read_weights", "write_artifact"]

FORMAT = "freshrank.base/2"
READABLE_FORMATS = ("freshrank.base/1", FORMAT)
MANIFEST, WEIGHTS, VOCAB = "manifest.json", "weights.npz", "vocab.npz"
# Dense transform codes and constants, as in model.py (which imports torch).
LOG1P, RATE, LOGIT = 0, 1, 2
DENSE_CLIP, RATE_EPS = 8.0, 1e-4


@dataclass(frozen=True)
class BaseScores:
    """What the base tier gives serving and the online layer for N candidates."""

    logits: np.ndarray  # (N,) float32
    user_embeddings: np.ndarray  # (N, D) float32
    item_embeddings: np.ndarray  # (N, D) float32


def write_artifact(
    directory: str | os.PathLike[str],
    manifest: Mapping[str, Any],
    weights: Mapping[str, np.ndarray],
    user_ids: Sequence[str],
    item_ids: Sequence[str],
) -> Path:
    """Write an artifact directory (created if absent) that ``BaseScorer.load`` reads."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    arrays = {k: np.asarray(v, dtype=np.float32) for k, v in weights.items() if k != "dense_kind"}
    arrays["dense_kind"] = np.asarray(weights["dense_kind"], dtype=np.int64)
    np.savez(out / WEIGHTS, allow_pickle=False, **arrays)
    np.savez(
        out / VOCAB,
        user_ids=np.asarray(list(user_ids), dtype=str),
        item_ids=np.asarray(list(item_ids), dtype=str),
    )
    with open(out / MANIFEST, "w", encoding="utf-8") as f:
        json.dump({"format": FORMAT, **manifest}, f, indent=2, sort_keys=True, allow_nan=False)
        f.write("\n")
    return out


def read_weights(directory: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """The raw arrays of an artifact's ``weights.npz`` (a warm start's starting point)."""
    path = Path(directory) / WEIGHTS
    if not path.is_file():
        raise ArtifactError(f"{directory} is not a base artifact: {WEIGHTS} is missing")
    with np.load(path, allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


class BaseScorer:
    """Scores candidates with a base artifact; fast on CPU for N = 100..1000.

    Examples
    --------
    >>> scorer = BaseScorer.load(path)  # doctest: +SKIP
    >>> s = scorer.score(["u1"] * 3, ["a", "b", "zz"], user_feats, item_feats,
    ...                  item_categories=("sport", "", "news"))  # doctest: +SKIP
    >>> s.logits.shape, s.user_embeddings.shape  # doctest: +SKIP
    ((3,), (3, 32))
    """

    def __init__(
        self,
        manifest: Mapping[str, Any],
        weights: Mapping[str, np.ndarray],
        users: Vocabulary,
        items: Vocabulary,
        version: str,
    ) -> None:
        self.manifest = dict(manifest)
        self.version = version
        self.feature_service: str = manifest["feature_service"]
        self.user_features: tuple[str, ...] = tuple(manifest["user_features"])
        self.item_features: tuple[str, ...] = tuple(manifest["item_features"])
        self.embedding_dim: int = int(manifest["spec"]["embedding_dim"])
        self.category_buckets: int = int(manifest["spec"].get("category_buckets", 0))
        self.users, self.items = users, items
        self._user_emb = _f32(weights["user_emb.weight"])
        self._item_emb = _f32(weights["item_emb.weight"])
        self._user_bias = _f32(weights["user_bias.weight"]).reshape(-1)
        self._item_bias = _f32(weights["item_bias.weight"]).reshape(-1)
        d = self.embedding_dim
        self._cat_emb = _f32(weights.get("cat_emb.weight", np.zeros((1, d), np.float32)))
        self._cat_bias = _f32(weights.get("cat_bias.weight", np.zeros((1, 1), np.float32)))
        self._cat_bias = self._cat_bias.reshape(-1)
        self._kind = np.asarray(weights["dense_kind"], dtype=np.int64)
        self._rate = self._kind == RATE
        self._logit = self._kind == LOGIT
        self._log1p = self._kind == LOG1P
        # /1 artifacts read NaN as a raw 0 and did not clip; /2 read it as the mean and clip.
        self._legacy_dense = manifest.get("format") == "freshrank.base/1"
        self._mean = _f32(weights["dense_mean"])
        self._inv_std = (1.0 / _f32(weights["dense_std"])).astype(np.float32)
        layers = sorted(
            {
                int(k.split(".")[1])
                for k in weights
                if k.startswith("mlp.") and k.endswith(".weight")
            }
        )
        # Transposed once so every call is a plain (N, in) @ (in, out).
        self._mlp = [
            (_f32(weights[f"mlp.{i}.weight"]).T.copy(), _f32(weights[f"mlp.{i}.bias"]))
            for i in layers
        ]
        self._check_shapes()

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> BaseScorer:
        """Read an artifact (or registered version) directory."""
        root = Path(path)
        for name in (MANIFEST, WEIGHTS, VOCAB):
            if not (root / name).is_file():
                raise ArtifactError(f"{root} is not a base artifact: {name} is missing")
        with open(root / MANIFEST, encoding="utf-8") as f:
            manifest = json.load(f)
        if manifest.get("format") not in READABLE_FORMATS:
            raise ArtifactError(
                f"{root}: format {manifest.get('format')!r}, expected one of "
                f"{', '.join(repr(f) for f in READABLE_FORMATS)}"
            )
        weights = read_weights(root)
        with np.load(root / VOCAB, allow_pickle=False) as npz:
            users = Vocabulary(npz["user_ids"].tolist(), manifest["oov_buckets"])
            items = Vocabulary(npz["item_ids"].tolist(), manifest["oov_buckets"])
        version = manifest.get("version", "unregistered")
        if (root / "version.json").is_file():
            with open(root / "version.json", encoding="utf-8") as f:
                version = json.load(f)["version"]
        return cls(manifest, weights, users, items, version)

    def score(
        self,
        user_ids: Sequence[str] | str,
        item_ids: Sequence[str],
        user_features: np.ndarray,
        item_features: np.ndarray,
        item_categories: Sequence[str | None] | None = None,
    ) -> BaseScores:
        """Logits and embeddings of N (user, item) pairs.

        ``user_ids`` may be one string (one user, N items); ``user_features`` may be (Fu,)
        for one user. Unseen ids score through their hashed rows. Features are raw values in
        the manifest's order (NaN/inf read as missing: the training mean).
        ``item_categories``: N category names (``RankFeatures.item_categories``; ``""`` or
        None = unknown), or None for all unknown. ``item_embeddings`` are the item's row plus
        its category's row, the vector the model itself uses.
        """
        n = len(item_ids)
        if isinstance(user_ids, str):
            user_rows = np.full(n, self.users.lookup([user_ids])[0], dtype=np.int64)
        else:
            if len(user_ids) != n:
                raise ValueError(f"user_ids has {len(user_ids)} entries but item_ids has {n}")
            user_rows = self.users.lookup(user_ids)
        item_rows = self.items.lookup(item_ids)
        if item_categories is not None and len(item_categories) != n:
            raise ValueError(
                f"item_categories has {len(item_categories)} entries but item_ids has {n}"
            )
        cat_rows = category_rows(item_categories, n, self.category_buckets)
        uf = np.asarray(user_features, dtype=np.float32)
        if uf.ndim == 1:
            uf = np.broadcast_to(uf, (n, uf.shape[0]))
        itf = np.asarray(item_features, dtype=np.float32)
        fu, fi = len(self.user_features), len(self.item_features)
        if uf.shape != (n, fu):
            raise ValueError(f"user_features must have shape ({n}, {fu}), got {uf.shape}")
        if itf.shape != (n, fi):
            raise ValueError(f"item_features must have shape ({n}, {fi}), got {itf.shape}")
        dense = np.empty((n, fu + fi), dtype=np.float32)
        dense[:, :fu] = uf
        dense[:, fu:] = itf
        return self.score_rows(user_rows, item_rows, dense, cat_rows)

    def score_rows(
        self,
        user_rows: np.ndarray,
        item_rows: np.ndarray,
        dense: np.ndarray,
        category_rows: np.ndarray | None = None,
    ) -> BaseScores:
        """``score`` after the lookups: (N,) rows, (N,) rows, (N, F) raw features, (N,)
        category rows (None: all unknown)."""
        if category_rows is None or self._cat_emb.shape[0] == 1:
            category_rows = np.zeros(len(item_rows), dtype=np.int64)
        u = self._user_emb[user_rows]  # (N, D)
        i = self._item_emb[item_rows]  # (N, D)
        i += self._cat_emb[category_rows]
        ui = u * i
        x = self._standardise(dense)
        h = np.concatenate([u, i, ui, x], axis=1)  # (N, 3D + F)
        for k, (w, b) in enumerate(self._mlp):
            h = h @ w
            h += b
            if k < len(self._mlp) - 1:
                np.maximum(h, 0.0, out=h)
        logits = h[:, 0]
        logits += self._user_bias[user_rows]
        logits += self._item_bias[item_rows]
        logits += self._cat_bias[category_rows]
        logits += ui.sum(axis=1)
        return BaseScores(logits.astype(np.float32, copy=False), u, i)

    def _standardise(self, dense: np.ndarray) -> np.ndarray:
        """``model.Ranker.transform`` in NumPy: (N, F) raw -> (N, F) standardised."""
        if self._legacy_dense:
            x = np.nan_to_num(dense, nan=0.0, posinf=0.0, neginf=0.0)
            np.maximum(x, 0.0, out=x)
            rates = np.minimum(x[:, self._rate], 1.0)
            np.log1p(x, out=x)
            x[:, self._rate] = rates
            x -= self._mean
            x *= self._inv_std
            return x
        missing = ~np.isfinite(dense)
        raw = np.where(missing, np.float32(0.0), dense)
        x = np.empty_like(raw)
        x[:, self._log1p] = np.log1p(np.maximum(raw[:, self._log1p], 0.0))
        x[:, self._rate] = np.clip(raw[:, self._rate], 0.0, 1.0)
        p = np.clip(raw[:, self._logit], RATE_EPS, 1.0 - RATE_EPS)
        x[:, self._logit] = np.log(p) - np.log1p(-p)
        x -= self._mean
        x *= self._inv_std
        np.clip(x, -DENSE_CLIP, DENSE_CLIP, out=x)
        x[missing] = 0.0
        return x

    def predict_proba_rows(
        self,
        user_rows: np.ndarray,
        item_rows: np.ndarray,
        dense: np.ndarray,
        category_rows: np.ndarray | None = None,
        chunk: int = 65536,
    ) -> np.ndarray:
        """Click probabilities for many rows (evaluation, triggers), in chunks."""
        out = np.empty(len(user_rows), dtype=np.float64)
        for start in range(0, len(user_rows), chunk):
            s = slice(start, start + chunk)
            cats = None if category_rows is None else category_rows[s]
            logits = self.score_rows(user_rows[s], item_rows[s], dense[s], cats).logits
            out[s] = sigmoid(logits.astype(np.float64))
        return out

    def _check_shapes(self) -> None:
        d = self.embedding_dim
        checks = {
            "user_emb.weight": (self._user_emb.shape, (self.users.rows, d)),
            "item_emb.weight": (self._item_emb.shape, (self.items.rows, d)),
            "dense_mean": (self._mean.shape, (len(self.user_features) + len(self.item_features),)),
        }
        if self._cat_emb.shape[0] > 1:
            checks["cat_emb.weight"] = (self._cat_emb.shape, (self.category_buckets + 1, d))
        for name, (got, want) in checks.items():
            if got != want:
                raise ArtifactError(f"{name} has shape {got}, manifest and vocabulary say {want}")


def _f32(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32)
