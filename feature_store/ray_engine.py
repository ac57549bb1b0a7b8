"""Feast's own Ray engine: its settings, joining the cluster, and what Feast 0.67 gets wrong.

With ``FeatureStoreConfig(engine="ray", ray_address=...)`` the feature store runs Feast's Ray
offline store (training sets: ``training_set.build_training_set`` calls
``training_set.ray_training_set``) and Feast's Ray compute engine (``repo.materialize``) on a
Ray cluster, instead of DuckDB and Feast's local engine in this process. The answers are the
same (``tests/feature_store/test_ray_engine.py``); ``infra/feature_store.ray.yaml`` is the
same configuration for the plain ``feast`` CLI. Light on import: no Ray, no Feast here.

What the settings and ``ray_training_set`` work around, read in Feast 0.67.0
(``feast/infra/offline_stores/contrib/ray_offline_store/ray.py``, ``.../compute_engines/ray/
nodes.py``; line numbers of that file) and checked by the test and ``bench/feast_ray.py``:

* **The windowed join misses rows.** Above ``broadcast_join_threshold_mb`` (100 MB by
  default, ray.py:2521) the store uses ``windowed_temporal_join`` (ray.py:851): it shuffles
  entity and feature rows randomly into blocks (ray.py:548) and matches, block by block,
  only rows of the same key and the same ``floor(time, window_size_for_joins)`` hour
  (ray.py:928), not the latest row before the entity row. ``BROADCAST_MB`` keeps every view
  on the broadcast join, whose answer is right; each view must then fit in a worker.
* **The broadcast join is a per-row Python loop.** It sorts the view by (key, time)
  (ray.py:752) and calls ``pandas.merge_asof``, which needs the right side sorted by time
  alone and raises "right keys must be sorted" whenever a view has two entities; Feast then
  falls back to ``_manual_point_in_time_join`` (ray.py:832), which scans the whole view for
  every entity row (ray.py:596): time grows as entity rows x feature rows, in one task (the
  entity frame is one block, ray.py:2331). ``ray_training_set`` sends distinct (key, time)
  pairs only, which also keeps the loop short; at scale, see ``bench/RESULTS.md``.
* **Entity rows sharing (key, time) are merged** when ``merge_asof`` does succeed
  (``drop_duplicates(keep="last")``, ray.py:785), and a slate's rows share (user, time):
  another reason ``ray_training_set`` asks once per entity with distinct (key, time) pairs
  and joins the answers back onto every row.
* **No TTL in the offline join.** Harmless for freshrank's own sources: ``compute`` writes a
  row when each window empties, and its values (counts 0, CTR the prior) are the defaults a
  TTL miss gives. Not so for sources written by other tools.
* **Materialization order.** The engine de-duplicates per block (nodes.py:620) and upserts
  blocks in no set order, so an older row could win; ``pull_latest_features`` makes the
  store pick each entity's latest row first (a group-by over the cluster; one pandas call
  per entity, the bulk of its time: ``bench/RESULTS.md``).
* **Materialization skips rows older than the wall clock's ``now - ttl``**
  (``RayFilterNode``, nodes.py:289); the local engine writes them. The reader then returns
  the same values (the defaults), but ``user_found``/``items_found`` turn False for entities
  idle longer than the TTL. Replays of old logs (the demo, MovieLens) belong on ``duckdb``.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from typing import Any

from feature_store.config import FeatureStoreConfig
from feature_store.errors import EngineError

__all__ = ["BROADCAST_MB", "connect", "feast_scope", "feast_settings"]

logger = logging.getLogger(__name__)

#: Feature views up to this size are joined by broadcast (all of freshrank's, on purpose).
BROADCAST_MB = 16_384
#: Loggers whose levels Feast's Ray code sets to ERROR for the whole process.
_RAY_LOGGERS = (
    "ray", "ray.data", "ray.data.dataset", "ray.data.context", "ray.data._internal",
    "ray.data._internal.streaming_executor", "ray.data._internal.execution",
    "ray.tune", "ray.serve", "ray.util", "ray._private",
)


def feast_settings(cfg: FeatureStoreConfig) -> dict[str, Any]:
    """The ``offline_store``, ``batch_engine`` and ``materialization`` sections of Feast's
    config for ``engine = "ray"`` (``infra/feature_store.ray.yaml`` holds the same)."""
    address = cfg.ray_address or None
    return {
        "offline_store": {
            "type": "ray",
            "ray_address": address,
            "storage_path": str(cfg.ray_staging_dir),
            "broadcast_join_threshold_mb": BROADCAST_MB,
        },
        "batch_engine": {
            "type": "ray.engine",
            "ray_address": address,
            "write_concurrency": 1,  # SQLite: one writer; Redis takes more
        },
        "materialization": {"pull_latest_features": True},
    }


def _host_port(address: str) -> str:
    host, _, port = address.rpartition(":")
    host = "127.0.0.1" if host in ("localhost", "") else host
    return f"{host}:{port}"


def connect(cfg: FeatureStoreConfig) -> str:
    """Join the cluster the config names (else ``$RAY_ADDRESS``, else start a loopback one)
    before Feast touches Ray; returns the GCS address this process is connected to.

    Feast's Ray code calls ``ray.init`` itself unless Ray is already initialised, and then
    uses whatever cluster this process is on: a process can only be on one. So when it
    already is (a Ray job, a test session's cluster), the configured address must be that
    cluster's, else :class:`EngineError`.
    """
    import ray

    from protos.ray_local import init_local_ray

    wanted = cfg.ray_address or os.environ.get("RAY_ADDRESS", "")
    if ray.is_initialized():
        current = str(ray.get_runtime_context().gcs_address)
        if wanted and wanted != "auto" and "://" not in wanted and _host_port(wanted) != _host_port(current):
            raise EngineError(
                f"feature_store.ray_address is {wanted}, but this process is already connected to the "
                f"Ray cluster at {current} (one cluster per process): run the command in its own "
                "process, or set ray_address to that cluster"
            )
        return current
    init_local_ray(address=wanted or None)
    return str(ray.get_runtime_context().gcs_address)


@contextlib.contextmanager
def feast_scope() -> Iterator[None]:
    """Run Feast's Ray code without letting it change this process for everyone else.

    Feast sets Ray Data's current ``DataContext`` (shuffle strategy, block sizes,
    parallelism) and the Ray loggers' levels process-wide. Inside this block it changes a
    copy of the context; the logger levels are restored on the way out.
    """
    from ray.data import DataContext

    levels = {name: logging.getLogger(name).level for name in _RAY_LOGGERS}
    try:
        with DataContext.current(DataContext.get_current().copy()):
            yield
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
