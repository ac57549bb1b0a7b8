"""The Learner deployment: the online learner for the champion base, one replica.

Wraps ``online_layer.learner.OnlineLearner``; takes feedback (logged, fsynced, before
``accepted`` is answered: ``serving.durability``), follows the Ranker replicas' served logs,
pushes fresh item counters to the feature store, persists ready snapshots, holds the
operator controls (``serving.admin``) and serves the app's Prometheus endpoint
(``serving.metrics_hub``). On start it replays what its last snapshot lacks.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
from ray import serve

from protos.errors import FailedPrecondition, NotFound
from serving import metrics_hub, observability
from serving.errors import NotReady
from serving.settings import Settings

if TYPE_CHECKING:
    from protos.registry import ModelVersion
    from feature_store.push import FreshCounterPusher
    from online_layer.join import ServedRecord
    from online_layer.learner import LearnerReport, PublishedSnapshot, ServingView

logger = logging.getLogger(__name__)


def champion_base(settings: Settings) -> ModelVersion:
    from protos.registry import ModelRegistry

    champion = ModelRegistry(settings.registry_dir).champion("base")
    if champion is None:
        raise NotReady(
            f"no champion base model in {settings.registry_dir}: train one first "
            "(freshrank train ...)"
        )
    return champion


@serve.deployment(name="Learner", num_replicas=1, max_ongoing_requests=256)
class Learner:
    """The online learner for the champion base (one replica: it owns the weights)."""

    def __init__(self, settings: Settings) -> None:
        from base_model.artifact import BaseScorer
        from protos.registry import ModelRegistry
        from protos.code_version import code_version
        from feature_store.push import FreshCounterPusher
        from online_layer.learner import OnlineLearner
        from serving.durability import DurableSink, LearnerDurability, StrictClock
        from serving.snapshots import RegistrySnapshotSink, champion_snapshot

        observability.configure_replica_logging()
        registry = ModelRegistry(settings.registry_dir)
        champion = champion_base(settings)
        base = BaseScorer.load(champion.path)
        from serving.known_users import KnownUsers

        known_users = KnownUsers(base.users)  # each promoted base's users join (BaseSwitch)
        # Durability (serving.served_log): the sink's lineage records which logged feedback
        # a snapshot covers; on start the learner replays what its snapshot lacks.
        from serving.version_sequence import VersionSequence, sequence_path

        clock = StrictClock()
        sink = DurableSink(RegistrySnapshotSink(registry, code_version()), registry)
        self._learner = OnlineLearner(
            settings.online_layer,
            base_version=base.version,
            embedding_dim=base.embedding_dim,
            snapshot_sink=sink,
            clock=clock,
            # Users the bases were trained on are established: the manipulation guard never
            # counts them as new, so a restart does not make every real user a stranger.
            established_users=known_users,
            sequencer=VersionSequence(sequence_path(settings.workspace)),  # never repeats
        )
        resumed = champion_snapshot(registry, base.version)
        covered = None
        if resumed is not None:
            self._learner.model.restore(resumed[1], base.version)
            online = registry.champion("online")
            covered = online.lineage.get("durability") if online is not None else None
            logger.info("learner resumed from online snapshot %s", resumed[0])
        self._durability = LearnerDurability(settings.workspace, self._learner, clock)
        from serving.admin import audit_path as _audit_path
        from serving.base_switch import BaseSwitch

        # Before the replay: a canary in the saved plan gets its layer back from the logs.
        self._switch = BaseSwitch(settings, registry, self._learner, self._durability,
                                  _audit_path(settings.workspace), known_users)
        self._durability.start(covered)
        sink.durability = self._durability
        self._counters = _CounterPushLoop(
            FreshCounterPusher(settings.feature_store), settings.serving.fresh_push_seconds
        )
        self._background = _LearnerBackground(self._durability, settings)
        self._learner.start_ticker()
        from serving.admin import Controls, audit_path

        self._settings = settings
        self._controls = Controls(audit_path(settings.workspace), settings.serving.online_enabled)
        self._hub = metrics_hub.MetricsHub(
            self.report,  # the learner's report with the durability counters and the event log's lag
            settings.feature_store,
            online_ttl_s=settings.serving.online_ttl_seconds,
        )
        self._metrics_server = metrics_hub.serve_metrics(
            self._hub, settings.serving.host, settings.serving.metrics_port
        )

    def observe_replica(self, snapshot: dict[str, Any]) -> None:
        """A Ranker replica's metrics (``RankerMetrics.snapshot``), sent with its weight poll."""
        self._hub.update(snapshot)

    def metrics_address(self) -> str:
        """``host:port`` of the Prometheus endpoint, "" while it is not bound."""
        return self._metrics_server.address

    def record_served(self, records: list[ServedRecord]) -> int:
        return self._learner.record_served(records)

    def feedback(self, events: pa.Table) -> dict[str, Any]:
        # Joined, learned, and (if accepted) fsynced to the feedback log before the reply.
        result = self._durability.feedback(events)
        if result.rejected is None:
            # Poisoned batches teach nothing: not the layer, not the fresh counters; nor
            # do users the manipulation guard counts as new move the live counters.
            trusted = self._learner.established_users(events.column("user_id").to_pylist())
            if trusted.all():
                self._counters.add(events)
            elif trusted.any():
                self._counters.add(events.filter(pa.array(trusted)))
        return {
            "accepted": result.accepted,
            "dropped": result.dropped,
            "rejected": result.rejected or "",
            "detail": result.detail,
        }

    def latest_snapshot(self, known_version: str | None) -> PublishedSnapshot | None:
        """The newest ready snapshot, or None when the caller already has it (or none, or
        the circuit breaker is not closed)."""
        snapshot = self._learner.latest_snapshot()
        if snapshot is None or snapshot.version == known_version:
            return None
        return snapshot

    def serving_view(self, known_version: str | None) -> ServingView:
        """The Ranker replicas' weight poll: withhold the layer (breaker not closed), or a
        newer ready snapshot to install (``OnlineLearner.serving_view``)."""
        return self._learner.serving_view(known_version)

    def report(self) -> LearnerReport:
        from dataclasses import replace

        report = self._learner.report()
        from serving.durability import COUNTERS_MAX_AGE_S

        from serving.served_events import event_log_lag_seconds

        counters = self._durability.counters(max_age_s=COUNTERS_MAX_AGE_S)
        durable = {f"durable_{k}": float(v) for k, v in counters.items()}
        try:
            lag = float(event_log_lag_seconds(self._settings.feature_store.events_dir))
        except Exception:  # a torn part file must not fail Status
            logger.exception("could not read the event log's lag")
            lag = -1.0
        return replace(report, extra={**report.extra, **durable, "event_log_lag_s": lag})

    def durability(self) -> dict[str, int]:
        """accepted == learned + pending (over restarts), replayed, replay_lost, sequences."""
        return self._durability.counters()

    def flush(self) -> int:
        return self._learner.flush()

    # -- operator actions (serving.admin): in place, audited, followed by every Ranker ------

    def admin_controls(self, known_serial: str | None) -> dict[str, Any] | None:
        """The operator controls, or None when the caller already has ``known_serial``."""
        return self._controls.view(known_serial)

    def admin_set_online_enabled(self, enabled: bool, reason: str, actor: str) -> dict[str, Any]:
        return self._controls.set_enabled(enabled, reason, actor)

    def admin_set_exploration(self, changes: dict[str, Any], reason: str, actor: str) -> dict[str, Any]:
        """Change the exploration policy (``serving.exploration``): ``changes`` over the current."""
        from serving.exploration import changed_policy

        old, new = changed_policy(self._controls.exploration, self._settings.serving, changes)
        return self._controls.set_exploration(new.to_dict(), old.describe(), new.describe(), reason, actor)

    def admin_rollback(self, to_version: str, reason: str, actor: str) -> dict[str, Any]:
        """Restore the last ready snapshot (``to_version`` empty) or a registry online
        version of this base, publish it, and pin it for every Ranker replica."""
        from protos.registry import ModelRegistry, UnknownVersionError
        from serving.snapshots import SNAPSHOT_FILE

        learner = self._learner
        pinned = self._controls.pinned
        previous = learner.latest_version() or (pinned.version if pinned is not None else "")
        extra: dict[str, Any] = {}
        if not to_version:
            restored = learner.rollback()
            if restored is None:
                raise FailedPrecondition(
                    "the learner has no ready snapshot to roll back to: name a registry "
                    "online version (to_version)"
                )
            current = restored
        else:
            registry = ModelRegistry(self._settings.registry_dir)
            try:
                version = registry.get("online", to_version)
            except UnknownVersionError as error:
                raise NotFound(str(error)) from None
            base = version.lineage.get("base_version")
            if base != learner.base_version:
                raise FailedPrecondition(
                    f"{to_version} corrects base {base!r}, the serving base is "
                    f"{learner.base_version!r}: a mismatched pair is never served"
                )
            blob = (Path(version.path) / SNAPSHOT_FILE).read_bytes()
            # The learner's lock: its ticker must not learn into a half-restored model.
            with learner._lock:
                learner.model.restore(blob, learner.base_version)
            registry.promote("online", to_version, reason=f"rollback by {actor}: {reason}")
            current = to_version
        snapshot = learner.publish()  # the restored weights, as replicas install them
        extra["published_as"] = snapshot.version
        return self._controls.rolled_back(previous, current, snapshot, reason, actor, **extra)

    # -- the live loop (serving.base_switch): in place, audited, followed by every Ranker ----

    def plan_view(self, known_serial: str | None) -> dict[str, Any] | None:
        """The serving plan (and a rollback's pinned snapshot), or None if ``known_serial``."""
        return self._switch.view(known_serial)

    def layer_view(self, base_version: str, known_version: str | None) -> ServingView | None:
        """The weight poll for the layer of ``base_version`` (champion or canary)."""
        return self._switch.layer_view(base_version, known_version)

    def observe_shadow(self, replica: str, stats: dict[str, Any]) -> None:
        self._switch.observe_shadow(replica, stats)

    def candidate_report(self) -> dict[str, Any]:
        return self._switch.report()

    def admin_stage(self, version: str, phase: str, share: float, reason: str, actor: str) -> dict[str, Any]:
        return self._switch.stage(version, phase, share, reason, actor)

    def admin_promote(self, version: str, reason: str, actor: str) -> dict[str, Any]:
        return self._switch.promote(version, reason, actor)

    def admin_rollback_base(self, to_version: str, reason: str, actor: str) -> dict[str, Any]:
        return self._switch.rollback(to_version, reason, actor)

    def admin_abort_candidate(self, reason: str, actor: str) -> dict[str, Any]:
        return self._switch.abort(reason, actor)

    def __del__(self) -> None:
        background = getattr(self, "_background", None)
        if background is not None:
            background.stop()
        learner = getattr(self, "_learner", None)
        if learner is not None:
            learner.stop_ticker()
        counters = getattr(self, "_counters", None)
        if counters is not None:
            counters.stop()
        durability = getattr(self, "_durability", None)
        canary = getattr(durability, "canary", None)
        if canary is not None:
            canary.stop_ticker()
        metrics_server = getattr(self, "_metrics_server", None)
        if metrics_server is not None:
            metrics_server.stop()


class _LearnerBackground:
    """Follows the replicas' served logs every ``INGEST_SECONDS`` and compacts the logs
    into the event log every ``COMPACT_SECONDS`` (daemon threads)."""

    def __init__(self, durability: Any, settings: Settings) -> None:
        from serving.served_log import INGEST_SECONDS

        self._durability = durability
        self._settings = settings
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._every, args=(INGEST_SECONDS, self._ingest),
                             name="served-ingest", daemon=True),
            threading.Thread(target=self._every, args=(settings.serving.compact_seconds, self._compact),
                             name="served-compact", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def _every(self, interval: float, job: Any) -> None:
        while not self._stop.wait(interval):
            try:
                job()
            except Exception:
                logger.exception("%s failed; retrying", threading.current_thread().name)

    def _ingest(self) -> None:
        self._durability.ingest_served()

    def _compact(self) -> None:
        from serving.served_events import compact_served_log

        compact_served_log(
            self._settings.workspace,
            self._settings.feature_store.events_dir,
            self._settings.online_layer.join_window_s,
        )

    def stop(self) -> None:
        self._stop.set()


class _CounterPushLoop:
    """Feeds accepted feedback to the fresh-counter pusher off the request path.

    A Feast push is a write to the online store (tens of milliseconds); doing it per
    Feedback call would make every call pay it. Feedback is queued and pushed, coalesced,
    every ``interval_s`` by a daemon thread: serving sees a breaking item's counters within
    about that interval.
    """

    def __init__(self, pusher: FreshCounterPusher, interval_s: float) -> None:
        self._pusher = pusher
        self._interval = interval_s
        self._queue: list[pa.Table] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fresh-counters", daemon=True)
        self._thread.start()

    def add(self, events: pa.Table) -> None:
        with self._lock:
            self._queue.append(events)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.push_now()

    def push_now(self) -> int:
        with self._lock:
            batch, self._queue = self._queue, []
        if not batch:
            return 0
        try:
            return int(self._pusher.observe(pa.concat_tables(batch)))
        except Exception:
            logger.exception("pushing fresh counters failed; they catch up with the next push")
            return 0

    def stop(self) -> None:
        self._stop.set()
