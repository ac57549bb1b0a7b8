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
    """The three metrics on a registry of their own."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge

        self.registry = CollectorRegistry(auto_describe=True)
        self._aborted = Counter("freshrank_canary_aborted", "canaries aborted", registry=self.registry)
        self._runs = Counter("freshrank_base_train_runs", "base trainings by outcome", ["outcome"],
                             registry=self.registry)
        self._success = Gauge("freshrank_base_train_last_success_timestamp_seconds",
                              "end of the last training promoted or rejected by its gates",
                              registry=self.registry)
        self.port: int | None = None

    def observe(self, summary: dict[str, Any]) -> None:
        outcome, step = summary.get("outcome"), summary.get("step")
        if outcome == "aborted" and step == "canary":
            self._aborted.inc()
        if step == "training" and outcome in ("blocked", "failed", "abandoned"):
            self._runs.labels("blocked" if outcome == "blocked" else "failed").inc()
        elif outcome in ("promoted", "rejected"):
            self._runs.labels(outcome).inc()
            self._success.set(datetime.fromisoformat(str(summary["ended_at"])).timestamp())

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
