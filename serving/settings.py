"""Every tier's configuration, loaded from one place.

A ``freshrank.toml`` (optional) holds one section per package plus ``[freshrank]`` for what
is shared::

    [freshrank]
    workspace = ".freshrank"     # runtime state: event log, features, Feast, model registry
    ray_address = ""             # empty: start a loopback-only local Ray cluster

    [feature_store]              # feature_store.config.FeatureStoreConfig
    [base_model]                 # base_model.config.BaseModelConfig
    [online_layer]               # online_layer.config.OnlineLayerConfig
    [serving]                    # serving.config.ServingConfig

Unknown keys are errors in every section. The workspace is set once, here, and handed to the
feature store (which owns the on-disk layout); nothing reads configuration from globals.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from base_model.config import BaseModelConfig
from feature_store.config import FeatureStoreConfig
from online_layer.config import OnlineLayerConfig
from serving.config import ServingConfig

SECTIONS = ("freshrank", "feature_store", "base_model", "online_layer", "serving")
CONFIG_ENV = "FRESHRANK_CONFIG"


@dataclass(frozen=True)
class Settings:
    """The whole system's configuration, as frozen values."""

    feature_store: FeatureStoreConfig
    base_model: BaseModelConfig
    online_layer: OnlineLayerConfig
    serving: ServingConfig
    ray_address: str | None = None

    @property
    def workspace(self) -> Path:
        return self.feature_store.workspace

    @property
    def registry_dir(self) -> Path:
        """The model registry (both tiers) lives in the workspace."""
        return self.workspace / "registry"

    def replace(self, **sections: Any) -> Settings:
        return dataclasses.replace(self, **sections)


def load_settings(
    path: str | os.PathLike[str] | None = None,
    *,
    workspace: str | os.PathLike[str] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> Settings:
    """Read ``path`` (or $FRESHRANK_CONFIG, or nothing: all defaults) into ``Settings``.

    ``workspace`` and ``overrides`` (section -> key -> value) win over the file, so a CLI
    flag or a test can change one value without writing a file.

    Raises:
        FileNotFoundError: ``path`` was given and does not exist.
        ValueError: an unknown section or key, or a value its config rejects.
    """
    raw: dict[str, dict[str, Any]] = {name: {} for name in SECTIONS}
    source = path if path is not None else os.environ.get(CONFIG_ENV)
    if source:
        with open(source, "rb") as handle:
            document = tomllib.load(handle)
        unknown = sorted(set(document) - set(SECTIONS))
        if unknown:
            raise ValueError(
                f"{source}: unknown section(s) {', '.join(unknown)}; known: {', '.join(SECTIONS)}"
            )
        for name, values in document.items():
            if not isinstance(values, dict):
                raise ValueError(f"{source}: [{name}] must be a table")
            raw[name].update(values)
    for name, values in (overrides or {}).items():
        if name not in raw:
            raise ValueError(f"unknown settings section {name!r}; known: {', '.join(SECTIONS)}")
        raw[name].update(values)

    shared = raw["freshrank"]
    unknown = sorted(set(shared) - {"workspace", "ray_address"})
    if unknown:
        raise ValueError(f"unknown [freshrank] setting(s): {', '.join(unknown)}")
    store = dict(raw["feature_store"])
    if workspace is not None:
        store["workspace"] = Path(workspace)
    elif "workspace" in shared:
        store.setdefault("workspace", Path(shared["workspace"]))
    return Settings(
        feature_store=FeatureStoreConfig.from_dict(store),
        base_model=BaseModelConfig.from_dict(raw["base_model"]),
        online_layer=OnlineLayerConfig.from_dict(raw["online_layer"]),
        serving=ServingConfig.from_dict(raw["serving"]),
        ray_address=shared.get("ray_address") or None,
    )
