"""Feast declarations read by the plain ``feast`` CLI (``feast apply``, ``feast plan``...).

Run the CLI from this folder with the workspace in the environment::

    export FRESHRANK_WORKSPACE=$PWD/.freshrank      # from the repository root
    cd feature_store && feast apply && feast materialize-incremental "$(date -u +%FT%T)"

``feature_store.yaml`` points Feast's registry and online store into the same workspace,
and the objects below are exactly what ``freshrank features apply`` registers
(``feature_store.declarations.declare``). Every other module here is ``.feastignore``-d.
"""

import os
from pathlib import Path

from feature_store.config import WORKSPACE_ENV, FeatureStoreConfig

_workspace = os.environ.get(WORKSPACE_ENV)
if not _workspace:  # checked before the heavy imports, so the hint comes at once
    raise RuntimeError(
        f"set {WORKSPACE_ENV} to the freshrank workspace (e.g. export {WORKSPACE_ENV}=$PWD/.freshrank "
        "from the repository root) before running feast from feature_store/"
    )

from feature_store.sources import ensure_sources  # noqa: E402
from feature_store.declarations import declare  # noqa: E402
_cfg = FeatureStoreConfig(workspace=Path(_workspace))
# Feast creates registry.db but not its folder; sources get their empty schema files.
_cfg.feast_dir.mkdir(parents=True, exist_ok=True)
ensure_sources(_cfg)
_declared = declare(_cfg.features_dir)

# Entities
user = _declared.entities[0]
item = _declared.entities[1]

# Sources (Parquet written by `freshrank features compute`; the push source for live counters)
user_stats_source = _declared.source("user_stats_source")
item_fresh_source = _declared.source("item_fresh_source")
item_fresh_push = _declared.source("item_fresh_push")
item_stats_source = _declared.source("item_stats_source")
item_profile_source = _declared.source("item_profile_source")

# Feature views
user_stats = _declared.view("user_stats")
item_fresh = _declared.view("item_fresh")
item_stats = _declared.view("item_stats")
item_profile = _declared.view("item_profile")

# On-demand view: item age at request time
item_age = _declared.on_demand_views[0]

# The versioned service models name (catalog.FEATURE_SERVICE_NAME)
ranker_service = _declared.service
