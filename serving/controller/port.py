"""What the controller needs from the running app: six admin calls, typed.

``serving.client.RankerClient`` satisfies ``ServingPort`` as it is (structural typing); tests
pass a small in-memory implementation. Calls raise ``grpc.RpcError`` as the client does;
``rpc_failure`` turns one into what the controller records and decides on.

How the controller reads the replies (the contract it relies on):

- ``stage_candidate(version, "shadow"|"canary", ...)`` -> ``AdminReply``: success is the
  absence of an error; ``control_serial`` and ``detail`` are recorded, not interpreted.
- ``candidate_report()`` -> ``CandidateReportReply``: judged only when
  ``candidate_base_version`` is the cycle's version and ``phase`` the step's phase; shadow
  reads ``shadow_requests``, ``top_k_overlap``, ``rank_correlation``,
  ``champion_mean_ctr``/``candidate_mean_ctr`` and the four latency fields; the champion of
  the comparison is ``champion_base_version``.
- ``promote_base(reason, actor, base_version=version)``: a named promote, so that
  re-issuing it after a crash is idempotent; done when ``status().base_version`` is it.
- ``abort_candidate(reason, actor)``: stop the shadow or canary.
- ``status()`` -> ``StatusReply``: ``base_version`` (the champion serving),
  ``candidate_base_version`` and ``candidate_phase`` (what is staged now).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import grpc

if TYPE_CHECKING:
    from protos.freshrank.v1 import ranking_pb2

__all__ = ["RETRYABLE", "RpcFailure", "ServingPort", "rpc_failure"]

#: Codes after which the same call is tried again at the next poll (the app is restarting,
#: a replica is busy); any other code is an answer, and ends the step.
RETRYABLE = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED}
)


class ServingPort(Protocol):
    """The subset of ``RankerClient`` the controller calls."""

    def stage_candidate(
        self, base_version: str, phase: str, reason: str, actor: str, canary_share: float = 0.0
    ) -> ranking_pb2.AdminReply: ...

    def promote_base(
        self, reason: str, actor: str, base_version: str = ""
    ) -> ranking_pb2.AdminReply: ...

    def rollback_base(
        self, reason: str, actor: str, to_version: str = ""
    ) -> ranking_pb2.AdminReply: ...

    def abort_candidate(self, reason: str, actor: str) -> ranking_pb2.AdminReply: ...

    def candidate_report(self) -> ranking_pb2.CandidateReportReply: ...

    def status(self) -> ranking_pb2.StatusReply: ...


@dataclass(frozen=True)
class RpcFailure:
    """A failed call: its code's name, the server's detail, and whether to try again."""

    code: str
    detail: str
    retryable: bool

    def __str__(self) -> str:
        return f"{self.code}: {self.detail}"


def rpc_failure(error: grpc.RpcError) -> RpcFailure:
    code = error.code() if hasattr(error, "code") else None
    detail = error.details() if hasattr(error, "details") else str(error)
    name = code.name if code is not None else "UNKNOWN"
    return RpcFailure(name, " ".join(str(detail or "").split()), code in RETRYABLE)
