"""The batch half of the loop on one machine: event log -> features -> Feast -> base model.

Each step is one call into the tier that owns it; this module only orders them, so the demo,
``freshrank`` commands and tests run exactly what a user would run by hand
(``freshrank features compute/apply/materialize``, ``freshrank train``).
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from serving.settings import Settings

logger = logging.getLogger(__name__)

Progress = Callable[[str], None]


def _quiet(_: str) -> None:
    return None


@dataclass(frozen=True)
class PreparedBase:
    """What ``prepare_base`` produced."""

    version: str
    promoted: bool
    train_rows: int
    train_seconds: float
    feature_seconds: float
    metrics: dict[str, Any]
    backend: str = "ray"


def slice_events(events: pa.Table, start: datetime | None, end: datetime | None) -> pa.Table:
    """Events with ``start <= ts < end`` (either bound optional)."""
    mask = None
    ts = events.column("ts")
    if start is not None:
        mask = pc.greater_equal(ts, pa.scalar(start, type=ts.type))
    if end is not None:
        upper = pc.less(ts, pa.scalar(end, type=ts.type))
        mask = upper if mask is None else pc.and_(mask, upper)
    return events if mask is None else events.filter(mask)


def refresh_features(
    settings: Settings, events: pa.Table, end: datetime, *, live_counters: bool = False
) -> float:
    """Append ``events`` to the event log, recompute offline features up to ``end`` and
    materialize them into the online store; returns the seconds it took.

    With ``live_counters`` the fresh item counters are left out of the materialization:
    the online loop pushes them as feedback arrives, and an hourly batch value would
    overwrite a fresher one.
    """
    from feature_store.compute import compute_features
    from feature_store.event_log import write_event_log
    from feature_store.repo import materialize
    from feature_store.views import ITEM_FRESH, ITEM_PROFILE, WINDOW_VIEWS

    started = time.perf_counter()
    cfg = settings.feature_store
    if events.num_rows:
        write_event_log(events, cfg.workspace / "events")
    compute_features(cfg, end=end)
    views = None
    if live_counters:
        views = [v.name for v in WINDOW_VIEWS if v.name != ITEM_FRESH.name] + [ITEM_PROFILE]
    with contextlib.redirect_stdout(sys.stderr):  # Feast prints progress to stdout
        materialize(cfg, end=end, views=views)
    return time.perf_counter() - started


def prepare_base(
    settings: Settings,
    events: pa.Table,
    as_of: datetime,
    *,
    progress: Progress = _quiet,
    backend: str = "ray",
    trained_until: datetime | None = None,
) -> PreparedBase:
    """Build the workspace from ``events`` before ``as_of`` and train the first base.

    Writes the event log, computes features, ``feast apply`` + materializes up to
    ``as_of``, builds the point-in-time training set for the base's window, and trains,
    gates, registers and promotes a base version with Ray Train (``backend="local"``
    trains in this process instead, for tests that exercise serving, not training).
    ``trained_until`` (default ``as_of``) ends the base's window earlier: a base that is
    days old when serving starts, as a weekly base is on most days.
    """
    from base_model.training import train_base_model
    from feature_store.repo import apply
    from feature_store.training_set import build_training_set

    cfg = settings.feature_store
    history = slice_events(events, None, as_of)
    if history.num_rows == 0:
        raise ValueError(f"no events before {as_of.isoformat()}: nothing to train on")
    started = time.perf_counter()
    progress(f"feast apply ({cfg.workspace / 'feast'})")
    apply(cfg)
    progress(f"event log + features for {history.num_rows:,} events")
    feature_seconds = refresh_features(settings, history, as_of)

    until = as_of if trained_until is None else min(trained_until, as_of)
    window_start = until - timedelta(days=settings.base_model.train_days + 1)
    rows = slice_events(history, window_start, until)
    progress(f"point-in-time training set for {rows.num_rows:,} events")
    training_set = build_training_set(cfg, rows)
    feature_seconds = time.perf_counter() - started
    # The weeks before the window: what a day and an hour of this log usually hold, for the
    # completeness gates (a weekend judged against weekends); never trained on.
    before = slice_events(history, None, window_start).column("ts")
    earlier = before.cast(pa.timestamp("us")).to_numpy().astype("datetime64[us]")
    progress(f"training the base model ({'Ray Train' if backend == 'ray' else 'in-process'})")
    trained_at = time.perf_counter()
    result = train_base_model(
        settings.base_model,
        training_set,
        settings.registry_dir,
        parent="champion",
        as_of=until,
        trigger={"reason": "demo", "detail": "first base for the replay"},
        address=settings.ray_address,
        backend=backend,  # type: ignore[arg-type]
        history=earlier,
    )
    train_seconds = time.perf_counter() - trained_at
    if not result.promoted:
        from protos.errors import FailedPrecondition

        failed = "; ".join(
            f"{name}: {g.get('reason', '')}" for name, g in result.gate_results.items()
            if isinstance(g, dict) and not g.get("passed", True)
        )
        raise FailedPrecondition(
            f"base {result.version} was not promoted ({result.status}): {failed or 'no gate failed'}"
        )
    return PreparedBase(
        version=result.version,
        promoted=result.promoted,
        train_rows=rows.num_rows,
        train_seconds=train_seconds,
        feature_seconds=feature_seconds,
        metrics=dict(result.metrics),
        backend=backend,
    )
