"""Every error a package raises on purpose is a FreshrankError carrying a fitting gRPC status."""

from __future__ import annotations

import importlib
import inspect

import grpc
import pytest

from protos.errors import FreshrankError, InvalidInput

INVALID = grpc.StatusCode.INVALID_ARGUMENT
PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION
INTERNAL = grpc.StatusCode.INTERNAL

# Every error class of each module, with the status a client should see for it. A new class
# that is not listed fails ``test_every_error_class_is_listed``: decide its status here.
EXPECTED: dict[str, dict[str, grpc.StatusCode]] = {
    "base_model.errors": {
        "BaseModelError": INTERNAL,
        "ConfigError": INVALID,
        "TrainingDataError": INVALID,
        "ArtifactError": PRECONDITION,
        "DataGateError": PRECONDITION,
    },
    "online_layer.errors": {
        "OnlineLayerError": INTERNAL,
        "InputError": INVALID,
        "SnapshotError": INVALID,
        "BaseVersionMismatch": PRECONDITION,
        "ServedRecordError": INVALID,
    },
    "feature_store.errors": {
        "FeatureStoreError": INTERNAL,
        "EventsFormatError": INVALID,
        "UnknownDatasetError": INVALID,
        "UntrainableEventsError": INVALID,
        "WorkspaceError": PRECONDITION,
        "EngineError": PRECONDITION,
    },
    "serving.errors": {
        "ServingError": INTERNAL,
        "InvalidRequest": INVALID,
        "NotReady": grpc.StatusCode.UNAVAILABLE,
    },
    "serving.backtest.errors": {
        "BacktestError": INTERNAL,
        "BacktestSettingsError": INVALID,
        "BacktestDataError": INVALID,
    },
    "protos.registry": {
        "RegistryError": INVALID,
        "UnknownVersionError": grpc.StatusCode.NOT_FOUND,
        "PromotionRefused": PRECONDITION,
    },
    "protos.settings_io": {"SettingsError": INVALID},
}


def _error_classes(module_name: str) -> dict[str, type[BaseException]]:
    module = importlib.import_module(module_name)
    return {
        name: cls
        for name, cls in inspect.getmembers(module, inspect.isclass)
        if issubclass(cls, BaseException) and cls.__module__ == module_name
    }


@pytest.mark.parametrize("module_name", sorted(EXPECTED))
def test_every_error_class_is_listed(module_name: str) -> None:
    assert set(_error_classes(module_name)) == set(EXPECTED[module_name])


@pytest.mark.parametrize(
    ("module_name", "name"),
    [(module, name) for module, names in sorted(EXPECTED.items()) for name in names],
)
def test_each_error_is_a_freshrank_error_with_its_status(module_name: str, name: str) -> None:
    cls = _error_classes(module_name)[name]
    assert issubclass(cls, FreshrankError)
    assert cls.grpc_status == EXPECTED[module_name][name]
    # Bad input is a ValueError (the old convention still holds), and the other way round.
    assert issubclass(cls, ValueError) == issubclass(cls, InvalidInput) or name in {
        "UnknownVersionError",  # NOT_FOUND, still a RegistryError (bad input to the registry)
        "PromotionRefused",  # FAILED_PRECONDITION, still a RegistryError
        "BaseVersionMismatch",  # FAILED_PRECONDITION, still a SnapshotError
    }


def test_a_package_root_catches_its_own_family_only() -> None:
    from base_model.errors import BaseModelError, ConfigError
    from feature_store.errors import FeatureStoreError, WorkspaceError
    from protos.settings_io import SettingsError
    from serving.errors import InvalidRequest, NotReady, ServingError

    assert issubclass(ConfigError, SettingsError) and issubclass(ConfigError, BaseModelError)
    assert not issubclass(WorkspaceError, BaseModelError)
    assert issubclass(WorkspaceError, FeatureStoreError)
    assert issubclass(InvalidRequest, ServingError) and issubclass(NotReady, ServingError)
    # The ingress still reads ``status`` (the name before the re-house).
    assert InvalidRequest("x").status == INVALID
