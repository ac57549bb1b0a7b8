"""The online layer's errors: all are ``ValueError``s, so callers that only know the
convention (bad input raises ValueError) still catch them, and serving can map the whole
family to one gRPC status at its ingress.
"""

from __future__ import annotations


class OnlineLayerError(ValueError):
    """Base of every error this package raises for bad input or state."""


class InputError(OnlineLayerError):
    """Arrays handed to a featurizer or model have the wrong shape, type or values."""


class SnapshotError(OnlineLayerError):
    """A snapshot blob is corrupt, of an unknown format, or does not fit the model."""


class BaseVersionMismatch(SnapshotError):
    """A snapshot (or batch) was trained against another base version than expected."""


class ServedRecordError(OnlineLayerError):
    """A served record handed to the learner is malformed (a programming error in serving)."""
