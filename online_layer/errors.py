"""The online layer's errors: one root under ``protos.errors.FreshrankError``.

Bad input (arrays, snapshot blobs, served records) is also a ``protos.errors.InvalidInput``,
so callers that only know the convention (bad input raises ValueError) still catch it and
serving's ingress maps it to ``INVALID_ARGUMENT``; a snapshot trained against another base
is a ``FailedPrecondition``.
"""

from __future__ import annotations

from protos.errors import FailedPrecondition, FreshrankError, InvalidInput

__all__ = [
    "BaseVersionMismatch",
    "InputError",
    "OnlineLayerError",
    "ServedRecordError",
    "SnapshotError",
]


class OnlineLayerError(FreshrankError):
    """Root of every error this package raises on purpose."""


class InputError(OnlineLayerError, InvalidInput):
    """Arrays handed to a featurizer or model have the wrong shape, type or values."""


class SnapshotError(OnlineLayerError, InvalidInput):
    """A snapshot blob is corrupt, of an unknown format, or does not fit the model."""


class BaseVersionMismatch(FailedPrecondition, SnapshotError):
    """A snapshot (or batch) was trained against another base version than expected."""


class ServedRecordError(OnlineLayerError, InvalidInput):
    """A served record handed to the learner is malformed (a programming error in serving)."""
