"""What the online layer sees: ``OnlineInputs`` and the featurizer that builds them.

The correction is ``logit = base_logit + w . x`` with ``x = [dense | hashed sparse]``:

dense (``embedding_dim + len(fresh_features)`` columns)
    ``sqrt(D) * (u / |u|) * (v / |v|)``: the elementwise product of the base's user and item
    embeddings, each L2-normalised, so the block has unit norm for random directions and
    sums to ``sqrt(D) * cos(u, v)`` whatever the base's embedding scale (weights mean the
    same thing across base versions and defaults need no tuning per base); then the fresh
    Feast counters: counts as ``log1p(count) / log1p(1000)``, rates (``*ctr*``) as
    ``sqrt(clip(rate, 0, 1))``; a missing (NaN) counter is 0.
sparse (one hashed index per slot, ``SLOTS`` order)
    a bias token, the item id, the item category, user x category, hour x category, and the
    position. Hashing is stable across processes (``online_layer.hashing``).

Position: feedback was shown at a position, and click rates fall with it. Learning uses the
logged position (``with_positions``); ranking uses one fixed "rank time" token for every
candidate (``positions=None``), so whatever the position weights are they shift every
candidate equally and never change the order.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeAlias

import numpy as np

from feature_store.catalog import FRESH_ITEM_FEATURES
from online_layer.errors import InputError
from online_layer.hashing import HASH_SCHEME, TokenCache, cross, to_index, token_hash

SLOTS: tuple[str, ...] = (
    "bias",
    "item",
    "category",
    "user_x_category",
    "hour_x_category",
    "position",
)
POSITION_SLOT = SLOTS.index("position")
TRANSFORM_VERSION = 1

# What ``OnlineFeaturizer.layout()`` returns (JSON-able; stored in every snapshot header).
FeatureLayout: TypeAlias = dict[str, int | str | list[str]]

_COUNT_SCALE = math.log1p(1000.0)


@dataclass(frozen=True, eq=False)
class OnlineInputs:
    """One batch of rows for the online model (arrays are coerced to the dtypes below).

    Attributes
    ----------
    base_logit : (N,) float64
        The base model's logit per row; with zero weights the model returns exactly this.
    dense : (N, n_dense) float64, C-contiguous
    sparse : (N, n_sparse) int64, C-contiguous
        Hashed indices into ``2**hash_bits``; column ``POSITION_SLOT`` is the position.
    """

    base_logit: np.ndarray
    dense: np.ndarray
    sparse: np.ndarray

    def __post_init__(self) -> None:
        base = np.ascontiguousarray(self.base_logit, dtype=np.float64)
        dense = np.ascontiguousarray(self.dense, dtype=np.float64)
        sparse = np.asarray(self.sparse)
        if sparse.dtype != np.int64:
            if not np.issubdtype(sparse.dtype, np.integer):
                raise InputError(f"OnlineInputs.sparse must hold integers, got {sparse.dtype}")
            sparse = sparse.astype(np.int64)
        sparse = np.ascontiguousarray(sparse)
        if base.ndim != 1:
            raise InputError(f"OnlineInputs.base_logit must be 1-D, got shape {base.shape}")
        n = base.shape[0]
        if dense.ndim != 2 or dense.shape[0] != n:
            raise InputError(f"OnlineInputs.dense must have shape ({n}, n_dense), got {dense.shape}")
        if sparse.ndim != 2 or sparse.shape[0] != n:
            raise InputError(
                f"OnlineInputs.sparse must have shape ({n}, n_sparse), got {sparse.shape}"
            )
        object.__setattr__(self, "base_logit", base)
        object.__setattr__(self, "dense", dense)
        object.__setattr__(self, "sparse", sparse)

    def __len__(self) -> int:
        return int(self.base_logit.shape[0])

    @property
    def n_dense(self) -> int:
        return int(self.dense.shape[1])

    @property
    def n_sparse(self) -> int:
        return int(self.sparse.shape[1])

    def take(self, rows: np.ndarray | Sequence[int] | slice) -> OnlineInputs:
        """The given rows (a copy for index arrays, a view for slices)."""
        return OnlineInputs(self.base_logit[rows], self.dense[rows], self.sparse[rows])

    def all_finite(self) -> bool:
        """True when no base logit or dense value is NaN or infinite."""
        return bool(np.isfinite(self.base_logit).all() and np.isfinite(self.dense).all())

    @staticmethod
    def concat(parts: Sequence[OnlineInputs]) -> OnlineInputs:
        """Rows of every part, in order (parts must agree on widths)."""
        if not parts:
            raise InputError("OnlineInputs.concat needs at least one part")
        if len(parts) == 1:
            return parts[0]
        return OnlineInputs(
            np.concatenate([p.base_logit for p in parts]),
            np.concatenate([p.dense for p in parts]),
            np.concatenate([p.sparse for p in parts]),
        )


class OnlineFeaturizer:
    """Builds ``OnlineInputs`` from base scores, embeddings, fresh counters and ids.

    Parameters
    ----------
    embedding_dim : int
        The base model's embedding size D.
    fresh_features : tuple of str
        Names of the fresh counters, in the column order of ``fresh``
        (default: ``feature_store.catalog.FRESH_ITEM_FEATURES``).
    hash_bits : int
        Hashed indices fall in ``[0, 2**hash_bits)``.
    position_buckets : int
        Positions ``>= position_buckets - 1`` share the last token.

    Examples
    --------
    >>> import numpy as np
    >>> f = OnlineFeaturizer(embedding_dim=4, hash_bits=10)
    >>> x = f.transform(np.zeros(2), np.ones((2, 4)), np.ones((2, 4)), np.zeros((2, 3)),
    ...                 "u1", ["i1", "i2"], ["news", "news"], hours=9)
    >>> x.dense.shape, x.sparse.shape
    ((2, 7), (2, 6))
    >>> bool((f.transform(np.zeros(1), np.ones((1, 4)), np.ones((1, 4)), np.zeros((1, 3)),
    ...                   "u1", ["i1"], ["news"], hours=9).sparse == x.sparse[:1]).all())
    True
    """

    def __init__(
        self,
        embedding_dim: int,
        fresh_features: Sequence[str] = FRESH_ITEM_FEATURES,
        hash_bits: int = 18,
        position_buckets: int = 32,
    ) -> None:
        if not (isinstance(embedding_dim, int) and embedding_dim >= 1):
            raise InputError(f"embedding_dim must be an integer >= 1, got {embedding_dim!r}")
        if not (isinstance(hash_bits, int) and 4 <= hash_bits <= 30):
            raise InputError(f"hash_bits must be an integer in [4, 30], got {hash_bits!r}")
        if not (isinstance(position_buckets, int) and position_buckets >= 2):
            raise InputError(f"position_buckets must be an integer >= 2, got {position_buckets!r}")
        self.embedding_dim = embedding_dim
        self.fresh_features = tuple(fresh_features)
        self.hash_bits = hash_bits
        self.position_buckets = position_buckets
        self.n_dense = embedding_dim + len(self.fresh_features)
        self.n_sparse = len(SLOTS)
        self.position_slot = POSITION_SLOT
        self._is_rate = np.array(["ctr" in name for name in self.fresh_features], dtype=bool)
        self._items = TokenCache("item")
        self._categories = TokenCache("category")
        self._users = TokenCache("user", max_size=100_000)
        self._bias_index = int(to_index(np.array([token_hash("bias", "bias")]), hash_bits)[0])
        hour_hashes = np.array([token_hash("hour", str(h)) for h in range(24)], dtype=np.uint64)
        self._hour_hashes = hour_hashes
        position_hashes = [token_hash("position", str(p)) for p in range(position_buckets)]
        position_hashes.append(token_hash("position", "rank"))
        self._position_index = to_index(np.array(position_hashes, dtype=np.uint64), hash_bits)
        self.rank_position_index = int(self._position_index[-1])

    def layout(self) -> FeatureLayout:
        """Everything that fixes what a weight means; stored in every snapshot."""
        return {
            "transform_version": TRANSFORM_VERSION,
            "embedding_dim": self.embedding_dim,
            "fresh_features": list(self.fresh_features),
            "slots": list(SLOTS),
            "hash_bits": self.hash_bits,
            "position_buckets": self.position_buckets,
            "hash_scheme": HASH_SCHEME,
        }

    def transform(
        self,
        base_logits: np.ndarray,
        user_embeddings: np.ndarray,
        item_embeddings: np.ndarray,
        fresh: np.ndarray,
        user_id: str | Sequence[str],
        item_ids: Sequence[str],
        item_categories: Sequence[str],
        hours: int | np.ndarray | Sequence[int],
        positions: np.ndarray | Sequence[int] | None = None,
    ) -> OnlineInputs:
        """Build the rows for ``N`` candidates of one request (or any N rows).

        Parameters
        ----------
        base_logits : (N,)
        user_embeddings : (N, D), or (D,) for one user repeated
        item_embeddings : (N, D)
        fresh : (N, F) raw fresh counters in ``fresh_features`` order; NaN = missing
        user_id : one id for every row, or (N,) ids
        item_ids, item_categories : (N,) strings ("" for an unknown category)
        hours : hour of day (0-23) of the request, one for all rows or (N,)
        positions : (N,) 0-based positions shown, or None at rank time

        Raises
        ------
        InputError
            Shapes that disagree, non-finite base logits or embeddings, hours out of range.
        """
        base = np.asarray(base_logits, dtype=np.float64).reshape(-1)
        n = base.shape[0]
        if len(item_ids) != n or len(item_categories) != n:
            raise InputError(
                f"item_ids ({len(item_ids)}) and item_categories ({len(item_categories)}) "
                f"must both have one entry per base logit ({n})"
            )
        d = self.embedding_dim
        user = np.asarray(user_embeddings, dtype=np.float64)
        if user.shape == (d,):
            user = user[None, :]
        item = np.asarray(item_embeddings, dtype=np.float64)
        if user.ndim != 2 or user.shape[1] != d or user.shape[0] not in (1, n):
            raise InputError(f"user_embeddings must have shape ({n}, {d}), got {user.shape}")
        if item.shape != (n, d):
            raise InputError(f"item_embeddings must have shape ({n}, {d}), got {item.shape}")
        fresh_arr = np.asarray(fresh, dtype=np.float64)
        n_fresh = len(self.fresh_features)
        if fresh_arr.shape != (n, n_fresh):
            raise InputError(
                f"fresh must have shape ({n}, {n_fresh}) for {self.fresh_features}, "
                f"got {fresh_arr.shape}"
            )
        if not (np.isfinite(base).all() and np.isfinite(user).all() and np.isfinite(item).all()):
            raise InputError("base_logits and embeddings must be finite (found NaN or inf)")

        dense = np.empty((n, self.n_dense), dtype=np.float64)
        u = user / np.maximum(np.linalg.norm(user, axis=1, keepdims=True), 1e-12)
        v = item / np.maximum(np.linalg.norm(item, axis=1, keepdims=True), 1e-12)
        np.multiply(u, v, out=dense[:, :d])
        dense[:, :d] *= math.sqrt(d)
        if n_fresh:
            dense[:, d:] = self._fresh_block(fresh_arr)

        category_h = self._categories.many(item_categories, n)
        user_h: np.ndarray
        if isinstance(user_id, str):
            user_h = np.array(self._users.one(user_id), dtype=np.uint64)
        else:
            if len(user_id) != n:
                raise InputError(f"user_id must be one id or {n} ids, got {len(user_id)}")
            user_h = self._users.many(user_id, n)
        hour_arr = np.asarray(hours)
        if not np.issubdtype(hour_arr.dtype, np.integer) or hour_arr.ndim > 1:
            raise InputError(f"hours must be integers, got {hour_arr.dtype} {hour_arr.shape}")
        if hour_arr.size and (hour_arr.min() < 0 or hour_arr.max() > 23):
            raise InputError("hours must be in [0, 23]")
        bits = self.hash_bits
        sparse = np.empty((n, self.n_sparse), dtype=np.int64)
        sparse[:, 0] = self._bias_index
        sparse[:, 1] = to_index(self._items.many(item_ids, n), bits)
        sparse[:, 2] = to_index(category_h, bits)
        sparse[:, 3] = to_index(cross(user_h, category_h), bits)
        sparse[:, 4] = to_index(cross(self._hour_hashes[hour_arr], category_h), bits)
        sparse[:, POSITION_SLOT] = self.position_indices(positions, n)
        return OnlineInputs(base, dense, sparse)

    def _fresh_block(self, fresh: np.ndarray) -> np.ndarray:
        """Counts -> log1p(count)/log1p(1000); rates -> sqrt(clip(rate, 0, 1)); NaN -> 0."""
        out = np.where(
            self._is_rate,
            np.sqrt(np.clip(fresh, 0.0, 1.0)),
            np.log1p(np.maximum(fresh, 0.0)) / _COUNT_SCALE,
        )
        out[~np.isfinite(out)] = 0.0
        return out

    def position_indices(
        self, positions: np.ndarray | Sequence[int] | None, n: int
    ) -> np.ndarray:
        """Hashed position tokens: the rank-time token for None or a negative position."""
        if positions is None:
            return np.full(n, self.rank_position_index, dtype=np.int64)
        pos = np.asarray(positions)
        if pos.shape != (n,) or not np.issubdtype(pos.dtype, np.integer):
            raise InputError(f"positions must be {n} integers, got {pos.dtype} {pos.shape}")
        bucket = np.minimum(pos, self.position_buckets - 1)
        bucket = np.where(pos < 0, self.position_buckets, bucket)
        return self._position_index[bucket]

    def with_positions(
        self, inputs: OnlineInputs, positions: np.ndarray | Sequence[int] | None
    ) -> OnlineInputs:
        """The same rows with the position slot set to ``positions`` (None: rank time).

        Used to learn from logged feedback: rows are served with the rank-time token and
        learned with the position they were shown at (negative = unknown = rank token).
        """
        sparse = inputs.sparse.copy()
        sparse[:, POSITION_SLOT] = self.position_indices(positions, len(inputs))
        return OnlineInputs(inputs.base_logit, inputs.dense, sparse)
