"""The base tier's errors: one root, subclasses of ValueError for anything a caller got wrong.

Serving translates these at its gRPC ingress; the CLI prints their messages. Every message
names what was wrong (a column, a key, a version) so a user can act on it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = [
    "ArtifactError",
    "BaseModelError",
    "ConfigError",
    "DataGateError",
    "TrainingDataError",
]


class BaseModelError(Exception):
    """Root of every error raised on purpose by ``base_model``."""


class ConfigError(BaseModelError, ValueError):
    """A ``BaseModelConfig`` field (or a TOML key) is unknown, of the wrong type or out of range."""


class TrainingDataError(BaseModelError, ValueError):
    """The training set lacks a column, has a wrong type, or a value outside its range."""


class ArtifactError(BaseModelError, ValueError):
    """An artifact directory is missing a file, or its manifest disagrees with its weights."""


class DataGateError(BaseModelError, ValueError):
    """The data gates blocked training: stale data, a half-loaded day or a thin hour.

    ``report`` holds every check (passed or not) so the caller can log or record them.
    """

    def __init__(self, message: str, report: Mapping[str, Any]) -> None:
        super().__init__(message)
        self.report = dict(report)
