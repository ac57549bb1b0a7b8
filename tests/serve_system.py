"""The real Serve app with a trained base, for tests that drive it through gRPC.

One call builds a workspace: a simulated log, Feast (local provider) applied and
materialized, a base trained and promoted, and the Serve app with its gRPC proxy and the
online learner, started under a random ingress token (``serving.auth.session_token``) that
the returned client sends. Used as a module fixture by tests/serving/test_grpc_app.py,
test_fuzz.py and tests/faults/test_switches.py (each stops what it started).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from serving.client import RankerClient
from serving.settings import Settings, load_settings

FAST_ONLINE = {
    "emit": "on_arrival",
    "batch_size": 64,
    "max_batch_delay_s": 0.2,
    "publish_every_batches": 1,
    "publish_every_s": 0.2,
    "readiness_min_examples": 64,
    "readiness_window": 2_000,
    "readiness_tolerance": 10.0,
    "readiness_auc_tolerance": 1.0,
}


@dataclass
class System:
    settings: Settings
    client: RankerClient
    events: pa.Table  # events after the base's training data, for replay
    base_version: str
    address: str  # the gRPC proxy, for calls the typed client cannot make
    app_name: str
    token: str
    port: int


@contextmanager
def running_system(
    workspace: Any,
    serving: dict[str, Any] | None = None,
    impressions_per_day: int = 4_000,
) -> Iterator[System]:
    from feature_store.simulate import SimulatorConfig, simulate
    from serving import app
    from serving.auth import session_token
    from serving.pipeline import prepare_base, slice_events

    settings = load_settings(
        workspace=workspace,
        overrides={
            "serving": {"grpc_port": 0, "http_port": 0, "metrics_port": 0, "weight_poll_seconds": 0.2, **(serving or {})},
            "base_model": {"train_days": 2, "epochs": 1, "min_gain_vs_constant": -1.0},
            "online_layer": FAST_ONLINE,
        },
    )
    events = simulate(
        SimulatorConfig(
            seed=3, days=4, impressions_per_day=impressions_per_day, n_users=400, items_per_day=120
        )
    )
    start = events.column("ts")[0].as_py()
    as_of = (start + timedelta(days=3)).replace(hour=0, minute=0, second=0, microsecond=0)
    base = prepare_base(settings, events, as_of, backend="local")
    with session_token() as token:
        running = app.start(settings)
        client = RankerClient(running.grpc_address, running.app_name)
        try:
            client.wait_ready()
            yield System(
                settings,
                client,
                slice_events(events, as_of, None),
                base.version,
                running.grpc_address,
                running.app_name,
                token,
                int(running.grpc_address.rsplit(":", 1)[1]),
            )
        finally:
            client.close()
            app.stop()


def requests_of(events: pa.Table, limit: int) -> list[pa.Table]:
    """The first ``limit`` logged requests (each its rows), in log order."""
    ids = events.column("request_id").unique()[:limit]
    return [events.filter(pc.equal(events.column("request_id"), rid)) for rid in ids]


FEEDBACK_SCHEMA = pa.schema([
    ("request_id", pa.string()), ("user_id", pa.string()), ("item_id", pa.string()),
    ("ts", pa.timestamp("us", tz="UTC")), ("label", pa.float32()), ("position", pa.int32()),
])


def send_feedback(client: RankerClient, rows: list[dict[str, Any]]) -> Any:
    """One Feedback call of ``rows`` (dicts of the columns above) through ``RankerClient``,
    which carries the ingress token."""
    return client.feedback(pa.Table.from_pylist(rows, schema=FEEDBACK_SCHEMA))
