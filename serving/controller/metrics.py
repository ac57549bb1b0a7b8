"""The controller's Prometheus metrics (``infra/monitoring/metrics.txt``, exporter
"controller"), counted from each finished cycle's summary.

- ``freshrank_canary_aborted_total``: cycles that ended ``aborted`` in the canary step.
- ``freshrank_base_train_runs_total{outcome}``: trainings by what came of them: ``blocked``
  (the data gates) and ``failed`` (an error, a timeout, a job gone) in the training step;
  ``rejected`` (its gates) and ``promoted`` after it. A cycle that never trained (nothing
  fired, no data to check) is not a training run.
- ``freshrank_base_train_last_success_timestamp_seconds``: when the last cycle whose training
  was promoted or rejected by its gates ended (a training that ran to its verdict).

Exported on ``http://<[controller] metrics_host>:<metrics_port>/metrics`` while ``freshrank
run`` runs, when ``metrics_port`` is set (0: not exported).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from datetime import datetime
from typing import Any

__all__ = ["METRICS", "ControllerMetrics"]

logger = logging.getLogger(__name__)

METRICS = (
    "freshrank_canary_aborted_total",
    "freshrank_base_train_runs_total",
    "freshrank_base_train_last_success_timestamp_seconds",
)


class ControllerMetrics:
    """The three metrics on a registry of their own.

    Plain counts exposed by a collector (``collect``), not ``prometheus_client`` metric
    objects: those pick their value storage when the library is first imported, and a
    process that imported it with ``PROMETHEUS_MULTIPROC_DIR`` set (Feast's metrics; the
    ``freshrank`` command sets one for it, then removes it) cannot create them afterwards.
    """

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry

        self._lock = threading.Lock()
        self._aborted = 0
        self._runs: dict[str, int] = {}
        self._success: float | None = None
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(self)
        self.port: int | None = None

    def observe(self, summary: dict[str, Any]) -> None:
        outcome, step = summary.get("outcome"), summary.get("step")
        with self._lock:
            if outcome == "aborted" and step == "canary":
                self._aborted += 1
            if step == "training" and outcome in ("blocked", "failed", "abandoned"):
                key = "blocked" if outcome == "blocked" else "failed"
                self._runs[key] = self._runs.get(key, 0) + 1
            elif outcome in ("promoted", "rejected"):
                self._runs[str(outcome)] = self._runs.get(str(outcome), 0) + 1
                self._success = datetime.fromisoformat(str(summary["ended_at"])).timestamp()

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        with self._lock:
            aborted, runs, success = self._aborted, dict(self._runs), self._success
        family = CounterMetricFamily("freshrank_canary_aborted", "canaries aborted")
        family.add_metric([], aborted)
        yield family
        by_outcome = CounterMetricFamily("freshrank_base_train_runs", "base trainings by outcome",
                                         labels=["outcome"])
        for outcome, n in sorted(runs.items()):
            by_outcome.add_metric([outcome], n)
        yield by_outcome
        gauge = GaugeMetricFamily("freshrank_base_train_last_success_timestamp_seconds",
                                  "end of the last training promoted or rejected by its gates")
        if success is not None:
            gauge.add_metric([], success)
        yield gauge

    def serve(self, host: str, port: int) -> int:
        """Start the endpoint (a daemon thread); returns the port bound."""
        from prometheus_client import start_http_server

        server, _ = start_http_server(port, addr=host, registry=self.registry)
        self.port = int(server.server_port)
        logger.info("controller metrics on http://%s:%d/metrics", host, self.port)
        return self.port

    def text(self) -> str:
        from prometheus_client import generate_latest

        return generate_latest(self.registry).decode()
