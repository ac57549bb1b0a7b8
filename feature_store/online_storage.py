"""Where :class:`~feature_store.online.OnlineFeatureReader` gets its rows: Feast's own
online layout, read directly, in SQLite tables or in Redis hashes.

One call per lookup, :meth:`OnlineRows.read`, returns the raw serialized ``Value`` blobs of
one user and N items (the packed ``<view>_vec`` feature of each window view, the item's
first-seen time and category) together with a **change token** read *before* the rows: the
reader keeps its decoded rows for as long as the token is unchanged.

* SQLite (``online_store.type: sqlite``): tables ``<project>_<view>``, one row per
  (entity key, feature). Token: ``PRAGMA data_version``, which changes whenever another
  connection commits (materialization, fresh-counter pushes).
* Redis (``online_store.type: redis``, ``redis_type: redis``): one hash per entity, keyed by
  the serialized entity key followed by the project name; field ``mmh3("<view>:<feature>")``
  holds the feature's blob, ``_ts:<view>`` the view's event time (not needed here: the SQLite
  path ignores event times too, and Feast's online read applies no TTL). One pipelined round
  trip carries the token and one ``HMGET`` per entity. Token: the server's write counter
  (``INFO persistence``: ``rdb_changes_since_last_save`` with ``rdb_last_save_time``) plus its
  expired and evicted key counts (``INFO stats``): any write, expiry or eviction changes it.
  (Two saves within the same second separated by exactly as many writes as were counted
  before would hide those writes from the token: not a case Feast's writers produce.) When
  Feast expires keys (``key_ttl_seconds``) the rows are not cacheable: Redis drops a key at
  its deadline, so every lookup reads Redis, as Feast's own read does. Redis Cluster and
  Sentinel are refused (one server's counters cannot stand for a cluster's).

Both take the entity key serialization version 3 (``entity_key_bytes``); another version
is refused rather than read wrong.
"""

from __future__ import annotations

import sqlite3
import struct
from collections.abc import Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from feature_store.errors import WorkspaceError
from feature_store.views import CATEGORY_FEATURE, FIRST_SEEN_FEATURE, ITEM_PROFILE, USER_STATS, WINDOW_VIEWS

if TYPE_CHECKING:
    from feast.repo_config import RepoConfig

__all__ = ["ITEM_VIEWS", "OnlineRows", "RedisRows", "SqliteRows", "StoreRead", "entity_key_bytes", "open_rows"]

_STRING = 2  # feast ValueType.STRING
_KEY_VERSION = 3  # the only entity key serialization version entity_key_bytes writes
_MAX_ITEMS_PER_QUERY = 8000  # SQLite's host-parameter limit is 32766; 3 IN-lists per query
_MMAP_BYTES = 1 << 30  # address space only; the OS pages in what is read
_CACHE_KIB = 256 * 1024
_REDIS_TIMEOUT_S = 2.0  # socket timeouts unless the connection string sets them

#: The item window views, in the order ``StoreRead.views`` and the reader use.
ITEM_VIEWS = tuple(v for v in WINDOW_VIEWS if v.entity == "item")


def entity_key_bytes(join_key: str, value: str) -> bytes:
    """Feast's serialized entity key (version 3) for a single string join key.

    Equal to ``feast.infra.key_encoding_utils.serialize_entity_key`` (a test checks it),
    without building protobufs for every candidate.
    """
    k = join_key.encode("utf8")
    v = value.encode("utf8")
    return struct.pack("<III", 1, _STRING, len(k)) + k + struct.pack("<II", _STRING, len(v)) + v


@dataclass(frozen=True)
class StoreRead:
    """What one :meth:`OnlineRows.read` found; ``None`` where the store has nothing.

    Attributes
    ----------
    version
        The store's change token, read before the rows.
    user
        The user's ``user_stats_vec`` blob (``None`` also when no user was asked for).
    views
        Item view name -> one ``<view>_vec`` blob per requested item key.
    first_seen, category
        One ``item_profile`` blob per requested item key.
    """

    version: Hashable
    user: bytes | None
    views: dict[str, list[bytes | None]]
    first_seen: list[bytes | None]
    category: list[bytes | None]


class OnlineRows(Protocol):
    """A Feast online store, read directly."""

    #: "sqlite" or "redis".
    kind: str
    #: False when the store expires rows itself: then nothing may be kept between lookups.
    cacheable: bool

    def read(self, user_key: bytes | None, item_keys: list[bytes]) -> StoreRead:
        """The token, then the rows of ``user_key`` (None: no user) and of distinct ``item_keys``."""
        ...

    def close(self) -> None: ...


def open_rows(project: str, sqlite_path: Path, feast_config: RepoConfig | None = None) -> OnlineRows:
    """The store ``feast_config`` names (default: the SQLite file ``sqlite_path``)."""
    if feast_config is None:
        return SqliteRows(sqlite_path, project)
    version = feast_config.entity_key_serialization_version
    if version != _KEY_VERSION:
        raise WorkspaceError(f"entity_key_serialization_version {version}: the online reader reads version 3 only")
    if getattr(feast_config.registry, "enable_online_feature_view_versioning", False):
        raise WorkspaceError("online feature view versioning is on: the online reader reads unversioned views only")
    online = feast_config.online_store
    if online.type == "sqlite":
        path = Path(online.path)
        if not path.is_absolute() and feast_config.repo_path:
            path = Path(feast_config.repo_path) / path
        return SqliteRows(path, feast_config.project)
    if online.type == "redis":
        return RedisRows(online, feast_config.project)
    raise WorkspaceError(f"online store type {online.type!r}: the online reader reads sqlite and redis")


class SqliteRows:
    """Feast's SQLite online tables, one read-only connection (callers serialize calls)."""

    kind = "sqlite"
    cacheable = True

    def __init__(self, path: Path, project: str) -> None:
        if not path.exists():
            raise WorkspaceError(f"no online store at {path}: run `freshrank features apply` first")
        self._conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
        # Reads hit the same pages again and again: map the file and keep a big page cache,
        # so a lookup costs B-tree searches in memory rather than a read() per page.
        self._conn.execute(f"PRAGMA mmap_size = {_MMAP_BYTES}")
        self._conn.execute(f"PRAGMA cache_size = -{_CACHE_KIB}")
        self._tables = {v.name: f"{project}_{v.name}" for v in WINDOW_VIEWS}
        self._tables[ITEM_PROFILE] = f"{project}_{ITEM_PROFILE}"
        present = {row[0] for row in self._conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        missing = sorted(set(self._tables.values()) - present)
        if missing:
            self._conn.close()
            raise WorkspaceError(f"online store {path} lacks table(s) {', '.join(missing)}: run apply")

    def close(self) -> None:
        self._conn.close()

    def read(self, user_key: bytes | None, item_keys: list[bytes]) -> StoreRead:
        version = int(self._conn.execute("PRAGMA data_version").fetchone()[0])
        user = None
        if user_key is not None:
            row = self._conn.execute(
                f'SELECT value FROM "{self._tables[USER_STATS.name]}" WHERE entity_key = ? AND feature_name = ?',
                (user_key, USER_STATS.vector),
            ).fetchone()
            user = None if row is None else row[0]
        pos = {k: i for i, k in enumerate(item_keys)}
        views: dict[str, list[bytes | None]] = {v.name: [None] * len(item_keys) for v in ITEM_VIEWS}
        first_seen: list[bytes | None] = [None] * len(item_keys)
        category: list[bytes | None] = [None] * len(item_keys)
        for lo in range(0, len(item_keys), _MAX_ITEMS_PER_QUERY):
            for table, key, feature, blob in self._read_items(item_keys[lo : lo + _MAX_ITEMS_PER_QUERY]):
                if table != ITEM_PROFILE:
                    views[table][pos[key]] = blob
                elif feature == FIRST_SEEN_FEATURE:
                    first_seen[pos[key]] = blob
                else:
                    category[pos[key]] = blob
        return StoreRead(version, user, views, first_seen, category)

    def _read_items(self, keys: list[bytes]) -> list[tuple[str, bytes, str, bytes]]:
        marks = ",".join("?" * len(keys))
        parts, params = [], []
        for view in ITEM_VIEWS:
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


class RedisRows:
    """Feast's Redis hashes on one server (``redis_type: redis``), through redis-py.

    Parameters
    ----------
    online
        Feast's ``RedisOnlineStoreConfig`` (``connection_string`` as Feast parses it:
        ``host:port[,db=0][,password=...][,ssl=true]``).
    project
        The Feast project: the suffix of every key.
    """

    kind = "redis"

    def __init__(self, online: Any, project: str) -> None:
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry
        from feast.infra.online_stores.helpers import _mmh3
        from feast.infra.online_stores.redis import RedisOnlineStore

        redis_type = str(getattr(online.redis_type, "value", online.redis_type))
        if redis_type != "redis":
            raise WorkspaceError(f"redis_type {redis_type!r}: the online reader reads a single Redis server only")
        nodes, params = RedisOnlineStore._parse_connection_string(online.connection_string)
        if not nodes:
            raise WorkspaceError("online_store.connection_string names no host:port")
        params.setdefault("socket_timeout", _REDIS_TIMEOUT_S)
        params.setdefault("socket_connect_timeout", _REDIS_TIMEOUT_S)
        params["decode_responses"] = False  # blobs are bytes
        # A lookup is on the request path: one immediate retry (a dropped idle connection is
        # reopened), not redis-py's default of three with backoff of up to seconds.
        params["retry"] = Retry(NoBackoff(), 1)
        self.address = f"{nodes[0]['host']}:{nodes[0]['port']}"  # never the password
        self.cacheable = not online.key_ttl_seconds
        self._client = redis.Redis(host=nodes[0]["host"], port=int(nodes[0]["port"]), **params)
        try:
            self._client.ping()
        except redis.RedisError as exc:
            self._client.close()
            raise WorkspaceError(f"online store redis at {self.address}: {type(exc).__name__}: {exc}") from exc
        self._suffix = project.encode("utf8")
        self._user_fields = [_mmh3(f"{USER_STATS.name}:{USER_STATS.vector}")]
        self._item_fields = [_mmh3(f"{v.name}:{v.vector}") for v in ITEM_VIEWS] + [
            _mmh3(f"{ITEM_PROFILE}:{FIRST_SEEN_FEATURE}"),
            _mmh3(f"{ITEM_PROFILE}:{CATEGORY_FEATURE}"),
        ]

    def close(self) -> None:
        self._client.close()

    def read(self, user_key: bytes | None, item_keys: list[bytes]) -> StoreRead:
        pipe = self._client.pipeline(transaction=False)
        pipe.info("persistence")
        pipe.info("stats")
        if user_key is not None:
            pipe.execute_command("HMGET", user_key + self._suffix, *self._user_fields)
        suffix, fields, queue = self._suffix, self._item_fields, pipe.execute_command
        for key in item_keys:
            queue("HMGET", key + suffix, *fields)
        replies = pipe.execute()  # one round trip
        persistence, stats = replies[0], replies[1]
        version = (
            persistence["rdb_last_save_time"],
            persistence["rdb_changes_since_last_save"],
            stats["expired_keys"],
            stats["evicted_keys"],
        )
        user = replies[2][0] if user_key is not None else None
        hashes = replies[2 if user_key is None else 3 :]
        n = len(ITEM_VIEWS)
        views = {v.name: [h[j] for h in hashes] for j, v in enumerate(ITEM_VIEWS)}
        return StoreRead(version, user, views, [h[n] for h in hashes], [h[n + 1] for h in hashes])
