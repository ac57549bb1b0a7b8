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
    [controller]                 # serving.controller.config.ControllerConfig (freshrank run)

The rule (one settings path): the ``freshrank`` command reads this file once, into one
frozen ``Settings``, and hands every subcommand the sections it needs; nothing else reads
configuration, and nothing reads it from globals. Unknown sections and keys are errors.

Which file: ``--config``, else ``$FRESHRANK_CONFIG``, else none (every default). Which
workspace: ``--workspace``, else ``$FRESHRANK_WORKSPACE``, else the file's
``[feature_store] workspace`` or ``[freshrank] workspace``, else ``./.freshrank``. The
workspace is set once, here, and handed to the feature store (which owns the layout).
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from base_model.config import BaseModelConfig
from feature_store.config import DEFAULT_WORKSPACE, WORKSPACE_ENV, FeatureStoreConfig
from online_layer.config import OnlineLayerConfig
from serving.config import ServingConfig
from serving.controller.config import ControllerConfig

__all__ = [
    "CONFIG_ENV",
    "SECTIONS",
    "WORKSPACE_ENV",
    "Settings",
    "config_path",
    "load_settings",
]

SECTIONS = ("freshrank", "feature_store", "base_model", "online_layer", "serving", "controller")
CONFIG_ENV = "FRESHRANK_CONFIG"
_SHARED_KEYS = ("workspace", "ray_address")


@dataclass(frozen=True)
class Settings:
    """The whole system's configuration, as frozen values: one section per package.

    ``source`` is the file it was read from (None: defaults only); a command that starts
    another process with the same settings (the backtest's tiers) passes it on.
    """

    feature_store: FeatureStoreConfig
    base_model: BaseModelConfig
    online_layer: OnlineLayerConfig
    serving: ServingConfig
    ray_address: str | None = None
    source: Path | None = None
    controller: ControllerConfig = field(default_factory=ControllerConfig)

    @property
    def workspace(self) -> Path:
        return self.feature_store.workspace

    @property
    def registry_dir(self) -> Path:
        """The model registry (both tiers) lives in the workspace."""
        return self.workspace / "registry"

    def replace(self, **sections: Any) -> Settings:
        return dataclasses.replace(self, **sections)

    def with_overrides(self, overrides: Mapping[str, Mapping[str, Any]]) -> Settings:
        """A copy with ``section -> key -> value`` changes, each checked by its section's
        ``from_dict`` as if it had been in the file (``freshrank`` uses ``"freshrank"`` for
        ``ray_address``).

        Raises:
            ValueError: an unknown section or key, or a value its config rejects.
        """
        changes: dict[str, Any] = {}
        for name, values in overrides.items():
            if not values:
                continue
            if name == "freshrank":
                unknown = sorted(set(values) - {"ray_address"})
                if unknown:
                    raise ValueError(f"unknown [freshrank] override(s): {', '.join(unknown)}")
                changes["ray_address"] = values["ray_address"] or None
                continue
            if name not in _BUILDERS:
                raise ValueError(
                    f"unknown settings section {name!r}; known: {', '.join(SECTIONS)}"
                )
            current = getattr(self, name)
            merged = {f.name: getattr(current, f.name) for f in dataclasses.fields(current)}
            merged.update(values)
            changes[name] = _BUILDERS[name](merged)
        return dataclasses.replace(self, **changes)


_BUILDERS: dict[str, Any] = {
    "feature_store": FeatureStoreConfig.from_dict,
    "base_model": BaseModelConfig.from_dict,
    "online_layer": OnlineLayerConfig.from_dict,
    "serving": ServingConfig.from_dict,
    "controller": ControllerConfig.from_dict,
}


def config_path(path: str | os.PathLike[str] | None = None) -> Path | None:
    """The settings file to read: ``path``, else ``$FRESHRANK_CONFIG``, else None."""
    source = path if path is not None else os.environ.get(CONFIG_ENV) or None
    return Path(source) if source is not None else None


def load_settings(
    path: str | os.PathLike[str] | None = None,
    *,
    workspace: str | os.PathLike[str] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> Settings:
    """Read ``path`` (or $FRESHRANK_CONFIG, or nothing: all defaults) into ``Settings``.

    ``workspace`` and ``overrides`` (section -> key -> value) win over the file, so a CLI
    flag or a test can change one value without writing a file. Without ``workspace``:
    ``$FRESHRANK_WORKSPACE``, else the file's, else ``./.freshrank``.

    Raises:
        FileNotFoundError: the file (given or named by $FRESHRANK_CONFIG) does not exist.
        ValueError: an unknown section or key, or a value its config rejects.
    """
    raw: dict[str, dict[str, Any]] = {name: {} for name in SECTIONS}
    source = config_path(path)
    if source is not None:
        try:
            with open(source, "rb") as handle:
                document = tomllib.load(handle)
        except FileNotFoundError:
            raise FileNotFoundError(
                f"settings file {source} does not exist: pass --config PATH (or unset "
                f"${CONFIG_ENV})"
            ) from None
        except tomllib.TOMLDecodeError as error:
            raise ValueError(f"{source} is not valid TOML: {error}") from error
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
    unknown = sorted(set(shared) - set(_SHARED_KEYS))
    if unknown:
        raise ValueError(
            f"unknown [freshrank] setting(s): {', '.join(unknown)}; known: {', '.join(_SHARED_KEYS)}"
        )
    store = dict(raw["feature_store"])
    if workspace is not None:
        store["workspace"] = Path(workspace)
    elif os.environ.get(WORKSPACE_ENV):
        store["workspace"] = Path(os.environ[WORKSPACE_ENV])
    elif "workspace" not in store:
        store["workspace"] = Path(shared.get("workspace") or DEFAULT_WORKSPACE)
    return Settings(
        feature_store=FeatureStoreConfig.from_dict(store),
        base_model=BaseModelConfig.from_dict(raw["base_model"]),
        online_layer=OnlineLayerConfig.from_dict(raw["online_layer"]),
        serving=ServingConfig.from_dict(raw["serving"]),
        controller=ControllerConfig.from_dict(raw["controller"]),
        ray_address=shared.get("ray_address") or None,
        source=source,
    )
