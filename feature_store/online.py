"""Online lookups for ranking: 1 user + N candidate items -> arrays ready for the model.

Feast's ``get_online_features`` for 1 user + 100 items costs 10-20 ms on the SQLite store
(bench/RESULTS.md): it reads one row per feature per entity, decodes
each into a protobuf, then builds Python objects. :class:`OnlineFeatureReader` reads the
*same* rows that Feast materializes and pushes into, in Feast's own layout (SQLite tables or
Redis hashes: ``feature_store.online_storage``), but only the packed feature of each view
(``<view>_vec``, one per entity), and decodes the float lists straight into NumPy.
``tests/feature_store/test_online_lookup.py`` (SQLite) and ``tests/infra/test_feast_redis.py``
(a real redis-server) prove its answer equal to Feast's.

Defaults for what the store has never seen (never an error): counts 0, CTRs the smoothed
prior (``FeatureStoreConfig.ctr_prior``), item age 0 hours, category ``""``; and
``user_found``/``items_found`` say which entities were known: an item is known when the
store has any of its features (a profile from the batch job, or pushed fresh counters).
"""

from __future__ import annotations

import logging
import struct
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING

import numpy as np

from feature_store.catalog import ITEM_FEATURES, USER_FEATURES
from feature_store.config import FeatureStoreConfig
from feature_store.online_storage import ITEM_VIEWS, StoreRead, entity_key_bytes, open_rows
from feature_store.views import AGE_FEATURE, USER_STATS, WINDOW_VIEWS, default_value

if TYPE_CHECKING:
    from feast.repo_config import RepoConfig

__all__ = ["DEFAULT_CACHE_ITEMS", "OnlineFeatureReader", "RankFeatures", "entity_key_bytes"]

logger = logging.getLogger(__name__)

DEFAULT_CACHE_ITEMS = 200_000  # ~100 bytes an item


@dataclass(frozen=True)
class RankFeatures:
    """Features of one ranking request, in ``catalog`` order.

    Attributes
    ----------
    user : np.ndarray
        ``(len(USER_FEATURES),)`` float32.
    items : np.ndarray
        ``(N, len(ITEM_FEATURES))`` float32, one row per requested item, in request order.
    user_found : bool
        Whether the store knows the user (else ``user`` holds the defaults).
    items_found : np.ndarray
        ``(N,)`` bool: whether the store knows each item (else its row holds the defaults).
    item_categories : tuple[str, ...]
        Each item's category; ``""`` when unknown.
    """

    user: np.ndarray
    items: np.ndarray
    user_found: bool
    items_found: np.ndarray
    item_categories: tuple[str, ...]


class _FloatListDecoder:
    """Decodes serialized ``Value(float_list_val=[n floats])`` blobs without protobuf.

    A packed float list serializes as a fixed header (tags and lengths, the same for every
    blob of ``n`` floats) followed by ``4 * n`` little-endian bytes. Blobs that don't match
    (a null, a list of another length) are decoded with protobuf.
    """

    def __init__(self, n: int) -> None:
        from feast.protos.feast.types.Value_pb2 import FloatList, Value

        self.n = n
        full = Value(float_list_val=FloatList(val=[0.0] * n)).SerializeToString()
        self.header = full[: len(full) - 4 * n]
        self.size = len(full)

    def decode(self, blobs: Sequence[bytes | None]) -> tuple[np.ndarray, np.ndarray]:
        """``(values (B, n) float32, ok (B,) bool)``; rows with ok=False are zeros."""
        out = np.zeros((len(blobs), self.n), dtype=np.float32)
        ok = np.zeros(len(blobs), dtype=bool)
        fast_rows, fast_payload = [], []
        header, size, cut = self.header, self.size, len(self.header)
        for i, blob in enumerate(blobs):
            if blob is None:
                continue
            if len(blob) == size and blob[:cut] == header:
                fast_rows.append(i)
                fast_payload.append(blob[cut:])
            else:
                values = _slow_float_list(blob)
                if values is not None and len(values) == self.n:
                    out[i] = values
                    ok[i] = True
        if fast_rows:
            out[fast_rows] = np.frombuffer(b"".join(fast_payload), dtype="<f4").reshape(-1, self.n)
            ok[fast_rows] = True
        return out, ok


def _slow_float_list(blob: bytes) -> list[float] | None:
    from feast.protos.feast.types.Value_pb2 import Value

    value = Value.FromString(blob)
    if value.WhichOneof("val") != "float_list_val":
        return None
    return list(value.float_list_val.val)


def _decode_double(blob: bytes | None) -> float | None:
    if blob is None:
        return None
    if len(blob) == 9 and blob[0] == 0x29:  # field 5 (double_val), fixed64
        return float(struct.unpack("<d", blob[1:])[0])
    from feast.protos.feast.types.Value_pb2 import Value

    value = Value.FromString(blob)
    return value.double_val if value.WhichOneof("val") == "double_val" else None


def _decode_string(blob: bytes | None) -> str | None:
    if blob is None:
        return None
    if len(blob) >= 2 and blob[0] == 0x12 and blob[1] < 0x80 and len(blob) == 2 + blob[1]:
        return blob[2:].decode("utf8")  # field 2 (string_val), one-byte length
    from feast.protos.feast.types.Value_pb2 import Value

    value = Value.FromString(blob)
    return value.string_val if value.WhichOneof("val") == "string_val" else None


def _grown(array: np.ndarray, capacity: int) -> np.ndarray:
    out = np.zeros((capacity, *array.shape[1:]), dtype=array.dtype)
    out[: len(array)] = array
    return out


class _ItemCache:
    """Decoded item rows of one store generation (the store's change token), by item id.

    Rows live in growing arrays so a lookup is one fancy-index per array; the item age is
    not cached (it depends on the request time): the first-seen time is.
    """

    def __init__(self, width: int, max_items: int) -> None:
        self.max_items = max_items
        self.slots: dict[str, int] = {}
        self.rows = np.empty((0, width), dtype=np.float32)
        self.found = np.empty(0, dtype=bool)
        self.first_seen = np.empty(0, dtype=np.float64)
        self.seen_known = np.empty(0, dtype=bool)
        self.categories: list[str] = []

    def add(
        self,
        ids: list[str],
        rows: np.ndarray,
        found: np.ndarray,
        first_seen: np.ndarray,
        seen_known: np.ndarray,
        categories: list[str],
    ) -> None:
        start, end = len(self.categories), len(self.categories) + len(ids)
        if end > len(self.found):  # grow by doubling: amortised O(1) per item
            capacity = max(end, 2 * len(self.found), 1024)
            self.rows = _grown(self.rows, capacity)
            self.found = _grown(self.found, capacity)
            self.first_seen = _grown(self.first_seen, capacity)
            self.seen_known = _grown(self.seen_known, capacity)
        self.rows[start:end] = rows
        self.found[start:end] = found
        self.first_seen[start:end] = first_seen
        self.seen_known[start:end] = seen_known
        self.categories += categories
        self.slots.update(zip(ids, range(start, start + len(ids))))


class OnlineFeatureReader:
    """Reads ranking features straight from the workspace's Feast online store.

    The store is the one Feast's config names: by default the workspace's SQLite file
    (``freshrank features apply``); with ``feast_config`` naming ``online_store: {type:
    redis, connection_string: ...}`` (``infra/feature_store.yaml``), Feast's Redis hashes,
    one pipelined round trip per lookup (``feature_store.online_storage``). Same decoding,
    same defaults, same cache on both.

    Thread-safe (one connection, one lock); cheap to keep for the life of a replica.

    Decoded rows are cached for as long as the store is unchanged: every lookup reads the
    store's change token first (SQLite: ``PRAGMA data_version``, a few microseconds; Redis:
    the server's write, expiry and eviction counters, in the same round trip as the rows it
    still needs) and, when it moved, drops the whole cache and reads every entity of the
    request again. So a lookup answers exactly what the store holds at that moment: the
    fresh counters the learner pushes every ``serving.fresh_push_seconds`` and each
    materialization show at the next lookup, as without a cache (no staleness is added; the
    push period is the features' only delay). Only entities not looked up since the last
    write cost store reads. Item ages are computed per request from the cached first-seen
    time. A Redis store whose keys expire (Feast's ``key_ttl_seconds``) is never cached.

    Parameters
    ----------
    cfg
        The workspace; its store must have been applied (tables exist).
    feast_config
        Feast's ``RepoConfig`` naming the online store (e.g. ``FeatureStore(repo_path=
        ...).config``). Default: the one ``cfg`` names (``[feature_store] online_store``).
    clock
        Returns "now" as unix seconds, for item ages when ``get`` is not given ``now``.
    cache_items
        Most items (and users) kept decoded; past it the cache starts afresh. 0: no cache,
        every lookup reads the store.
    """

    def __init__(
        self,
        cfg: FeatureStoreConfig,
        *,
        feast_config: RepoConfig | None = None,
        clock: Callable[[], float] = time.time,
        cache_items: int = DEFAULT_CACHE_ITEMS,
    ) -> None:
        if cache_items < 0:
            raise ValueError(f"cache_items must be >= 0, got {cache_items}")
        self._cfg = cfg
        self._clock = clock
        self._lock = threading.Lock()
        if feast_config is None and cfg.online_store != "sqlite":
            from feature_store.repo import repo_config

            feast_config = repo_config(cfg, local=True)  # the store the settings name
        self._store = open_rows(cfg.project, cfg.online_store_path, feast_config)
        if cache_items and not self._store.cacheable:
            logger.info("the %s online store expires keys: every lookup reads it (no cache)", self._store.kind)
            cache_items = 0
        self._decoders = {v.name: _FloatListDecoder(len(v.features)) for v in WINDOW_VIEWS}
        # Where each item view's columns land in ITEM_FEATURES order.
        self._item_cols = {
            v.name: [(j, ITEM_FEATURES.index(f)) for j, f in enumerate(v.features) if f in ITEM_FEATURES]
            for v in ITEM_VIEWS
        }
        self._user_cols = [(j, USER_FEATURES.index(f)) for j, f in enumerate(USER_STATS.features) if f in USER_FEATURES]
        self._age_col = ITEM_FEATURES.index(AGE_FEATURE) if AGE_FEATURE in ITEM_FEATURES else None
        self._user_default = np.array([default_value(f, cfg.ctr_prior) for f in USER_FEATURES], np.float32)
        self._item_default = np.array([default_value(f, cfg.ctr_prior) for f in ITEM_FEATURES], np.float32)
        self._cache = _ItemCache(len(ITEM_FEATURES), cache_items)
        self._users: dict[str, tuple[np.ndarray, bool]] = {}
        self._version: Hashable = None

    @property
    def store_kind(self) -> str:
        """The online store read: ``"sqlite"`` or ``"redis"``."""
        return self._store.kind

    def close(self) -> None:
        with self._lock:
            self._store.close()

    def __enter__(self) -> OnlineFeatureReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def get(
        self,
        user_id: str,
        item_ids: Sequence[str],
        *,
        now: float | datetime | None = None,
    ) -> RankFeatures:
        """Features of one user and ``item_ids`` (duplicates allowed, order kept).

        Parameters
        ----------
        now
            Request time for item ages: unix seconds or an aware datetime. Default: the clock.
        """
        if not isinstance(user_id, str):
            raise TypeError(f"user_id must be a str, got {type(user_id).__name__}")
        ids = item_ids if isinstance(item_ids, (list, tuple)) else list(item_ids)
        if not all(isinstance(i, str) for i in ids):
            raise TypeError("item_ids must be strings")
        now_s = self._now_seconds(now)
        with self._lock:
            (user, user_found), slots = self._lookup_locked(user_id, ids)
            cache = self._cache
            items = cache.rows[slots]  # a copy: the cache's rows are never handed out
            found = cache.found[slots]
            seen = cache.first_seen[slots]
            known = cache.seen_known[slots]
            categories = tuple(map(cache.categories.__getitem__, slots.tolist()))
        if self._age_col is not None and known.any():
            items[known, self._age_col] = ((now_s - seen[known]) / 3600.0).astype(np.float32)
        return RankFeatures(
            user=user.copy(), items=items, user_found=user_found, items_found=found, item_categories=categories
        )

    # ------------------------------------------------------------------ the cache (lock held)

    def _lookup_locked(self, user_id: str, ids: Sequence[str]) -> tuple[tuple[np.ndarray, bool], np.ndarray]:
        """The user's row and each item's cache slot, reading the store for what the cache
        lacks; the cache is dropped first when the store's change token moved."""
        if self._cache.max_items == 0 or len(self._cache.slots) > self._cache.max_items:
            self._reset(None)
        user = self._users.get(user_id)
        slots = self._cache.slots
        distinct = list(dict.fromkeys(ids))
        missing = [i for i in distinct if i not in slots]
        read = self._read(None if user is not None else user_id, missing)
        if read.version != self._version:
            served_from_cache = user is not None or len(missing) < len(distinct)
            self._reset(read.version)
            user, missing = None, distinct
            if served_from_cache:  # rows of an older generation: read them all again
                read = self._read(user_id, missing)
                self._version = read.version
        if user is None:
            user = self._decode_user(read.user)
            if self._cache.max_items and len(self._users) < self._cache.max_items:
                self._users[user_id] = user
        if missing:
            self._cache.add(missing, *self._decode_items(read))
        slots = self._cache.slots
        return user, np.fromiter(map(slots.__getitem__, ids), dtype=np.int64, count=len(ids))

    def _reset(self, version: Hashable) -> None:
        if self._cache.slots:
            self._cache = _ItemCache(len(self._item_default), self._cache.max_items)
        self._users.clear()
        self._version = version

    def _read(self, user_id: str | None, items: list[str]) -> StoreRead:
        user_key = None if user_id is None else entity_key_bytes("user_id", user_id)
        return self._store.read(user_key, [entity_key_bytes("item_id", i) for i in items])

    def _decode_user(self, blob: bytes | None) -> tuple[np.ndarray, bool]:
        user = self._user_default.copy()
        if blob is None:
            return user, False
        values, ok = self._decoders[USER_STATS.name].decode([blob])
        if not ok[0]:
            return user, False
        for j, c in self._user_cols:
            user[c] = values[0, j]
        return user, True

    def _decode_items(self, read: StoreRead) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[str]]:
        """Rows read -> (features without the age, found, first seen, whether first seen is
        known, category), one per item key read."""
        n = len(read.first_seen)
        items_u = np.tile(self._item_default, (n, 1))
        found_u = np.zeros(n, dtype=bool)
        for view in ITEM_VIEWS:
            values, ok = self._decoders[view.name].decode(read.views[view.name])
            found_u |= ok
            for j, c in self._item_cols[view.name]:
                items_u[ok, c] = values[ok, j]
        seen_u = np.zeros(n)
        known_u = np.zeros(n, dtype=bool)
        cats_u = [""] * n
        for i in range(n):
            seen = _decode_double(read.first_seen[i])
            if seen is not None:
                found_u[i] = True
                seen_u[i] = seen
                known_u[i] = True
            cat = _decode_string(read.category[i])
            if cat:
                cats_u[i] = cat
        return items_u, found_u, seen_u, known_u, cats_u

    def _now_seconds(self, now: float | datetime | None) -> float:
        if now is None:
            return float(self._clock())
        if isinstance(now, datetime):
            if now.tzinfo is None:
                now = now.replace(tzinfo=timezone.utc)
            return now.timestamp()
        return float(now)
