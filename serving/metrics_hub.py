"""The metrics hub: every exported number, in the Learner replica, on one HTTP endpoint.

Ranker replicas count into ``serving.observability.RankerMetrics`` and send its snapshot to
the Learner with their weight poll; ``MetricsHub`` (a prometheus-client collector) sums them,
adds the learner's report and a probe of the online store at scrape time, and
``serve_metrics`` exposes it. The names are ``serving.observability.METRICS``; why one
process and not Prometheus' multiprocess mode is in ``serving.observability``'s docstring.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from serving.observability import METRICS, PROBE_CACHE_SECONDS, RANK_BUCKETS, REPLICA_TTL_SECONDS

if TYPE_CHECKING:
    from feature_store.config import FeatureStoreConfig

logger = logging.getLogger(__name__)

__all__ = ["MetricsHub", "MetricsServer", "serve_metrics"]


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

class MetricsServer:
    """The Prometheus endpoint (``http://host:port/metrics``) of a ``MetricsHub``.

    The first bind is tried at once; if the port is taken (a redeployed Learner starts while
    the old one, still draining, holds it), a daemon thread retries every second for
    ``retry_s``, then gives up with an error in the log. Metrics never stop serving.
    """

    def __init__(self, hub: MetricsHub, host: str, port: int, *, retry_s: float = 60.0) -> None:
        from prometheus_client import CollectorRegistry

        self.host = host
        self.wanted_port = port
        self.port: int | None = None
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(hub)
        self._server: Any = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        if not self._try_bind(log_failure=retry_s <= 0) and retry_s > 0:
            threading.Thread(
                target=self._retry, args=(retry_s,), name="metrics-bind", daemon=True
            ).start()

    @property
    def address(self) -> str:
        """``host:port`` once bound, else ""."""
        return "" if self.port is None else f"{self.host}:{self.port}"

    def _try_bind(self, *, log_failure: bool) -> bool:
        from prometheus_client import start_http_server

        with self._lock:
            if self._stop.is_set():
                return True
            try:
                server, _ = start_http_server(self.wanted_port, addr=self.host, registry=self._registry)
            except OSError as error:
                if log_failure:
                    logger.error(
                        "metrics endpoint %s:%d not started: %s", self.host, self.wanted_port, error
                    )
                return False
            self._server = server
            self.port = int(server.server_port)
        logger.info("Prometheus metrics on http://%s:%d/metrics", self.host, self.port)
        return True

    def _retry(self, retry_s: float) -> None:
        deadline = time.monotonic() + retry_s
        while not self._stop.wait(1.0):
            last = time.monotonic() >= deadline
            if self._try_bind(log_failure=last) or last:
                return

    def stop(self) -> None:
        with self._lock:
            self._stop.set()
            server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()


def serve_metrics(
    hub: MetricsHub, host: str = "127.0.0.1", port: int = 0, *, retry_s: float = 60.0
) -> MetricsServer:
    """Expose ``hub`` on ``http://host:port/metrics`` (0 picks a free port); see
    ``MetricsServer`` for what happens when the port is taken."""
    return MetricsServer(hub, host, port, retry_s=retry_s)
