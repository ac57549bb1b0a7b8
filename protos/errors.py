"""One error family for all of freshrank, each class carrying the gRPC status it maps to.

Why here: every package raises these, and only the serving ingress translates them into a
gRPC status (as Feast's ``FeastError`` subclasses carry theirs). A package keeps its own
root (``BaseModelError``, ``OnlineLayerError``, ...) as a subclass of ``FreshrankError``,
and its bad-input errors also subclass ``InvalidInput`` (a ``ValueError``), so callers that
only know the convention "bad input raises ValueError" still catch them.

The CLI prints ``str(error)`` on stderr with exit code 2; the ingress sends ``str(error)`` as
the details with ``error.grpc_status``. Neither ever shows a traceback for these.

>>> issubclass(InvalidInput, ValueError)
True
>>> InvalidInput("user_id is empty").grpc_status.name
'INVALID_ARGUMENT'
>>> FreshrankError("x").grpc_status.name
'INTERNAL'
"""

from __future__ import annotations

import grpc

__all__ = [
    "FailedPrecondition",
    "FreshrankError",
    "InvalidInput",
    "NotFound",
    "PermissionDenied",
    "ResourceExhausted",
    "Unauthenticated",
    "Unavailable",
]


class FreshrankError(Exception):
    """Root of every error freshrank raises on purpose; ``grpc_status`` is what a client sees."""

    grpc_status: grpc.StatusCode = grpc.StatusCode.INTERNAL


class InvalidInput(FreshrankError, ValueError):
    """The caller sent something malformed or out of range; the message names the field."""

    grpc_status = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(FreshrankError, LookupError):
    """A named thing (a version, a file, an entity) does not exist."""

    grpc_status = grpc.StatusCode.NOT_FOUND


class FailedPrecondition(FreshrankError, RuntimeError):
    """The system is not in a state where the operation can run (e.g. nothing trained yet)."""

    grpc_status = grpc.StatusCode.FAILED_PRECONDITION


class Unavailable(FreshrankError, RuntimeError):
    """A component is not ready to answer yet; retrying later may succeed."""

    grpc_status = grpc.StatusCode.UNAVAILABLE


class ResourceExhausted(FreshrankError, RuntimeError):
    """A size or rate limit was exceeded."""

    grpc_status = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unauthenticated(FreshrankError, PermissionError):
    """The call carries no valid credential."""

    grpc_status = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(FreshrankError, PermissionError):
    """The credential is valid but does not allow this action."""

    grpc_status = grpc.StatusCode.PERMISSION_DENIED
