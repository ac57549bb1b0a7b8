"""Online lookups for ranking: 1 user + N candidate items -> arrays ready for the model.

Feast's ``get_online_features`` for 1 user + 100 items costs 10-20 ms on the SQLite store
(bench/RESULTS.md): it reads one row per feature per entity, decodes
each into a protobuf, then builds Python objects. :class:`OnlineFeatureReader` reads the
*same* SQLite tables that Feast materializes and pushes into, but only the packed feature of
each view (``<view>_vec``, one row per entity), and decodes the float lists straight into
NumPy. ``tests/feature_store/test_online.py`` proves its answer equal to Feast's.

Defaults for what the store has never seen (never an error): counts 0, CTRs the smoothed
prior (``FeatureStoreConfig.ctr_prior``), item age 0 hours, category ``""``; and
``user_found``/``items_found`` say which entities were known: an item is known when the
store has any of its features (a profile from the batch job, or pushed fresh counters).
"""

from __future__ import annotations

import logging
import sqlite3
import struct
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np

from feature_store.catalog import ITEM_FEATURES, USER_FEATURES
from feature_store.config import FeatureStoreConfig
from feature_store.errors import WorkspaceError
from feature_store.views import (
    AGE_FEATURE,
    CATEGORY_FEATURE,
    FIRST_SEEN_FEATURE,
    ITEM_PROFILE,
    USER_STATS,
    WINDOW_VIEWS,
    default_value,
)

__all__ = ["DEFAULT_CACHE_ITEMS", "OnlineFeatureReader", "RankFeatures", "entity_key_bytes"]

logger = logging.getLogger(__name__)

_STRING = 2  # feast ValueType.STRING
_MAX_ITEMS_PER_QUERY = 8000  # SQLite's host-parameter limit is 32766; 3 IN-lists per query
_MMAP_BYTES = 1 << 30  # address space only; the OS pages in what is read
_CACHE_KIB = 256 * 1024
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


def entity_key_bytes(join_key: str, value: str) -> bytes:
    """Feast's serialized entity key (version 3) for a single string join key.

    Equal to ``feast.infra.key_encoding_utils.serialize_entity_key`` (a test checks it),
    without building protobufs for every candidate.
    """
    k = join_key.encode("utf8")
    v = value.encode("utf8")
    return struct.pack("<III", 1, _STRING, len(k)) + k + struct.pack("<II", _STRING, len(v)) + v


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
    """Decoded item rows of one store generation (``PRAGMA data_version``), by item id.

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
    """Reads ranking features straight from the workspace's Feast SQLite online store.

    Thread-safe (one connection, one lock); cheap to keep for the life of a replica.

    Decoded rows are cached for as long as the store is unchanged: before each lookup the
    reader asks SQLite whether any other connection committed since the last one
    (``PRAGMA data_version``, a counter per connection, a few microseconds) and, if so, drops
    the whole cache. So a lookup answers exactly what the store holds at that moment: the
    fresh counters the learner pushes every ``serving.fresh_push_seconds`` and each
    materialization show at the next lookup, as without a cache (no staleness is added; the
    push period is the features' only delay). Only items not looked up since the last write
    cost SQLite reads. Item ages are computed per request from the cached first-seen time.

    Parameters
    ----------
    cfg
        The workspace; its store must have been applied (tables exist).
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
        clock: Callable[[], float] = time.time,
        cache_items: int = DEFAULT_CACHE_ITEMS,
    ) -> None:
        if cache_items < 0:
            raise ValueError(f"cache_items must be >= 0, got {cache_items}")
        self._cfg = cfg
        self._clock = clock
        self._lock = threading.Lock()
        path = cfg.online_store_path
        if not path.exists():
            raise WorkspaceError(f"no online store at {path}: run `freshrank features apply` first")
        self._conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
        # Reads hit the same pages again and again: map the file and keep a big page cache,
        # so a lookup costs B-tree searches in memory rather than a read() per page.
        self._conn.execute(f"PRAGMA mmap_size = {_MMAP_BYTES}")
        self._conn.execute(f"PRAGMA cache_size = -{_CACHE_KIB}")
        self._tables = {v.name: f"{cfg.project}_{v.name}" for v in WINDOW_VIEWS}
        self._tables[ITEM_PROFILE] = f"{cfg.project}_{ITEM_PROFILE}"
        present = {row[0] for row in self._conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        missing = sorted(set(self._tables.values()) - present)
        if missing:
            self._conn.close()
            raise WorkspaceError(f"online store {path} lacks table(s) {', '.join(missing)}: run apply")
        self._decoders = {v.name: _FloatListDecoder(len(v.features)) for v in WINDOW_VIEWS}
        self._item_views = [v for v in WINDOW_VIEWS if v.entity == "item"]
        # Where each item view's columns land in ITEM_FEATURES order.
        self._item_cols = {
            v.name: [(j, ITEM_FEATURES.index(f)) for j, f in enumerate(v.features) if f in ITEM_FEATURES]
            for v in self._item_views
        }
        self._user_cols = [(j, USER_FEATURES.index(f)) for j, f in enumerate(USER_STATS.features) if f in USER_FEATURES]
        self._age_col = ITEM_FEATURES.index(AGE_FEATURE) if AGE_FEATURE in ITEM_FEATURES else None
        self._user_default = np.array([default_value(f, cfg.ctr_prior) for f in USER_FEATURES], np.float32)
        self._item_default = np.array([default_value(f, cfg.ctr_prior) for f in ITEM_FEATURES], np.float32)
        self._cache = _ItemCache(len(ITEM_FEATURES), cache_items)
        self._users: dict[str, tuple[np.ndarray, bool]] = {}
        self._data_version: int | None = None

    def close(self) -> None:
        with self._lock:
            self._conn.close()

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
            self._validate_cache()
            user, user_found = self._user_locked(user_id)
            slots = self._slots_locked(ids)
            cache = self._cache
            items = cache.rows[slots]  # a copy: the cache's rows are never handed out
            found = cache.found[slots]
            seen = cache.first_seen[slots]
            known = cache.seen_known[slots]
            categories = tuple(map(cache.categories.__getitem__, slots.tolist()))
        if self._age_col is not None and known.any():
            items[known, self._age_col] = ((now_s - seen[known]) / 3600.0).astype(np.float32)
        return RankFeatures(
            user=user, items=items, user_found=user_found, items_found=found, item_categories=categories
        )

    # ------------------------------------------------------------------ the cache (lock held)

    def _validate_cache(self) -> None:
        """Drop every cached row when any other connection committed to the store since the
        last lookup (SQLite's ``PRAGMA data_version``: materialization, fresh-counter pushes).
        With ``cache_items=0`` the cache is emptied on every call: each lookup reads the store."""
        version = int(self._conn.execute("PRAGMA data_version").fetchone()[0])
        cache = self._cache
        if version != self._data_version or cache.max_items == 0 or len(cache.slots) > cache.max_items:
            if cache.slots:
                self._cache = _ItemCache(len(self._item_default), cache.max_items)
            self._users.clear()
            self._data_version = version

    def _user_locked(self, user_id: str) -> tuple[np.ndarray, bool]:
        hit = self._users.get(user_id)
        if hit is None:
            blob = self._conn.execute(
                f'SELECT value FROM "{self._tables[USER_STATS.name]}" WHERE entity_key = ? AND feature_name = ?',
                (entity_key_bytes("user_id", user_id), USER_STATS.vector),
            ).fetchone()
            user = self._user_default.copy()
            found = False
            if blob is not None:
                values, ok = self._decoders[USER_STATS.name].decode([blob[0]])
                if ok[0]:
                    found = True
                    for j, c in self._user_cols:
                        user[c] = values[0, j]
            hit = (user, found)
            if self._cache.max_items and len(self._users) < self._cache.max_items:
                self._users[user_id] = hit
        return hit[0].copy(), hit[1]

    def _slots_locked(self, ids: Sequence[str]) -> np.ndarray:
        """The cache slot of each requested item, reading the store for the ones missing."""
        slots = self._cache.slots
        try:
            return np.fromiter(map(slots.__getitem__, ids), dtype=np.int64, count=len(ids))
        except KeyError:
            pass
        missing = [i for i in dict.fromkeys(ids) if i not in slots]
        keys = [entity_key_bytes("item_id", i) for i in missing]
        rows: list[tuple[str, bytes, str, bytes]] = []
        for lo in range(0, len(keys), _MAX_ITEMS_PER_QUERY):
            rows += self._read_items(keys[lo : lo + _MAX_ITEMS_PER_QUERY])
        self._cache.add(missing, *self._decode_items(keys, rows))
        return np.fromiter(map(slots.__getitem__, ids), dtype=np.int64, count=len(ids))

    def _decode_items(
        self, keys: list[bytes], rows: list[tuple[str, bytes, str, bytes]]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[str]]:
        """Rows read for ``keys`` -> (features without the age, found, first seen, whether
        first seen is known, category), one per key."""
        pos = {k: i for i, k in enumerate(keys)}
        blobs: dict[str, list[bytes | None]] = {v.name: [None] * len(keys) for v in self._item_views}
        first_seen: list[bytes | None] = [None] * len(keys)
        category: list[bytes | None] = [None] * len(keys)
        for table, key, feature, blob in rows:
            i = pos[key]
            if table == ITEM_PROFILE:
                if feature == FIRST_SEEN_FEATURE:
                    first_seen[i] = blob
                else:
                    category[i] = blob
            else:
                blobs[table][i] = blob

        items_u = np.tile(self._item_default, (len(keys), 1))
        found_u = np.zeros(len(keys), dtype=bool)
        for view in self._item_views:
            values, ok = self._decoders[view.name].decode(blobs[view.name])
            found_u |= ok
            for j, c in self._item_cols[view.name]:
                items_u[ok, c] = values[ok, j]
        seen_u = np.zeros(len(keys))
        known_u = np.zeros(len(keys), dtype=bool)
        cats_u = [""] * len(keys)
        for i in range(len(keys)):
            seen = _decode_double(first_seen[i])
            if seen is not None:
                found_u[i] = True
                seen_u[i] = seen
                known_u[i] = True
            cat = _decode_string(category[i])
            if cat:
                cats_u[i] = cat
        return items_u, found_u, seen_u, known_u, cats_u

    def _read_items(self, keys: list[bytes]) -> list[tuple[str, bytes, str, bytes]]:
        if not keys:
            return []
        marks = ",".join("?" * len(keys))
        parts, params = [], []
        for view in self._item_views:
            parts.append(
                f"SELECT '{view.name}', entity_key, feature_name, value FROM \"{self._tables[view.name]}\" "
                f"WHERE feature_name = ? AND entity_key IN ({marks})"
            )
            params += [view.vector, *keys]
        parts.append(
            f"SELECT '{ITEM_PROFILE}', entity_key, feature_name, value FROM \"{self._tables[ITEM_PROFILE]}\" "
            f"WHERE feature_name IN (?, ?) AND entity_key IN ({marks})"
        )
        params += [FIRST_SEEN_FEATURE, CATEGORY_FEATURE, *keys]
        return self._conn.execute(" UNION ALL ".join(parts), params).fetchall()

    def _now_seconds(self, now: float | datetime | None) -> float:
        if now is None:
            return float(self._clock())
        if isinstance(now, datetime):
            if now.tzinfo is None:
                now = now.replace(tzinfo=timezone.utc)
            return now.timestamp()
        return float(now)
