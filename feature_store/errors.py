"""The feature store's errors: one base, and ValueError subclasses for bad input.

Serving maps ``ValueError`` subclasses to ``INVALID_ARGUMENT`` and the rest to
``FAILED_PRECONDITION``/``INTERNAL`` at its ingress; nothing here knows about gRPC.
"""

from __future__ import annotations

__all__ = [
    "EventsFormatError",
    "FeatureStoreError",
    "UnknownDatasetError",
    "WorkspaceError",
]


class FeatureStoreError(Exception):
    """Base of every error raised on purpose by ``feature_store``."""


class EventsFormatError(FeatureStoreError, ValueError):
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


class UnknownDatasetError(FeatureStoreError, ValueError):
    """``import_dataset`` was given a name it has no importer for, or a folder it can't read."""


class WorkspaceError(FeatureStoreError, RuntimeError):
    """The workspace lacks something a step needs (no events, not applied, not computed)."""
