"""freshrank's feature store: the event log, Feast features, training sets, online lookups.

Light on import (no Feast, DuckDB or NumPy here): import the module you need.

* ``events_io``    -- load/validate a user's events file; the hour-partitioned event log
* ``simulate``     -- the drifting news-feed simulator; ``importers`` -- public datasets
* ``compute``      -- the hourly, idempotent, strictly-before feature job
* ``declarations`` / ``definitions.py`` -- the Feast objects; ``repo`` -- apply, materialize
* ``training_set`` -- point-in-time correct training sets (DuckDB ASOF, equal to Feast's)
* ``online``       -- ``OnlineFeatureReader``: 1 user + N items -> arrays, in < 1 ms
* ``push``         -- ``FreshCounterPusher``: live 1 h item counters through a Feast PushSource
"""

from feature_store.config import FeatureStoreConfig
from feature_store.errors import EventsFormatError, FeatureStoreError, UnknownDatasetError, WorkspaceError

__all__ = [
    "EventsFormatError",
    "FeatureStoreConfig",
    "FeatureStoreError",
    "UnknownDatasetError",
    "WorkspaceError",
]
