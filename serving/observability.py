"""Prometheus metrics and request-tagged structured logs for the Serve application.

How the numbers get out of separate processes
---------------------------------------------
Serve runs each Ranker replica and the Learner in its own process. Rather than Prometheus'
multiprocess mode (a shared directory of mmap files, which Feast already claims in every
process that imports it: ``PROMETHEUS_MULTIPROCESS_DIR``, see tests/conftest.py), every number
lives in plain Python and one process exposes them all:

- each Ranker replica counts into a ``RankerMetrics`` (no locks, no I/O on the request path)
  and sends its ``snapshot()`` to the Learner with its weight poll (every
  ``serving.weight_poll_seconds``);
- the Learner (one replica) keeps a ``serving.metrics_hub.MetricsHub``: the replicas' latest
  snapshots, its own learner's report, and a probe of the online store; ``serve_metrics`` serves
  it with prometheus-client's HTTP server on ``serving.host``:``serving.metrics_port``
  (loopback by default; 0 picks a free port, logged and returned by ``serving.app.start``).
  On a multi-node cluster it listens on the Learner's node.

Counters are summed over replicas; a replica silent for ``REPLICA_TTL_SECONDS`` is dropped
and its counters are folded into a retired total, so sums never go down while the Learner
lives. Replica-side values are at most one weight poll old.

``METRICS`` below names every exported metric: the ``serving`` rows of
infra/monitoring/metrics.txt, the one list alerts and the dashboard use (a test keeps the
two equal). Three numbers belong to work in progress elsewhere and read 0 until the learner
reports them: the breaker (``report.breaker`` / ``extra["breaker_state"]``: open or
half-open -> ``freshrank_breaker_open`` 1), the learner lag (``learner_lag_s``) and the
event-log lag (``event_log_lag_s``), each as a report attribute or an ``extra`` key.

Structured logs
---------------
``serving.app`` sets Serve's ``logging_config`` to ``encoding: JSON``. Serve attaches its
handlers (the replica's log file under the Ray session's ``logs/serve/`` and stderr) to the
``ray.serve`` logger only; ``configure_replica_logging`` hands them to freshrank's own package
loggers too, and adds ``RequestIdFilter``: every line logged while a request runs carries
Serve's ``request_id`` (Serve's filter) and the caller's id as ``freshrank_request_id``
(``bind_request_id``, set by the ingress once it has parsed the request).
"""

from __future__ import annotations

import bisect
import contextvars
import functools
import logging
import os
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from serving.ranking import OnlineSlot, RankOutcome

logger = logging.getLogger(__name__)

PREFIX = "freshrank_"
# Rank latency buckets, seconds (the target is p99 < 2 ms for 100 candidates).
RANK_BUCKETS = (
    0.0005, 0.001, 0.0015, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0,
)
REPLICA_TTL_SECONDS = 60.0
PROBE_CACHE_SECONDS = 15.0
LOG_PACKAGES = ("serving", "online_layer", "feature_store", "base_model", "protos")
REQUEST_ID_FIELD = "freshrank_request_id"

# name -> (type, help): every name ``MetricsHub.collect`` exports, no other. It is the
# ``serving`` part of infra/monitoring/metrics.txt (the one list alerts and dashboards use;
# a test checks the two agree and that a running application exports exactly these).
METRICS: dict[str, tuple[str, str]] = {
    "freshrank_rank_requests_total": ("counter", "Rank calls, by gRPC status code."),
    "freshrank_rank_latency_seconds": ("histogram", "Rank latency in the ingress replica (every outcome)."),
    "freshrank_rank_fallback_total": ("counter", "Rank answers served by the base alone, by fallback reason."),
    "freshrank_breaker_open": ("gauge", "1 while the online layer's circuit breaker is open or half-open, else 0 (0 until the learner reports a breaker)."),
    "freshrank_online_weight_age_seconds": ("gauge", "Age of the online weights each replica applies (since published)."),
    "freshrank_online_weight_ttl_seconds": ("gauge", "serving.online_ttl_seconds: online weights older than this are stale."),
    "freshrank_learner_lag_seconds": ("gauge", "Event time between the newest feedback seen and the newest learnt (0 until the learner reports learner_lag_s)."),
    "freshrank_feedback_events_total": ("counter", "Feedback events by outcome (accepted, dropped, rejected) and reason."),
    "freshrank_event_log_lag_seconds": ("gauge", "Age of the oldest event accepted but not yet durable in the event log (0 until the learner reports event_log_lag_s)."),
    "freshrank_feature_staleness_seconds": ("gauge", "Now minus the newest event time in the online store, by view."),
    "freshrank_feature_ttl_seconds": ("gauge", "The feature view's TTL, by view."),
}

__all__ = [
    "METRICS",
    "RankerMetrics",
    "RequestIdFilter",
    "bind_request_id",
    "configure_replica_logging",
    "observed",
    "replica_name",
]

# ------------------------------------------------------------------------ request-tagged logs

_REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("freshrank_request_id", default="")


def bind_request_id(request_id: str) -> None:
    """Tag every log line of the running request with the caller's ``request_id``."""
    _REQUEST_ID.set(request_id[:128])


class RequestIdFilter(logging.Filter):
    """Adds ``freshrank_request_id`` to a record logged while a request is bound."""

    def filter(self, record: logging.LogRecord) -> bool:
        request_id = _REQUEST_ID.get()
        if request_id and not hasattr(record, REQUEST_ID_FIELD):
            setattr(record, REQUEST_ID_FIELD, request_id)
        return True


def configure_replica_logging(packages: tuple[str, ...] = LOG_PACKAGES) -> None:
    """In a Serve replica: freshrank's loggers write where Serve's do (its replica log file,
    JSON when so configured, and stderr), at Serve's level, lines tagged with request ids."""
    serve_logger = logging.getLogger("ray.serve")
    handlers = list(serve_logger.handlers)
    if not handlers:  # not inside a Serve replica: leave logging alone
        return
    for handler in handlers:
        if not any(isinstance(f, RequestIdFilter) for f in handler.filters):
            handler.addFilter(RequestIdFilter())
    for name in packages:
        package_logger = logging.getLogger(name)
        package_logger.handlers = list(handlers)
        package_logger.setLevel(serve_logger.level)
        package_logger.propagate = False


def replica_name() -> str:
    """This Serve replica's id (``Deployment#abc123``), or the pid outside Serve."""
    try:
        from ray import serve

        return str(serve.get_replica_context().replica_id.to_full_id_str())
    except Exception:
        return f"pid-{os.getpid()}"


# ------------------------------------------------------------------------ replica side

class _Histogram:
    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value


class RankerMetrics:
    """One ingress replica's Rank numbers: plain counters, cheap enough for every call."""

    def __init__(self, replica: str | None = None, *, clock: Callable[[], float] = time.time) -> None:
        self.replica = replica or replica_name()
        self._clock = clock
        self.codes: Counter[str] = Counter()
        self.rank_latency = _Histogram(RANK_BUCKETS)
        self.fallbacks: Counter[str] = Counter()

    def observe_call(self, rpc: str, code: str, seconds: float) -> None:
        """A finished call (``observed``); only Rank is exported."""
        if rpc == "Rank":
            self.codes[code] += 1
            self.rank_latency.observe(seconds)

    def observe_rank(self, outcome: RankOutcome) -> None:
        """What an answered Rank did: the fallback and why (a line at DEBUG)."""
        reason = ""
        if outcome.fallback is not None:
            reason = _reason_name(outcome.fallback.reason)
            self.fallbacks[reason] += 1
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug(
                "Rank %r: %d candidates, online %s%s",
                outcome.query.request_id[:64],
                len(outcome.query.item_ids),
                outcome.online_version or "-",
                f", fallback {reason}" if reason else "",
            )

    def snapshot(self, slot: OnlineSlot | None = None) -> dict[str, Any]:
        """Plain values for the hub (picklable; counters are totals since the replica began)."""
        now = self._clock()
        return {
            "replica": self.replica,
            "time": now,
            "codes": dict(self.codes),
            "rank_latency": {"counts": list(self.rank_latency.counts), "sum": self.rank_latency.sum},
            "fallbacks": dict(self.fallbacks),
            "online_age_s": None if slot is None else max(0.0, now - slot.published_at),
        }


def _reason_name(reason: Any) -> str:
    try:
        from protos.freshrank.v1 import ranking_pb2

        name = ranking_pb2.FallbackReason.Name(reason)
    except Exception:
        return str(reason)
    return name.removeprefix("FALLBACK_REASON_").lower()


H = TypeVar("H", bound=Callable[..., Awaitable[Any]])


def observed(handler: H) -> H:
    """Decorate an ingress rpc method (above ``@rpc``): counts a Rank by the status code the
    door set and times it, and scopes the request id bound during the call to the call."""
    name = handler.__name__

    # The closure is pickled by value with the deployment class: it may name only picklable
    # globals and module-level functions (pickled by reference), not the ContextVar itself.
    @functools.wraps(handler)
    async def wrapper(self: Any, request: Any, grpc_context: Any) -> Any:
        token = _begin_request()
        start = time.perf_counter()
        code = "INTERNAL"  # what Serve answers for an exception that leaves the door
        try:
            reply = await handler(self, request, grpc_context)
            code = _code_name(grpc_context)
            return reply
        finally:
            metrics = getattr(self, "_metrics", None)
            if metrics is not None:
                metrics.observe_call(name, code, time.perf_counter() - start)
            _end_request(token)

    wrapper.__observed__ = True  # type: ignore[attr-defined]  # what it wraps: __wrapped__
    return wrapper  # type: ignore[return-value]


def _begin_request() -> contextvars.Token[str]:
    return _REQUEST_ID.set("")


def _end_request(token: contextvars.Token[str]) -> None:
    _REQUEST_ID.reset(token)


def _code_name(grpc_context: Any) -> str:
    try:
        code = grpc_context.code()
    except Exception:
        return "OK"
    if code is None:
        return "OK"
    return str(getattr(code, "name", code))
