"""Errors that cross the serving ingress, each carrying the gRPC status it maps to.

``ServingError`` is serving's root under ``protos.errors.FreshrankError``; a malformed
request is also an ``InvalidInput`` (``INVALID_ARGUMENT``), no base model yet is an
``Unavailable``. Library code raises these (or any ``FreshrankError``); only the ingress
translates them into a gRPC status (``grpc_status``), so a bad request never reaches a
client as ``INTERNAL`` with a traceback.
"""

from __future__ import annotations

import grpc

from protos.errors import FreshrankError, InvalidInput, Unavailable

__all__ = ["InvalidRequest", "NotReady", "ServingError"]


class ServingError(FreshrankError):
    """Root of serving's errors; ``grpc_status`` is what the client sees."""

    @property
    def status(self) -> grpc.StatusCode:
        """The same as ``grpc_status`` (the name the ingress used before the re-house)."""
        return self.grpc_status


class InvalidRequest(ServingError, InvalidInput):
    """The request is malformed; the message says which field and why."""


class NotReady(ServingError, Unavailable):
    """Serving has no base model to score with yet."""
