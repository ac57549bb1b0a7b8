"""``freshrank demo``: the whole hybrid loop on one machine, end to end, with a report.

1. Events: simulated (``feature_store.simulate``) or the user's file (``--events``).
2. The days before the replay: event log, features, ``feast apply``, materialize, a
   point-in-time training set, and a base model trained with Ray Train (``pipeline``).
3. The Serve application with its gRPC ingress on localhost.
4. Replay of the following days through a real gRPC client: ``Rank`` for every logged
   request (its logged slate as candidates, its logged time as request time), then
   ``Feedback`` with what happened. The online layer learns per mini-batch and its weights
   reach the ranker while the replay runs. At each day boundary the new day's events are
   appended to the event log and features are recomputed and materialized, as a nightly
   job would.
5. A report: per day, base-alone vs hybrid progressive log loss and AUC (each mini-batch
   scored before it is learned), Rank latency, online learning speed, fallbacks.
Everything started is stopped at the end, also on error.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

import grpc

from serving.demo_loop import LiveLoop
from serving.demo_timeline import Timeline
from serving.pipeline import PreparedBase, prepare_base, refresh_features, slice_events
from serving.settings import Settings

if TYPE_CHECKING:
    from online_layer.learner import LearnerReport
    from serving.client import RankerClient

logger = logging.getLogger(__name__)

MARKER = ".freshrank-demo"
# Feedback of this many requests goes in one call, as a service batching its click stream
# would send it (each call fsyncs the served and feedback logs once).
FEEDBACK_BATCH_REQUESTS = 8
# Requests replayed after the live loop's cycle ended (or up to midnight, if sooner): the
# timeline shows serving after the verdict; the days after show nothing new.
AFTER_LOOP_REQUESTS = 300
DEMO_COMPACT_SECONDS = 5.0


@dataclass(frozen=True)
class DemoOptions:
    """What the demo replays and where it keeps its state."""

    workspace: Path
    events: Path | None = None
    replay_days: float = 2.0
    simulate_days: float = 12.0
    # The first base's data ends this many days before the replay: a weekly base is 3.5 days
    # old on average, and a base trained up to the replay leaves a retrained one nothing to
    # gain within the demo's two days (its canaries were never shown non-inferior).
    base_age_days: float = 3.0
    train_backend: str = "ray"  # "local": the same fit in-process (the suite's demo test)
    seed: int = 7
    max_requests: int | None = None
    worker_logs: bool = False  # echo Ray workers' output (training, replicas) to the console
    live_loop: bool = True  # run the live loop (freshrank run's cycle) during the replay
    # End the replay soon after the loop's cycle ended (``AFTER_LOOP_REQUESTS``): the days
    # after it show nothing new, and on 2 cores they kept `make demo` past its 10 minutes.
    stop_after_loop: bool = True

    def __post_init__(self) -> None:
        if self.replay_days <= 0:
            raise ValueError("replay_days must be > 0")
        if self.simulate_days <= self.replay_days:
            raise ValueError("simulate_days must exceed replay_days")
        if not 0 <= self.base_age_days < self.simulate_days - self.replay_days:
            raise ValueError("base_age_days must be >= 0 and leave days to train on")


@dataclass
class DemoReport:
    """What the demo measured (``format`` renders it for people)."""

    events_total: int
    replay_start: datetime
    replay_end: datetime
    base: PreparedBase
    requests: int
    latencies_ms: np.ndarray
    fallbacks: Counter[str]
    learner: LearnerReport
    # Responses scored with published online weights (not a fallback), the distinct
    # versions they carried, and the first such request's index: the proof that what the
    # learner published reached the ranker while the replay ran.
    served_online: int = 0
    online_versions: frozenset[str] = frozenset()
    first_online_request: int | None = None
    feature_refresh_seconds: list[float] = field(default_factory=list)
    replay_seconds: float = 0.0
    grpc_address: str = ""
    timeline: Timeline | None = None

    def format(self) -> str:
        lines = [
            "freshrank demo report",
            "=====================",
            f"events: {self.events_total:,}; replayed {self.requests:,} requests from "
            f"{self.replay_start:%Y-%m-%d %H:%M} to {self.replay_end:%Y-%m-%d %H:%M} UTC "
            f"through gRPC at {self.grpc_address}",
            f"base model: {self.base.version} trained on {self.base.train_rows:,} events "
            f"in {self.base.train_seconds:.1f}s ({'Ray Train' if self.base.backend == 'ray' else 'in-process'}); "
            f"features {self.base.feature_seconds:.1f}s",
            "",
            f"Progressive validation of the serving base's online layer ({self.learner.base_version}'s: "
            "a promotion starts a new layer; every mini-batch scored before it is learned):",
            f"{'day':<12}{'events':>9}{'logloss base':>14}{'logloss hybrid':>16}"
            f"{'AUC base':>10}{'AUC hybrid':>12}",
        ]
        rows = list(self.learner.progressive_by_day) + [self.learner.progressive]
        for summary in rows:
            day = "all" if summary is self.learner.progressive else summary.day
            lines.append(
                f"{day:<12}{summary.examples:>9,}{summary.logloss_base:>14.4f}"
                f"{summary.logloss_hybrid:>16.4f}{_auc(summary.auc_base):>10}"
                f"{_auc(summary.auc_hybrid):>12}"
            )
        overall = self.learner.progressive
        lines.append(f"hybrid log-loss gain over base alone: {100 * overall.logloss_gain:+.2f}%")
        lat = self.latencies_ms
        lines += [
            "",
            f"Rank latency (client, through Serve's gRPC proxy): p50 {np.percentile(lat, 50):.2f} ms, "
            f"p99 {np.percentile(lat, 99):.2f} ms over {lat.size:,} calls",
            f"online updates: {self.learner.batches_learned:,} mini-batches, "
            f"{self.learner.examples_learned:,} examples, "
            f"{self.learner.examples_per_s:,.0f} examples/s while learning; "
            f"{self.learner.published} snapshots published "
            f"(feedback->publish p95 {_seconds(self.learner.publish_latency_p95_s)})",
            f"online weights served: {self.served_online:,} of {self.requests:,} responses, "
            f"{len(self.online_versions)} version(s)"
            + (
                f", from request {self.first_online_request:,} on"
                if self.first_online_request is not None
                else ""
            ),
            f"fallbacks: {sum(self.fallbacks.values()):,} of {self.requests:,} responses"
            + (
                " (" + ", ".join(f"{k}: {v:,}" for k, v in sorted(self.fallbacks.items())) + ")"
                if self.fallbacks
                else ""
            ),
            f"rejected feedback batches: {dict(self.learner.rejected_batches) or 'none'}",
            f"feature refreshes during replay: {len(self.feature_refresh_seconds)} "
            f"({sum(self.feature_refresh_seconds):.1f}s)",
            f"replay wall time: {self.replay_seconds:.1f}s",
        ]
        if self.timeline is not None:
            lines += self.timeline.format()
        return "\n".join(lines)


def _auc(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _seconds(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}s"


def prepare_workspace(path: Path) -> Path:
    """Empty ``path`` for a new demo; refuse a non-empty directory the demo did not make."""
    path = path.expanduser().absolute()
    if path.exists() and any(path.iterdir()):
        if not (path / MARKER).exists():
            raise ValueError(
                f"{path} is not empty and was not made by the demo; pass another --workspace"
            )
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / MARKER).write_text("made by freshrank demo; deleted by the next demo run\n")
    return path


def load_demo_events(options: DemoOptions, progress: Callable[[str], None]) -> pa.Table:
    if options.events is not None:
        from feature_store.events_file import check_trainable, load_events

        progress(f"loading events from {options.events}")
        return check_trainable(load_events(options.events), source=str(options.events))
    from feature_store.simulate import SimulatorConfig, simulate

    config = SimulatorConfig(seed=options.seed, days=options.simulate_days)
    progress(f"simulating {config.days:g} days (seed {config.seed})")
    return simulate(config)


def _requests(replay: pa.Table) -> tuple[list[np.ndarray], np.ndarray]:
    """Row indices of each logged request (in slate order), requests in time order; and
    every row's timestamp in microseconds. Without request ids, one (user, ts) is one request."""
    ts = replay.column("ts").cast(pa.int64()).to_numpy()
    if replay.column("request_id").null_count == replay.num_rows:
        keys = pc.binary_join_element_wise(
            replay.column("user_id"), replay.column("ts").cast(pa.int64()).cast(pa.string()), "@"
        )
    else:
        keys = replay.column("request_id").fill_null("")
    _, codes = np.unique(np.asarray(keys.to_pylist(), dtype=object), return_inverse=True)
    position = replay.column("position").fill_null(0).to_numpy()
    order = np.lexsort((position, ts, codes))
    boundaries = np.flatnonzero(np.diff(codes[order])) + 1
    groups = np.split(order, boundaries)
    groups.sort(key=lambda g: (int(ts[g].min()), int(g[0])))
    items = np.asarray(replay.column("item_id").to_pylist(), dtype=object)
    return [_first_of_each_item(g, items) for g in groups], ts


def _first_of_each_item(rows: np.ndarray, items: np.ndarray) -> np.ndarray:
    """A slate shows an item once: later repeats in a logged group are dropped."""
    _, first = np.unique(items[rows], return_index=True)
    return rows if first.size == rows.size else rows[np.sort(first)]


def run_demo(
    settings: Settings,
    options: DemoOptions,
    progress: Callable[[str], None] = print,
) -> DemoReport:
    """Run the whole loop (see the module docstring) and return its report."""
    import ray
    from ray import serve

    from serving import app
    from serving.auth import session_token
    from serving.client import RankerClient

    # The served log reaches the event log within seconds (the live loop's canary is judged
    # on it), not the minute a production app waits between compactions.
    settings = settings.with_overrides({"serving": {"compact_seconds": DEMO_COMPACT_SECONDS}})
    events = load_demo_events(options, progress)
    ts = events.column("ts")
    first = pc.min(ts).as_py()
    last = pc.max(ts).as_py()
    replay_start = _floor_day(last - timedelta(days=options.replay_days))
    if replay_start <= first:
        raise ValueError("the events span is shorter than the replay: nothing to train on")
    progress(
        f"{events.num_rows:,} events from {first:%Y-%m-%d} to {last:%Y-%m-%d}; "
        f"base trained before {replay_start - timedelta(days=options.base_age_days):%Y-%m-%d}, "
        f"replaying from {replay_start:%Y-%m-%d}"
    )
    started_ray = not ray.is_initialized()
    try:
        if started_ray:
            from protos.ray_local import init_local_ray

            # Ray Train and Serve replicas are chatty; their output stays in Ray's session
            # logs unless asked for, so the console shows the demo's progress and report.
            init_local_ray(address=settings.ray_address, log_to_driver=options.worker_logs)
            if not options.worker_logs:
                progress("Ray workers' logs: /tmp/ray/session_latest/logs (--worker-logs echoes them here)")
        base = prepare_base(settings, events, replay_start, progress=progress,
                            trained_until=replay_start - timedelta(days=options.base_age_days),
                            backend=options.train_backend)
        progress(f"base {base.version} promoted; starting Serve (gRPC on localhost)")
        # Feedback needs the ingress token: a random one for this run unless one is set.
        with session_token(), RankerClient(
            (running := app.start(settings)).grpc_address, running.app_name
        ) as client:
            client.wait_ready()
            report = _replay(settings, options, events, replay_start, last, client, progress)
        report.base = base
        report.events_total = events.num_rows
        report.grpc_address = running.grpc_address
        return report
    finally:
        if serve.context._get_global_client(raise_if_no_controller_running=False) is not None:
            app.stop()
        if started_ray and ray.is_initialized():
            ray.shutdown()


def _floor_day(when: datetime) -> datetime:
    when = when.astimezone(UTC)
    return datetime(when.year, when.month, when.day, tzinfo=UTC)


def _replay(
    settings: Settings,
    options: DemoOptions,
    events: pa.Table,
    replay_start: datetime,
    last: datetime,
    client: RankerClient,
    progress: Callable[[str], None],
) -> DemoReport:
    from ray import serve

    from protos.freshrank.v1 import ranking_pb2

    replay = slice_events(events, replay_start, None)
    groups, ts_us = _requests(replay)
    if options.max_requests is not None:
        groups = groups[: options.max_requests]
    users = replay.column("user_id").to_pylist()
    items = replay.column("item_id").to_pylist()
    latencies = np.empty(len(groups))
    fallbacks: Counter[str] = Counter()
    served_online = 0
    online_versions: set[str] = set()
    first_online: int | None = None
    refreshes: list[float] = []
    labels = replay.column("label").to_numpy(zero_copy_only=False)
    timeline = Timeline()
    loop = LiveLoop(settings, client, timeline, progress) if options.live_loop else None
    day_end = replay_start + timedelta(days=1)
    day_rows: list[np.ndarray] = []
    pending_feedback: list[pa.Table] = []
    started = time.perf_counter()
    replayed = len(groups)
    settled_at: int | None = None  # the request at which the live loop's cycle had ended
    for n, rows in enumerate(groups):
        when = datetime.fromtimestamp(ts_us[rows].min() / 1e6, tz=UTC)
        if options.stop_after_loop and loop is not None and loop.settled:
            settled_at = n if settled_at is None else settled_at
            if when >= day_end or n - settled_at >= AFTER_LOOP_REQUESTS:
                replayed = n
                timeline.note(f"replay stopped at {when:%Y-%m-%d %H:%M}, {n - settled_at:,} requests "
                              f"after the live loop's cycle ended ({n:,} of {len(groups):,} replayed)")
                progress(f"the live loop's cycle ended: replay stopped at {when:%Y-%m-%d %H:%M} "
                         f"({n:,} of {len(groups):,} requests)")
                break
        if when >= day_end:
            _send_feedback(client, pending_feedback)
            refreshes.append(_nightly(settings, replay, day_rows, day_end, progress))
            day_rows = []
            day_end += timedelta(days=1)
            if loop is not None and not loop.started:
                loop.start()  # the weekly cycle, on the demo's daily cadence
        request_id = f"demo-{n}"
        candidates = [items[i] for i in rows]
        t0 = time.perf_counter()
        try:
            response = client.rank(request_id, users[rows[0]], candidates, request_time=when)
        except grpc.RpcError as error:
            latencies[n] = (time.perf_counter() - t0) * 1e3
            timeline.failed(error.code().name if hasattr(error, "code") else "error")
            continue
        latencies[n] = (time.perf_counter() - t0) * 1e3
        label_of = {items[i]: labels[i] for i in rows}
        timeline.served(
            when, response.base_version, response.online_version,
            np.array([label_of[it.item_id] for it in response.items]),
            np.array([it.score for it in response.items]),
            np.array([it.base_score for it in response.items]),
        )
        if response.fallback:
            fallbacks[ranking_pb2.FallbackReason.Name(response.fallback_reason)] += 1
        elif response.online_version:
            served_online += 1
            online_versions.add(response.online_version)
            first_online = n if first_online is None else first_online
        pending_feedback.append(
            _with_positions(
                replay.take(pa.array(rows)).set_column(
                    replay.schema.get_field_index("request_id"),
                    "request_id",
                    pa.array([request_id] * len(rows), pa.string()),
                )
            )
        )
        if len(pending_feedback) >= FEEDBACK_BATCH_REQUESTS:
            _send_feedback(client, pending_feedback)
        day_rows.append(rows)
        if (n + 1) % 1000 == 0:
            progress(
                f"replayed {n + 1:,}/{len(groups):,} requests "
                f"({(n + 1) / (time.perf_counter() - started):.0f}/s), "
                f"fallbacks so far {sum(fallbacks.values()):,}"
            )
    _send_feedback(client, pending_feedback)
    replay_seconds = time.perf_counter() - started
    if loop is not None:
        loop.finish()
    learner = serve.get_deployment_handle("Learner", settings.serving.app_name)
    learner.flush.remote().result()
    report = learner.report.remote().result()
    end = datetime.fromtimestamp(ts_us[groups[replayed - 1]].max() / 1e6, tz=UTC) if replayed else last
    return DemoReport(
        events_total=0,
        replay_start=replay_start,
        replay_end=end,
        base=None,  # type: ignore[arg-type]  # filled by run_demo
        requests=replayed,
        latencies_ms=latencies[:replayed],
        fallbacks=fallbacks,
        learner=report,
        served_online=served_online,
        online_versions=frozenset(online_versions),
        first_online_request=first_online,
        feature_refresh_seconds=refreshes,
        replay_seconds=replay_seconds,
        timeline=timeline,
    )


def _send_feedback(client: RankerClient, pending: list[pa.Table]) -> None:
    """Send the feedback of the last few requests in one call (as a service batching its
    click stream would), then forget it."""
    if pending:
        client.feedback(pa.concat_tables(pending))
        pending.clear()


def _with_positions(feedback: pa.Table) -> pa.Table:
    """Logged positions, or the slate order when the log has none."""
    position = feedback.column("position")
    if position.null_count == 0:
        return feedback
    filled = pc.coalesce(position, pa.array(np.arange(feedback.num_rows, dtype=np.int32)))
    return feedback.set_column(feedback.schema.get_field_index("position"), "position", filled)


def _nightly(
    settings: Settings,
    replay: pa.Table,
    day_rows: list[np.ndarray],
    day_end: datetime,
    progress: Callable[[str], None],
) -> float:
    """The day's served impressions join the event log (serving wrote them; the compactor
    turns the write-ahead logs into hourly Parquet), then features are recomputed and
    materialized, as a nightly job would. The simulator's own rows are not appended: what
    the next base learns from is what serving logged."""
    from serving.served_events import compact_served_log

    written = compact_served_log(
        settings.workspace, settings.feature_store.events_dir, settings.online_layer.join_window_s
    )
    seconds = refresh_features(settings, replay.slice(0, 0), day_end, live_counters=True)
    progress(f"nightly features up to {day_end:%Y-%m-%d}: {written:,} served impressions logged, {seconds:.1f}s")
    return seconds
