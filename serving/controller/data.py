"""The workspace's side of a cycle: its triggers and its features, judged from the event log.

``check`` brings the offline features up to date with the log (``freshrank features
compute``, incremental: triggers judge feature histograms), builds the recent rows in the
training-set shape (``serving.training_sources``, as ``freshrank train`` does) and judges
every trigger (``base_model.triggers.check_triggers``) at the cycle's training time.
``refresh`` then loads the features into the online store (``freshrank features
materialize``, the live item counters left to the app that pushes them), so the candidate
is trained and then served on the same features.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from base_model.triggers import TriggerDecision
    from serving.settings import Settings

__all__ = ["check", "refresh", "training_time"]


def training_time(settings: Settings) -> datetime:
    """The cycle's training time: ``[controller] as_of`` ("data-end" or "now")."""
    from serving.training_sources import DATA_END, log_span, parse_as_of
    from protos.timeparse import floor_hour

    span = log_span(settings.feature_store)
    end = floor_hour(span[1]) + timedelta(hours=1) if span else None
    return parse_as_of(settings.controller.as_of if span else DATA_END, end)


def check(settings: Settings) -> tuple[TriggerDecision, datetime]:
    """Every trigger at the training time, and that time.

    Raises:
        TrainingDataError: no event log yet. FailedPrecondition: the features cannot be
        computed. ValueError: the recent rows are malformed.
    """
    from base_model.data import validate_training_set
    from base_model.triggers import check_triggers
    from feature_store.compute import compute_features
    from feature_store.errors import WorkspaceError
    from protos.errors import FailedPrecondition
    from protos.registry import ModelRegistry
    from serving.training_sources import training_set_from_log

    as_of = training_time(settings)
    try:
        compute_features(settings.feature_store)
    except WorkspaceError as exc:
        raise FailedPrecondition(str(exc)) from exc
    table, as_of = training_set_from_log(
        settings.feature_store, as_of.isoformat(), settings.base_model.train_days
    )
    decision = check_triggers(
        settings.base_model,
        ModelRegistry(settings.registry_dir),
        validate_training_set(table),
        as_of,
        settings.controller.duration("every"),
    )
    return decision, as_of


def refresh(settings: Settings, as_of: datetime) -> float:
    """Features computed and materialized up to ``as_of``; returns the seconds it took."""
    from feature_store import repo
    from protos.events import empty_events
    from serving.pipeline import refresh_features

    if not settings.feature_store.registry_path.exists():
        repo.apply(settings.feature_store)
    return refresh_features(settings, empty_events(), as_of, live_counters=True)
