"""freshrank's feature store: the event log, Feast features, training sets, online lookups.

Light on import (no Feast, DuckDB or NumPy here; typeguard, ~50 ms, is patched first): import the module you need.

* ``events_file``  -- load/validate/normalise a user's events file (Parquet or CSV)
* ``event_log``    -- the workspace's event log: Parquet partitioned by hour, append/read
* ``simulate``     -- the drifting news-feed simulator; ``importers`` -- public datasets
* ``compute``      -- the hourly, idempotent, strictly-before feature job (state, writes)
* ``windows``      -- its window maths: hourly aggregates, counters, smoothed CTRs
* ``sources``      -- the Parquet sources behind Feast's views: folders and schemas
* ``declarations`` / ``definitions.py`` -- the Feast objects; ``repo`` -- apply, materialize
* ``training_set`` -- point-in-time correct training sets (DuckDB ASOF, equal to Feast's)
* ``ray_engine``   -- the same training sets and materialization on Feast's Ray engine
* ``online``       -- ``OnlineFeatureReader``: 1 user + N items -> arrays, in < 1 ms
* ``online_storage`` -- its rows in Feast's layout: SQLite tables or Redis hashes
* ``push``         -- ``FreshCounterPusher``: live 1 h item counters through a Feast PushSource
* ``feast_import`` -- Feast imported without typeguard's instrumentation (9 s per process)
"""

from feature_store.feast_import import skip_feast_type_checks

# Before any module of this package imports Feast (feature_store.feast_import says why).
skip_feast_type_checks()

from feature_store.config import FeatureStoreConfig  # noqa: E402
from feature_store.errors import EngineError  # noqa: E402, EventsFormatError, FeatureStoreError, UnknownDatasetError, WorkspaceError

__all__ = [
    "EngineError",
    "EventsFormatError",
    "FeatureStoreConfig",
    "FeatureStoreError",
    "UnknownDatasetError",
    "WorkspaceError",
]
