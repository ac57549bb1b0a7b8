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
- the Learner (one replica) keeps a ``MetricsHub``: the replicas' latest snapshots, its own
  learner's report, and probes of the feature store and event log; ``serve_metrics`` exposes
  it with prometheus-client's HTTP server on ``serving.host``:``serving.metrics_port``
  (loopback by default; 0 picks a free port, logged and returned by ``serving.app.start``).
  On a multi-node cluster it listens on the Learner's node.

Counters are summed over replicas; a replica silent for ``REPLICA_TTL_SECONDS`` is dropped
and its counters are folded into a retired total, so sums never go down while the Learner
lives. Replica-side values are at most one weight poll old.

``METRICS`` below names every exported metric: the ``serving`` rows of
infra/monitoring/metrics.txt, the one list alerts and the dashboard use (a test keeps the
two equal). Two numbers belong to work in progress elsewhere and read 0 until the learner
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
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from feature_store.config import FeatureStoreConfig
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
    "MetricsHub",
    "RankerMetrics",
    "RequestIdFilter",
    "bind_request_id",
    "configure_replica_logging",
    "observed",
    "replica_name",
    "serve_metrics",
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


# ------------------------------------------------------------------------ the hub (Learner)

@dataclass
class _Replica:
    seen: float
    snapshot: dict[str, Any]


class MetricsHub:
    """Every exported number, assembled at scrape time (a prometheus-client collector).

    ``report`` returns the learner's ``LearnerReport``; ``feature_store`` is the workspace
    whose online store is probed for staleness (at most every ``PROBE_CACHE_SECONDS``);
    ``online_ttl_s`` is ``serving.online_ttl_seconds``.
    """

    def __init__(
        self,
        report: Callable[[], Any] | None = None,
        feature_store: FeatureStoreConfig | None = None,
        *,
        online_ttl_s: float | None = None,
        clock: Callable[[], float] = time.time,
        replica_ttl_s: float = REPLICA_TTL_SECONDS,
    ) -> None:
        self._report = report
        self._feature_store = feature_store
        self._online_ttl = online_ttl_s
        self._clock = clock
        self._ttl = replica_ttl_s
        self._lock = threading.Lock()
        self._replicas: dict[str, _Replica] = {}
        self._retired = _Totals()
        self._probes: dict[str, tuple[float, Any]] = {}

    def update(self, snapshot: Mapping[str, Any]) -> None:
        """A replica's latest ``RankerMetrics.snapshot()``."""
        with self._lock:
            self._replicas[str(snapshot["replica"])] = _Replica(self._clock(), dict(snapshot))

    def describe(self) -> list[Any]:
        return []  # names are known only at collect time; don't collect at register

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        now = self._clock()
        live = self._live_replicas(now)
        totals = _Totals()
        totals.add_totals(self._retired)
        for replica in live.values():
            totals.add_snapshot(replica.snapshot)
        report = None
        if self._report is not None:
            try:
                report = self._report()
            except Exception:
                logger.exception("learner report failed; learner metrics read 0 this scrape")

        def gauge(name: str, labels: list[str] | None = None) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, METRICS[name][1], labels=labels)

        def counter(name: str, labels: list[str] | None = None) -> CounterMetricFamily:
            return CounterMetricFamily(name.removesuffix("_total"), METRICS[name][1], labels=labels)

        requests = counter("freshrank_rank_requests_total", ["code"])
        for code, n in sorted(totals.codes.items()):
            requests.add_metric([code], n)
        yield requests
        latency = HistogramMetricFamily(
            "freshrank_rank_latency_seconds", METRICS["freshrank_rank_latency_seconds"][1]
        )
        cumulative, buckets = 0, []
        for bound, count in zip((*RANK_BUCKETS, float("inf")), totals.latency_counts, strict=True):
            cumulative += count
            buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
        latency.add_metric([], buckets, totals.latency_sum)
        yield latency
        fallbacks = counter("freshrank_rank_fallback_total", ["reason"])
        for reason, n in sorted(totals.fallbacks.items()):
            fallbacks.add_metric([reason], n)
        yield fallbacks

        breaker = gauge("freshrank_breaker_open")
        breaker.add_metric([], 0.0 if _breaker_state(report) == "closed" else 1.0)
        yield breaker
        age = gauge("freshrank_online_weight_age_seconds", ["replica"])
        for name, replica in sorted(live.items()):
            if replica.snapshot.get("online_age_s") is not None:
                # The snapshot is up to one poll old: age it to now.
                age.add_metric([name], float(replica.snapshot["online_age_s"]) + max(0.0, now - replica.seen))
        yield age
        ttl = gauge("freshrank_online_weight_ttl_seconds")
        if self._online_ttl is not None:
            ttl.add_metric([], float(self._online_ttl))
        yield ttl

        for name, key in (
            ("freshrank_learner_lag_seconds", "learner_lag_s"),
            ("freshrank_event_log_lag_seconds", "event_log_lag_s"),
        ):
            family = gauge(name)
            family.add_metric([], _reported(report, key))
            yield family
        feedback = counter("freshrank_feedback_events_total", ["outcome", "reason"])
        if report is not None:
            feedback.add_metric(["accepted", "joined"], float(getattr(report, "feedback_rows_accepted", 0)))
            for outcome, attribute in (("dropped", "dropped_rows"), ("rejected", "rejected_rows")):
                for reason, n in sorted((getattr(report, attribute, None) or {}).items()):
                    feedback.add_metric([outcome, str(reason)], float(n))
        yield feedback

        staleness = gauge("freshrank_feature_staleness_seconds", ["view"])
        for view, newest in sorted(self._cached("features", now, self._newest_features).items()):
            staleness.add_metric([view], max(0.0, now - newest))
        yield staleness
        feature_ttl = gauge("freshrank_feature_ttl_seconds", ["view"])
        for view, seconds in sorted(_feature_ttls().items()):
            feature_ttl.add_metric([view], seconds)
        yield feature_ttl

    # -- pieces

    def _live_replicas(self, now: float) -> dict[str, _Replica]:
        with self._lock:
            for name in [n for n, r in self._replicas.items() if now - r.seen > self._ttl]:
                self._retired.add_snapshot(self._replicas.pop(name).snapshot)
            return dict(self._replicas)

    def _cached(self, key: str, now: float, probe: Callable[[], Any]) -> Any:
        seen = self._probes.get(key)
        if seen is not None and now - seen[0] < PROBE_CACHE_SECONDS:
            return seen[1]
        try:
            value = probe()
        except Exception:
            logger.warning("metrics probe %s failed", key, exc_info=True)
            value = {}
        self._probes[key] = (now, value)
        return value

    def _newest_features(self) -> dict[str, float]:
        """Per online-store table: the newest row's event time (unix seconds)."""
        cfg = self._feature_store
        if cfg is None or not cfg.online_store_path.exists():
            return {}
        prefix = f"{cfg.project}_"
        newest: dict[str, float] = {}
        conn = sqlite3.connect(f"file:{cfg.online_store_path}?mode=ro", uri=True)
        try:
            tables = [
                str(row[0])
                for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
                if str(row[0]).startswith(prefix)
            ]
            for table in tables:
                (value,) = conn.execute(f'SELECT MAX(event_ts) FROM "{table}"').fetchone()
                seconds = _parse_time(value)
                if seconds is not None:
                    newest[table.removeprefix(prefix)] = seconds
        finally:
            conn.close()
        return newest


def _feature_ttls() -> dict[str, float]:
    """The TTL of each feature view that has one (seconds)."""
    try:
        from feature_store.views import WINDOW_VIEWS
    except Exception:
        return {}
    return {view.name: view.ttl_days * 86_400.0 for view in WINDOW_VIEWS}


def _reported(report: Any, key: str) -> float:
    """A number the learner reports as ``report.<key>`` or ``report.extra[key]``; else 0."""
    if report is None:
        return 0.0
    value = getattr(report, key, None)
    if value is None:
        value = (getattr(report, "extra", None) or {}).get(key)
    try:
        return float(value) if value is not None else 0.0
    except (TypeError, ValueError):
        return 0.0


class _Totals:
    """Counters summed over replica snapshots."""

    def __init__(self) -> None:
        self.codes: Counter[str] = Counter()
        self.latency_counts = [0] * (len(RANK_BUCKETS) + 1)
        self.latency_sum = 0.0
        self.fallbacks: Counter[str] = Counter()

    def add_snapshot(self, snap: Mapping[str, Any]) -> None:
        for code, n in (snap.get("codes") or {}).items():
            self.codes[str(code)] += int(n)
        latency = snap.get("rank_latency") or {}
        for i, n in enumerate(latency.get("counts", ())[: len(self.latency_counts)]):
            self.latency_counts[i] += int(n)
        self.latency_sum += float(latency.get("sum", 0.0))
        self.fallbacks.update({str(k): int(v) for k, v in (snap.get("fallbacks") or {}).items()})

    def add_totals(self, other: _Totals) -> None:
        self.codes.update(other.codes)
        self.latency_counts = [a + b for a, b in zip(self.latency_counts, other.latency_counts, strict=True)]
        self.latency_sum += other.latency_sum
        self.fallbacks.update(other.fallbacks)


def _breaker_state(report: Any) -> str:
    """The breaker's state from the learner report, ``closed`` when it reports none."""
    if report is None:
        return "closed"
    breaker = getattr(report, "breaker", None)
    state = getattr(breaker, "state", None)
    if state is None and isinstance(breaker, Mapping):
        state = breaker.get("state")
    if state is None:
        state = (getattr(report, "extra", None) or {}).get("breaker_state")
    if isinstance(state, (int, float)):  # a numeric code: 0 closed, 1 open, 2 half-open
        return {0: "closed", 1: "open", 2: "half_open"}.get(int(state), "closed")
    value = str(getattr(state, "value", state or "closed")).lower().replace("-", "_")
    return value if value in ("closed", "open", "half_open") else "closed"


def _parse_time(value: Any) -> float | None:
    """Unix seconds from a datetime, an ISO string (naive = UTC) or a number; else None."""
    if value is None:
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return None
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value.timestamp()
    return None


# ------------------------------------------------------------------------ the HTTP endpoint

@dataclass
class MetricsServer:
    """A running metrics endpoint (``http://host:port/metrics``)."""

    host: str
    port: int
    _server: Any
    _thread: Any

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def serve_metrics(hub: MetricsHub, host: str = "127.0.0.1", port: int = 0) -> MetricsServer | None:
    """Expose ``hub`` on ``http://host:port/metrics`` (0 picks a free port).

    Returns None, having logged why, when the port cannot be bound: metrics must never stop
    the application from serving.
    """
    from prometheus_client import CollectorRegistry, start_http_server

    registry = CollectorRegistry(auto_describe=False)
    registry.register(hub)
    try:
        server, thread = start_http_server(port, addr=host, registry=registry)
    except OSError as error:
        logger.error("metrics endpoint %s:%d not started: %s", host, port, error)
        return None
    bound = int(server.server_port)
    logger.info("Prometheus metrics on http://%s:%d/metrics", host, bound)
    return MetricsServer(host, bound, server, thread)
