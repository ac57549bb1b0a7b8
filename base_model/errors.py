"""The base tier's errors: one root under ``protos.errors.FreshrankError``.

Anything a caller got wrong is also a ``protos.errors.InvalidInput`` (a ``ValueError``,
``INVALID_ARGUMENT``); a state that blocks the operation (blocked gates, a broken artifact)
is a ``FailedPrecondition``. Serving translates them at its gRPC ingress; the CLI prints
their messages. Every message names what was wrong (a column, a key, a version) so a user
can act on it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from protos.errors import FailedPrecondition, FreshrankError, InvalidInput
from protos.settings_io import SettingsError

__all__ = [
    "ArtifactError",
    "BaseModelError",
    "ConfigError",
    "DataGateError",
    "TrainingDataError",
]


class BaseModelError(FreshrankError):
    """Root of every error raised on purpose by ``base_model``."""


class ConfigError(BaseModelError, SettingsError):
    """A ``BaseModelConfig`` field (or a TOML key) is unknown, of the wrong type or out of range."""


class TrainingDataError(BaseModelError, InvalidInput):
    """The training set lacks a column, has a wrong type, or a value outside its range."""


class ArtifactError(BaseModelError, FailedPrecondition):
    """An artifact directory is missing a file, or its manifest disagrees with its weights.

    ``FAILED_PRECONDITION``: the stored artifact, not the caller's request, is at fault.
    """


class DataGateError(BaseModelError, FailedPrecondition):
    """The data gates blocked training: stale data, a half-loaded day or a thin hour.

    ``report`` holds every check (passed or not) so the caller can log or record them.
    """

    def __init__(self, message: str, report: Mapping[str, Any]) -> None:
        super().__init__(message)
        self.report = dict(report)
