"""The real Serve app with a trained base, for tests that drive it through gRPC.

A trained workspace is a simulated log, Feast (local provider) applied and materialized and
a base trained and promoted. Building one costs a ``feast apply``, a materialization and a
fit; copying one costs milliseconds. So ``trained_workspace`` builds each distinct workspace
(simulated log x base/feature settings) once per test session, in a private template
folder, and copies it into the caller's folder (rewriting the template's absolute paths in
Feast's registry and yaml; any other file naming the template is refused). The template is
never served from and is removed at exit.

``running_system`` copies the shared workspace and starts the Serve app with its gRPC proxy
and the online learner under a random ingress token (``serving.auth.session_token``) that the
returned client sends; each call gets a fresh app and a fresh copy (its own registry, served
log and learner state). At the end the app is removed (``serving.app.remove``) and Serve's
controller and proxies stay up: the next app in the session joins them (~5 s less a start). Used as a package fixture by tests/serving/grpc_app/ and
tests/faults/hostile/ (two modules share each app), as a module fixture by
tests/faults/test_switches.py, test_learner_dead.py and tests/serving/test_live_loop.py (each
stops what it started);
tests/serving/test_observability.py and tests/faults/test_durability.py start their own app
on ``trained_workspace(settings, serving_simulator())``, the same trained workspace, and
tests/faults/test_breaker_live.py on a ``fault_simulator()`` log.
New tests: use these, so the session trains no extra base.
"""

from __future__ import annotations

import atexit
import dataclasses
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
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

#: The base every serving test trains: one small epoch, the constant-model gate off.
FAST_BASE = {"train_days": 2, "epochs": 1, "min_gain_vs_constant": -1.0}

#: Ports chosen by the OS, fast weight polling: what every test app uses.
TEST_SERVING = {"grpc_port": 0, "http_port": 0, "metrics_port": 0, "weight_poll_seconds": 0.2}


@dataclass(frozen=True)
class Trained:
    """A trained workspace copied into a test's folder (``trained_workspace``)."""

    events: pa.Table  # the whole simulated log
    as_of: datetime  # the base was trained on events before this; replay from here
    base_version: str  # the promoted base

    @property
    def replay(self) -> pa.Table:
        """The events after the base's training data."""
        from serving.pipeline import slice_events

        return slice_events(self.events, self.as_of, None)


_TEMPLATES: dict[str, tuple[Path, Trained]] = {}
_TEMPLATE_ROOT: list[Path] = []


def _template_root() -> Path:
    if not _TEMPLATE_ROOT:
        root = Path(tempfile.mkdtemp(prefix="freshrank-trained-"))
        atexit.register(shutil.rmtree, root, True)
        _TEMPLATE_ROOT.append(root)
    return _TEMPLATE_ROOT[0]


def _template_key(settings: Settings, simulator: Any, days_before_replay: int) -> str:
    """What a trained workspace is a function of: the log, the cut, and the settings
    ``prepare_base`` reads (the feature store's and the base's; never the workspace)."""
    store = dataclasses.replace(settings.feature_store, workspace=Path("/"))
    return repr((simulator, days_before_replay, store, settings.base_model))


def trained_workspace(
    settings: Settings, simulator: Any, days_before_replay: int = 3
) -> Trained:
    """``settings.workspace`` becomes a workspace with ``simulator``'s log, features applied
    and materialized up to the cut (midnight ``days_before_replay`` days after the log's
    start), and a base trained (locally) and promoted on the days before it.

    Built once per session for each distinct (log, cut, feature/base settings), copied
    afterwards: the copy is the caller's own (nothing is shared on disk), so a test may
    change it freely. ``settings.workspace`` must be empty or absent.
    """
    from feature_store.simulate import simulate
    from serving.pipeline import prepare_base

    key = _template_key(settings, simulator, days_before_replay)
    if key not in _TEMPLATES:
        # A new folder each try: a build that failed half-way is never reused.
        template = Path(tempfile.mkdtemp(prefix="ws-", dir=_template_root()))
        template_settings = dataclasses.replace(
            settings,
            feature_store=dataclasses.replace(settings.feature_store, workspace=template),
        )
        events = simulate(simulator)
        start = events.column("ts")[0].as_py()
        as_of = (start + timedelta(days=days_before_replay)).replace(
            hour=0, minute=0, second=0, microsecond=0
        )
        base = prepare_base(template_settings, events, as_of, backend="local")
        _TEMPLATES[key] = (template, Trained(events, as_of, base.version))
    template, trained = _TEMPLATES[key]
    copy_workspace(template, settings)
    return trained


def copy_workspace(source: Path, settings: Settings) -> None:
    """Copy the workspace ``source`` to ``settings.workspace`` and point the copy's Feast
    registry and yaml at the copy. Refuses (AssertionError) a copy in which any file still
    names ``source``: a copy must never read or write its template."""
    from feast.protos.feast.core.FeatureView_pb2 import FeatureView
    from feast.protos.feast.core.LabelView_pb2 import LabelView
    from feast.protos.feast.core.OnDemandFeatureView_pb2 import OnDemandFeatureView
    from feast.protos.feast.core.Registry_pb2 import Registry
    from feast.protos.feast.core.StreamFeatureView_pb2 import StreamFeatureView

    from feature_store.repo import write_feast_yaml

    VIEW_PROTOS: dict[str, Any] = {  # noqa: N806 - Feast's names for its view types (proto_registry_utils)
        "feature_view": FeatureView,
        "stream_feature_view": StreamFeatureView,
        "on_demand_feature_view": OnDemandFeatureView,
        "label_view": LabelView,
    }
    dest = settings.workspace
    if dest.exists():
        assert not any(dest.iterdir()), f"{dest} is not empty"
    shutil.copytree(source, dest, dirs_exist_ok=True)
    registry_path = settings.feature_store.registry_path
    registry = Registry.FromString(registry_path.read_bytes())
    _rebase_strings(registry, str(source), str(dest))
    for record in registry.feature_view_version_history.records:  # views kept as bytes
        view = VIEW_PROTOS[record.feature_view_type].FromString(record.feature_view_proto)
        _rebase_strings(view, str(source), str(dest))
        record.feature_view_proto = view.SerializeToString()
    registry_path.write_bytes(registry.SerializeToString())
    write_feast_yaml(settings.feature_store)
    old = str(source).encode()
    stale = [p for p in dest.rglob("*") if p.is_file() and old in p.read_bytes()]
    assert not stale, f"files of the copy still name the template {source}: {stale}"


def _rebase_strings(message: Any, old: str, new: str) -> None:
    """Replace ``old`` by ``new`` in every string field of a protobuf message, recursively
    (Feast's registry names the workspace in sources, views and infra objects)."""
    for field, value in message.ListFields():
        if field.type == field.TYPE_MESSAGE:
            if field.message_type.GetOptions().map_entry:
                value_field = field.message_type.fields_by_name["value"]
                for key in list(value):
                    if value_field.type == field.TYPE_MESSAGE:
                        _rebase_strings(value[key], old, new)
                    elif value_field.type == field.TYPE_STRING:
                        value[key] = value[key].replace(old, new)
            elif field.is_repeated:
                for item in value:
                    _rebase_strings(item, old, new)
            else:
                _rebase_strings(value, old, new)
        elif field.type == field.TYPE_STRING:
            if field.is_repeated:
                value[:] = [text.replace(old, new) for text in value]
            else:
                setattr(message, field.name, value.replace(old, new))


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


def serving_simulator(impressions_per_day: int = 4_000) -> Any:
    """The simulated log of the serving tests: 4 days, 400 users, 120 new items a day (smaller
    logs trip the base's data gates)."""
    from feature_store.simulate import SimulatorConfig

    return SimulatorConfig(
        seed=3, days=4, impressions_per_day=impressions_per_day, n_users=400, items_per_day=120
    )


def fault_simulator(seed: int = 5) -> Any:
    """The simulated log of the live fault tests (breaker, manipulation): 6 days, 300 users, 60
    new items a day, so three days of replay after the base's cut."""
    from feature_store.simulate import SimulatorConfig

    return SimulatorConfig(
        seed=seed, days=6, impressions_per_day=5_000, n_users=300, items_per_day=60
    )


@contextmanager
def running_system(
    workspace: Any,
    serving: dict[str, Any] | None = None,
    impressions_per_day: int = 4_000,
) -> Iterator[System]:
    from serving import app
    from serving.auth import session_token

    settings = load_settings(
        workspace=workspace,
        overrides={
            "serving": {**TEST_SERVING, **(serving or {})},
            "base_model": FAST_BASE,
            "online_layer": FAST_ONLINE,
        },
    )
    trained = trained_workspace(settings, serving_simulator(impressions_per_day))
    with session_token() as token:
        running = app.start(settings)
        client = RankerClient(running.grpc_address, running.app_name)
        try:
            client.wait_ready()
            yield System(
                settings,
                client,
                trained.replay,
                trained.base_version,
                running.grpc_address,
                running.app_name,
                token,
                int(running.grpc_address.rsplit(":", 1)[1]),
            )
        finally:
            client.close()
            app.remove(running.app_name)  # Serve itself stays up for the next module's app


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
