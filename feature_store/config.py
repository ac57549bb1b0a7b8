"""The feature store's one configuration object, and where everything lives in a workspace.

Every function of this package takes a :class:`FeatureStoreConfig` explicitly: there is no
module-level state, so tests, the demo and Ray workers can each point at their own workspace.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from protos.settings_io import from_section

#: Environment variable naming the workspace for the plain ``feast`` CLI
#: (``feature_store/feature_store.yaml`` and ``definitions.py`` read it).
WORKSPACE_ENV = "FRESHRANK_WORKSPACE"
#: Workspace used when nothing else is given: ``.freshrank/`` in the current directory.
DEFAULT_WORKSPACE = Path(".freshrank")

_PROJECT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_]*$")
#: The engines that build training sets and materialize (``FeatureStoreConfig.engine``).
ENGINES = ("duckdb", "ray")
ONLINE_STORES = ("sqlite", "redis")
#: The Redis password, if any: read from the environment only, never from a settings file.
REDIS_PASSWORD_ENV = "FRESHRANK_REDIS_PASSWORD"


@dataclass(frozen=True)
class FeatureStoreConfig:
    """Where the feature store keeps its state, and the constants every feature shares.

    Attributes
    ----------
    workspace : Path
        Root of the runtime state (made absolute on construction, so the Feast registry
        records absolute Parquet paths and the caller's cwd never matters).
    project : str
        Feast project name; also the prefix of the online store's SQLite tables.
    ctr_prior : float
        Prior mean of every smoothed CTR: ``ctr = (clicks + s * ctr_prior) / (imps + s)``.
        Also the documented default CTR of an unknown user or item.
    ctr_prior_strength : float
        ``s`` above, in pseudo-impressions: how many impressions it takes before an
        entity's own clicks outweigh the prior.
    engine : str
        ``"duckdb"`` (default): training sets by DuckDB ASOF joins in this process
        (``training_set.build_training_set``), materialization by Feast's local engine.
        ``"ray"``: both through Feast's own Ray offline store and Ray compute engine on the
        cluster at ``ray_address`` (``feature_store.ray_engine``; when to switch:
        ``feature_store/README.md``). ``apply`` and online reads are the same for both.
    ray_address : str
        For ``engine = "ray"``: the cluster's GCS address (``host:port``), as ``ray start
        --head`` prints it. Empty: ``$RAY_ADDRESS``, else a loopback cluster of this
        process's own (``protos.ray_local``). A process joins one cluster once: if it is
        already connected to another, the Ray engine refuses to run.
    online_store : str
        ``"sqlite"`` (default): the workspace's file. ``"redis"``: a Redis server at
        ``redis_address``, for materialization, fresh-counter pushes and the serving reader
        alike (the password, if any, from ``$FRESHRANK_REDIS_PASSWORD``, never a file).
    redis_address : str
        For ``online_store = "redis"``: ``host:port``.
    """

    workspace: Path = field(default_factory=lambda: DEFAULT_WORKSPACE)
    project: str = "freshrank"
    ctr_prior: float = 0.03
    ctr_prior_strength: float = 20.0
    engine: str = "duckdb"
    ray_address: str = ""
    online_store: str = "sqlite"
    redis_address: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.workspace, (str, os.PathLike)):
            raise TypeError(
                f"feature_store.workspace must be a path, got {type(self.workspace).__name__}"
            )
        object.__setattr__(self, "workspace", Path(self.workspace).expanduser().absolute())
        if not isinstance(self.project, str) or not _PROJECT_RE.match(self.project):
            raise ValueError(
                "feature_store.project must be letters, digits and underscores "
                f"(a Feast project and SQLite table prefix), got {self.project!r}"
            )
        if not (isinstance(self.ctr_prior, (int, float)) and 0.0 < self.ctr_prior < 1.0):
            raise ValueError(f"feature_store.ctr_prior must be in (0, 1), got {self.ctr_prior!r}")
        strength = self.ctr_prior_strength
        if not (isinstance(strength, (int, float)) and math.isfinite(strength) and strength > 0):
            raise ValueError(
                f"feature_store.ctr_prior_strength must be a finite number > 0, got {strength!r}"
            )
        if self.engine not in ENGINES:
            raise ValueError(f"feature_store.engine must be one of {', '.join(ENGINES)}, got {self.engine!r}")
        if self.online_store not in ONLINE_STORES:
            raise ValueError(f"feature_store.online_store must be one of {', '.join(ONLINE_STORES)}, "
                             f"got {self.online_store!r}")
        if not isinstance(self.redis_address, str) or (
            self.online_store == "redis" and not re.fullmatch(r"[^\s,:]+:\d{1,5}", self.redis_address)
        ):
            raise ValueError("feature_store.redis_address must be host:port for online_store = \"redis\", "
                             f"got {self.redis_address!r}")
        if not isinstance(self.ray_address, str):
            raise TypeError(
                f"feature_store.ray_address must be a string (host:port), got {type(self.ray_address).__name__}"
            )

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> FeatureStoreConfig:
        """Build from a mapping (the ``[feature_store]`` TOML section); unknown keys are errors."""
        return from_section(cls, values, "feature_store")

    @classmethod
    def from_env(cls, **overrides: Any) -> FeatureStoreConfig:
        """The workspace named by ``$FRESHRANK_WORKSPACE``, else ``.freshrank/`` in the cwd."""
        values: dict[str, Any] = {"workspace": Path(os.environ.get(WORKSPACE_ENV) or DEFAULT_WORKSPACE)}
        values.update(overrides)
        return cls(**values)

    # -- layout --------------------------------------------------------------------------
    @property
    def events_dir(self) -> Path:
        """The event log: Parquet partitioned by hour (``feature_store.event_log``)."""
        return self.workspace / "events"

    @property
    def features_dir(self) -> Path:
        """Offline feature tables: the Parquet files behind Feast's FileSources."""
        return self.workspace / "features"

    @property
    def feast_dir(self) -> Path:
        """Feast's repo path for this workspace: generated yaml, registry, online store."""
        return self.workspace / "feast"

    @property
    def registry_path(self) -> Path:
        return self.feast_dir / "registry.db"

    @property
    def online_store_path(self) -> Path:
        return self.feast_dir / "online_store.db"

    @property
    def feast_yaml_path(self) -> Path:
        return self.feast_dir / "feature_store.yaml"

    @property
    def ray_staging_dir(self) -> Path:
        """Where Feast's Ray offline store stages results (its ``storage_path``)."""
        return self.feast_dir / "ray_staging"

    def smoothed_ctr(self, clicks: Any, impressions: Any) -> Any:
        """The one CTR formula (float64 in, float64 out; callers cast to float32 once)."""
        s = float(self.ctr_prior_strength)
        return (clicks + s * float(self.ctr_prior)) / (impressions + s)
