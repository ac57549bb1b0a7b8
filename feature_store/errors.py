"""The feature store's errors: one root under ``protos.errors.FreshrankError``.

Bad input is also a ``protos.errors.InvalidInput`` (a ``ValueError``, ``INVALID_ARGUMENT``);
a workspace that lacks a step's prerequisite is a ``FailedPrecondition``. Each class
carries its gRPC status (``grpc_status``); only serving's ingress translates it.
"""

from __future__ import annotations

from protos.errors import FailedPrecondition, FreshrankError, InvalidInput

__all__ = [
    "EngineError",
    "EventsFormatError",
    "FeatureStoreError",
    "UnknownDatasetError",
    "UntrainableEventsError",
    "WorkspaceError",
]


class FeatureStoreError(FreshrankError):
    """Base of every error raised on purpose by ``feature_store``."""


class EventsFormatError(FeatureStoreError, InvalidInput):
    """An events file or table breaks the events format.

    Attributes
    ----------
    column : str
        The offending column.
    row : int | None
        0-based index of the first bad row (``None`` when the whole column is wrong,
        e.g. missing).
    """

    def __init__(self, message: str, *, column: str, row: int | None = None) -> None:
        super().__init__(message)
        self.column = column
        self.row = row


class UntrainableEventsError(FeatureStoreError, InvalidInput):
    """A well-formed events log that cannot train a click model: no rows, or labels of one
    kind only (a click stream without its impressions). ``feature_store.events_file
    .check_trainable`` says what it would need."""


class UnknownDatasetError(FeatureStoreError, InvalidInput):
    """``import_dataset`` was given a name it has no importer for, or a folder it can't read."""


class WorkspaceError(FeatureStoreError, FailedPrecondition):
    """The workspace lacks something a step needs (no events, not applied, not computed)."""


class EngineError(FeatureStoreError, FailedPrecondition):
    """The configured engine cannot give a correct answer here: this process is connected to
    another Ray cluster than the one configured, or Feast's Ray engine returned other rows
    than it was given (``feature_store.ray_engine``)."""
