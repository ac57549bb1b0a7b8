"""Backtest settings: one frozen dataclass.

Cadences are durations (``7d``, ``2d``, ``36h``, ``1d12h``: ``protos.timeparse``, the one
grammar every flag uses) so that short logs work: a
6-day news log backtests with ``base_every=2d, warmup=2d``. The tiers' own settings
(``BaseModelConfig``, the online layer's config, ``FeatureStoreConfig``) are not copied here:
they travel as plain mappings (``tier_settings``) and are built by each tier's ``from_dict``,
so a backtest is tuned only through the tiers' documented settings.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from protos.timeparse import format_duration, parse_duration, parse_time
from serving.backtest.errors import BacktestSettingsError

__all__ = ["BacktestConfig", "TIER_SECTIONS"]

# The config sections a backtest may pass on, one per tier (the lead's settings TOML layout).
TIER_SECTIONS: tuple[str, ...] = ("feature_store", "base_model", "online_layer")

@dataclass(frozen=True)
class BacktestConfig:
    """How the replay walks the log and how each policy is retrained.

    Attributes:
        warmup: Span from the first event (its UTC midnight) used only for training; the
            evaluation starts at its end. ``static`` is trained on exactly this span.
        base_every: Cadence of ``base_only``'s (and so ``hybrid``'s) warm-started retrains.
        daily_every: Cadence of ``daily_retrain``'s from-scratch retrains (the freshness
            ceiling; 1 day unless a log is too long to afford it).
        start, end: Optional UTC bounds: events outside ``[start, end)`` are dropped before
            anything else (to backtest a recent window of a long, sparse log).
        max_events: Optional cap: keep only the first ``max_events`` events after the bounds.
        online_batch: Replay the online layer in mini-batches of this many events, each
            scored, then learned: the learning delay is then N events, whatever time they
            span (a day on a sparse ratings log, minutes on a busy one). None (default):
            learn as serving's learner does, ``online_delay`` after each event.
        online_delay: How long after an event its feedback is learned and published, in
            event time. None (default): from the online layer's settings, as serving's
            learner runs: ``join_window_s`` (``emit = "window_close"``; 0 for
            ``"on_arrival"``) + ``max_batch_delay_s`` + ``publish_every_s``.
        online_warm_start: Replay up to this many events from before a new base's training
            cut-off through the online layer when it is re-bound to that base (0: start from
            zero weights, i.e. exactly the base).
        seed: Seed for every trainer.
        workers: Ray Train workers per base fit.
        series_every: Length of one step of the per-day series (1 day; a long, sparse log
            may use ``7d`` so each point holds enough events to mean something).
        obey_gate: Production's rule (issue 18): a base its evaluation gate rejected is
            never served by ``base_only``/``hybrid``; the previous one keeps serving (False:
            every fit serves, as before issue 18; the report says which).
        fresh_ceiling: Also run ``daily_fresh`` (``serving.backtest.ceiling``: warm daily
            fits on every row before the cut-off, a fixed epoch count), the ceiling the
            gap closed is judged on.
        fit_backend: ``"ray"`` (default: a Ray Train ``TorchTrainer`` per fit) or ``"local"``
            (``train_base_model(backend="local")``: the same training loop in this process,
            no Ray Train start-up per fit; for a loaded machine, where start-up dominates).
        settings_file: A ``freshrank.toml`` (``serving.settings.load_settings``) whose
            ``[feature_store]`` ``[base_model]`` ``[online_layer]`` sections tune the tiers.
        tier_settings: Overrides on top of it, ``{"base_model": {"epochs": 2}, ...}``, each
            checked by that tier's ``Config.from_dict`` (unknown keys are its error).
    """

    warmup: timedelta = timedelta(days=14)
    base_every: timedelta = timedelta(days=7)
    daily_every: timedelta = timedelta(days=1)
    start: datetime | None = None
    end: datetime | None = None
    max_events: int | None = None
    online_batch: int | None = None
    online_delay: timedelta | None = None
    online_warm_start: int = 0
    seed: int = 0
    workers: int = 1
    series_every: timedelta = timedelta(days=1)
    obey_gate: bool = True
    fresh_ceiling: bool = True
    fit_backend: str = "ray"
    settings_file: Path | None = None
    tier_settings: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("warmup", "base_every", "daily_every", "series_every"):
            value = getattr(self, name)
            if not isinstance(value, timedelta) or value <= timedelta(0):
                raise BacktestSettingsError(f"backtest.{name} must be a positive duration")
        if self.base_every < self.daily_every:
            raise BacktestSettingsError(
                f"base_every ({format_duration(self.base_every)}) is shorter than daily_every "
                f"({format_duration(self.daily_every)}): the ceiling must be the fresher policy"
            )
        for name in ("start", "end"):
            value = getattr(self, name)
            if value is not None and value.tzinfo is None:
                raise BacktestSettingsError(f"backtest.{name} must be timezone-aware (UTC)")
        if self.start is not None and self.end is not None and self.start >= self.end:
            raise BacktestSettingsError(f"start {self.start} is not before end {self.end}")
        if self.max_events is not None and self.max_events < 1:
            raise BacktestSettingsError(f"max_events must be >= 1, got {self.max_events}")
        if self.online_batch is not None and self.online_batch < 1:
            raise BacktestSettingsError(f"online_batch must be >= 1, got {self.online_batch}")
        if self.online_delay is not None:
            if not isinstance(self.online_delay, timedelta) or self.online_delay < timedelta(0):
                raise BacktestSettingsError("backtest.online_delay must be a duration >= 0")
            if self.online_batch is not None:
                raise BacktestSettingsError(
                    "online_batch and online_delay are two models of the learning delay: give one"
                )
        if self.online_warm_start < 0:
            raise BacktestSettingsError("online_warm_start must be >= 0")
        if self.fit_backend not in ("ray", "local"):
            raise BacktestSettingsError(f"fit_backend must be 'ray' or 'local', got {self.fit_backend!r}")
        if self.workers < 1:
            raise BacktestSettingsError(f"workers must be >= 1, got {self.workers}")
        unknown = sorted(set(self.tier_settings) - set(TIER_SECTIONS))
        if unknown:
            raise BacktestSettingsError(
                f"unknown settings section(s) {', '.join(unknown)}; known: {', '.join(TIER_SECTIONS)}"
            )

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> BacktestConfig:
        """Build from a mapping of plain values (durations as strings, times as ISO strings).

        Raises:
            BacktestSettingsError: an unknown key or a malformed value.

        Examples
        --------
        >>> cfg = BacktestConfig.from_dict({"warmup": "1d12h", "base_every": "2d"})
        >>> cfg.warmup, cfg.to_json()["base_every"]
        (datetime.timedelta(days=1, seconds=43200), '2d')
        """
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise BacktestSettingsError(f"unknown [backtest] setting(s): {', '.join(unknown)}")
        kwargs = dict(values)
        try:
            for name in ("warmup", "base_every", "daily_every", "series_every", "online_delay"):
                if isinstance(kwargs.get(name), str):
                    kwargs[name] = parse_duration(kwargs[name])
            for name in ("start", "end"):
                if isinstance(kwargs.get(name), str):
                    kwargs[name] = parse_time(kwargs[name])
        except ValueError as exc:
            raise BacktestSettingsError(f"backtest.{name}: {exc}") from exc
        if isinstance(kwargs.get("settings_file"), str):
            kwargs["settings_file"] = Path(kwargs["settings_file"])
        return cls(**kwargs)

    def to_json(self) -> dict[str, Any]:
        """Plain values for ``report.json`` (durations spelled as the CLI takes them)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, timedelta):
                value = format_duration(value)
            elif isinstance(value, datetime):
                value = value.isoformat()
            elif isinstance(value, Path):
                value = str(value)
            elif isinstance(value, Mapping):
                value = {k: dict(v) for k, v in value.items()}
            out[f.name] = value
        return out
