"""Errors that cross the serving ingress, each carrying the gRPC status it maps to.

Library code raises these (or plain ``ValueError``); only the ingress translates them into a
gRPC status, so a bad request never reaches a client as ``INTERNAL`` with a traceback.
"""

from __future__ import annotations

import grpc


class ServingError(Exception):
    """Base of serving errors; ``status`` is what the client sees."""

    status: grpc.StatusCode = grpc.StatusCode.INTERNAL


class InvalidRequest(ServingError, ValueError):
    """The request is malformed; the message says which field and why."""

    status = grpc.StatusCode.INVALID_ARGUMENT


class NotReady(ServingError):
    """Serving has no base model to score with yet."""

    status = grpc.StatusCode.UNAVAILABLE
