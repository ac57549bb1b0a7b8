"""A news-feed impressions simulator whose drift makes freshness matter.

What a ranker must cope with, and why each piece is here:

* **Items are born continuously and die young.** Most items live about a day and a half
  (news), a minority for weeks (evergreen). A base model trained last week has never seen
  most of today's items: only features (fresh counters) and the online layer know them.
* **Bursts.** A few new items are *breaking news*: for some hours they get many times the
  traffic and a higher click-through; some older items *trend* later in life. Their CTR is
  visible within minutes through fresh counters, never through last week's weights.
* **Learnable long-term structure.** Each user has a taste over item categories (a logit per
  category) and each item a quality; a base model can learn both. Tastes drift slowly (a
  linear walk towards a second taste vector), so an old model slowly goes stale too.
* **Position bias.** The chance of being examined falls as ``1 / (1 + position) ** decay``.

Each request shows one user a slate of ``slate_size`` live items sampled by current
popularity (a fixed logging policy, in random order); every impression keeps its true click
probability ``true_ctr`` so quality can be judged against the truth.

Two settings (issue 18) make freshness learnable; their defaults keep the log exactly as it
was (the same random streams, bit for bit):

* ``logging_policy``: ``"hidden"`` (default) allocates traffic by the hidden popularity
  *including the burst multiplier*, so how often an item is shown leaks its burst state to
  any counter; ``"blind"`` allocates by popularity and age only, so a burst shows only in
  clicks, which the fresh counters and the online layer can learn and a week-old base cannot.
* ``burst_ctr_spread``: per-item spread (lognormal sigma) of the burst's click-logit boost,
  so an item's early burst engagement predicts its later engagement (drawn from a separate
  stream, only when > 0).

``SimulatorConfig.learnable_freshness()`` is a preset using both, with bursts and decay large
enough to matter and the long-term terms (taste, quality) smaller.

Determinism: everything is drawn from ``numpy.random.default_rng([seed, stream, hour])``,
so the output depends only on the config (not on chunking or the machine).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from protos.atomic import atomic_path
from protos.events import EVENTS_SCHEMA
from protos.settings_io import from_section

__all__ = ["SimulatorConfig", "iter_simulation", "simulate", "write_simulation"]

logger = logging.getLogger(__name__)

_HOUR_US = 3_600_000_000


@dataclass(frozen=True)
class SimulatorConfig:
    """Knobs of the simulated world. Defaults: a 3-week demo that runs on 2 cores.

    Attributes
    ----------
    seed : int
        Everything random derives from it.
    start : datetime
        First instant of the log (UTC). Fixed by default so runs are reproducible.
    days : float
        Length of the log.
    impressions_per_day : int
        Mean impressions a day (before the diurnal cycle and Poisson noise).
    slate_size : int
        Items shown per request (positions ``0..slate_size-1``).
    n_users, n_categories : int
        Population and number of item categories.
    initial_items : int
        Items already live at ``start`` (published in the week before).
    items_per_day : int
        New items published per day, spread uniformly over time.
    evergreen_fraction : float
        Share of items with long lives (median ``evergreen_life_days``) and no freshness decay.
    short_life_hours : float
        Median life of the other items (lognormal).
    evergreen_life_days : float
        Median life of evergreen items.
    breaking_fraction : float
        Share of new items that burst at publication (breaking news).
    trending_per_day : float
        Expected later-in-life bursts per day over the whole catalogue.
    burst_hours : float
        How long a burst lasts.
    burst_popularity : float
        Traffic multiplier during a burst (added to 1).
    burst_ctr_logit : float
        Added to the click logit during a burst.
    base_ctr : float
        Click probability at position 0 for an average user, item and age.
    position_decay : float
        Examination probability ``1 / (1 + position) ** position_decay``.
    affinity_scale : float
        Std of the user x category logits (the long-term personal signal).
    quality_scale : float
        Std of the per-item quality logit.
    taste_drift_per_week : float
        How far each user's taste moves from its first to its second vector per week (0..1).
    freshness_decay_per_day : float
        Click-logit penalty per day of age for short-lived items.
    diurnal_amplitude : float
        Relative size of the daily traffic cycle (0 = flat).
    logging_policy : str
        ``"hidden"``: traffic by hidden popularity x burst (leaks the burst state; the
        default); ``"blind"``: by popularity and age only (see the module docstring).
    burst_ctr_spread : float
        Lognormal sigma of a per-item factor on ``burst_ctr_logit`` (0: the same for all).
    """

    seed: int = 7
    start: datetime = datetime(2026, 1, 5, tzinfo=timezone.utc)
    days: float = 21.0
    impressions_per_day: int = 20_000
    slate_size: int = 10
    n_users: int = 4_000
    n_categories: int = 12
    initial_items: int = 300
    items_per_day: int = 300
    evergreen_fraction: float = 0.15
    short_life_hours: float = 36.0
    evergreen_life_days: float = 14.0
    breaking_fraction: float = 0.04
    trending_per_day: float = 3.0
    burst_hours: float = 6.0
    burst_popularity: float = 25.0
    burst_ctr_logit: float = 1.2
    base_ctr: float = 0.06
    position_decay: float = 0.7
    affinity_scale: float = 0.8
    quality_scale: float = 0.5
    taste_drift_per_week: float = 0.1
    freshness_decay_per_day: float = 0.5
    diurnal_amplitude: float = 0.5
    logging_policy: str = "hidden"
    burst_ctr_spread: float = 0.0

    @classmethod
    def learnable_freshness(cls, **overrides: Any) -> SimulatorConfig:
        """A world where freshness is learnable (issue 18): the logging policy does not see
        bursts, a fifth of new items break (12 h, click logit +2.0, item-specific), many
        items trend later, short-lived items lose 1.5 logits a day, the long-term terms are
        smaller (taste 0.4, quality 0.3), and a third of the items (100 new a day) share the
        traffic, so an item's first hours hold enough impressions to reveal it. ``overrides``: any other setting."""
        values: dict[str, Any] = dict(
            logging_policy="blind", burst_ctr_spread=0.5, breaking_fraction=0.2,
            trending_per_day=20.0, burst_hours=12.0, burst_ctr_logit=2.0,
            freshness_decay_per_day=1.5, affinity_scale=0.4, quality_scale=0.3,
            initial_items=100, items_per_day=100,
        )
        values.update(overrides)
        return cls(**values)

    def __post_init__(self) -> None:
        if isinstance(self.start, str):
            object.__setattr__(self, "start", datetime.fromisoformat(self.start))
        if not isinstance(self.start, datetime):
            raise TypeError(f"simulate.start must be a datetime, got {type(self.start).__name__}")
        if self.start.tzinfo is None:
            object.__setattr__(self, "start", self.start.replace(tzinfo=timezone.utc))
        positive = {
            "days": self.days,
            "impressions_per_day": self.impressions_per_day,
            "slate_size": self.slate_size,
            "n_users": self.n_users,
            "n_categories": self.n_categories,
            "short_life_hours": self.short_life_hours,
            "evergreen_life_days": self.evergreen_life_days,
            "burst_hours": self.burst_hours,
        }
        for name, value in positive.items():
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"simulate.{name} must be > 0, got {value!r}")
        non_negative = {
            "initial_items": self.initial_items,
            "items_per_day": self.items_per_day,
            "trending_per_day": self.trending_per_day,
            "burst_popularity": self.burst_popularity,
            "position_decay": self.position_decay,
            "affinity_scale": self.affinity_scale,
            "quality_scale": self.quality_scale,
            "freshness_decay_per_day": self.freshness_decay_per_day,
        }
        for name, value in non_negative.items():
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"simulate.{name} must be >= 0, got {value!r}")
        if self.initial_items + self.items_per_day * self.days < self.slate_size:
            raise ValueError("simulate: fewer items in the whole catalogue than one slate")
        for name in ("evergreen_fraction", "breaking_fraction", "taste_drift_per_week",
                     "diurnal_amplitude"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and 0.0 <= value <= 1.0):
                raise ValueError(f"simulate.{name} must be in [0, 1], got {value!r}")
        if not 0.0 < self.base_ctr < 1.0:
            raise ValueError(f"simulate.base_ctr must be in (0, 1), got {self.base_ctr!r}")
        if self.logging_policy not in ("hidden", "blind"):
            raise ValueError(
                f"simulate.logging_policy must be 'hidden' or 'blind', got {self.logging_policy!r}"
            )
        if not (isinstance(self.burst_ctr_spread, (int, float)) and 0.0 <= self.burst_ctr_spread <= 3.0):
            raise ValueError(f"simulate.burst_ctr_spread must be in [0, 3], got {self.burst_ctr_spread!r}")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"simulate.seed must be a non-negative int, got {self.seed!r}")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> SimulatorConfig:
        """Build from a mapping (a ``[simulate]`` section); unknown keys are an error."""
        return from_section(cls, values, "simulate")

    @property
    def end(self) -> datetime:
        return self.start + timedelta(days=self.days)

    @property
    def n_hours(self) -> int:
        return int(math.ceil(self.days * 24))


@dataclass(frozen=True)
class _World:
    """Everything fixed before the first impression: the catalogue and the users."""

    publish_h: np.ndarray  # (I,) float64 hours since start (negative: before start)
    life_h: np.ndarray  # (I,)
    category: np.ndarray  # (I,) int
    quality: np.ndarray  # (I,)
    popularity: np.ndarray  # (I,) base traffic weight
    evergreen: np.ndarray  # (I,) bool
    burst_start_h: np.ndarray  # (I,) nan = never
    burst_gain: np.ndarray  # (I,) factor on burst_ctr_logit (all 1 when burst_ctr_spread = 0)
    item_ids: pa.Array  # (I,) string
    user_weight: np.ndarray  # (U,) sums to 1
    taste_a: np.ndarray  # (U, C)
    taste_b: np.ndarray  # (U, C)
    user_ids: pa.Array  # (U,) string
    category_names: pa.Array  # (C,) string


def _build_world(cfg: SimulatorConfig) -> _World:
    rng = np.random.default_rng([cfg.seed, 0])
    n_new = int(round(cfg.items_per_day * cfg.days))
    n_items = cfg.initial_items + n_new
    publish = np.concatenate(
        [
            np.sort(rng.uniform(-7 * 24.0, 0.0, cfg.initial_items)),
            np.sort(rng.uniform(0.0, cfg.days * 24.0, n_new)),
        ]
    )
    evergreen = rng.random(n_items) < cfg.evergreen_fraction
    life = np.where(
        evergreen,
        cfg.evergreen_life_days * 24.0 * rng.lognormal(0.0, 0.4, n_items),
        cfg.short_life_hours * rng.lognormal(0.0, 0.5, n_items),
    )
    # Initial items must be live at start for a while: stretch those that would be dead.
    life = np.where(publish + life < 12.0, 12.0 - publish + life, life)
    cat_weight = 1.0 / np.arange(1, cfg.n_categories + 1) ** 0.6
    category = rng.choice(cfg.n_categories, size=n_items, p=cat_weight / cat_weight.sum())
    quality = rng.normal(0.0, cfg.quality_scale, n_items)
    popularity = rng.lognormal(0.0, 1.0, n_items)
    burst = np.full(n_items, np.nan)
    breaking = (np.arange(n_items) >= cfg.initial_items) & (rng.random(n_items) < cfg.breaking_fraction)
    burst[breaking] = publish[breaking]
    p_trend = min(1.0, cfg.trending_per_day * cfg.days / max(n_items, 1))
    trending = ~breaking & (rng.random(n_items) < p_trend)
    burst[trending] = publish[trending] + rng.uniform(0.1, 0.8, trending.sum()) * life[trending]

    gain = np.ones(n_items)
    if cfg.burst_ctr_spread > 0:  # its own stream: the default world stays bit for bit
        spread = cfg.burst_ctr_spread
        gain = np.random.default_rng([cfg.seed, 2]).lognormal(-spread**2 / 2, spread, n_items)
    user_weight = rng.lognormal(0.0, 1.0, cfg.n_users)
    taste_a = rng.normal(0.0, cfg.affinity_scale, (cfg.n_users, cfg.n_categories))
    taste_b = rng.normal(0.0, cfg.affinity_scale, (cfg.n_users, cfg.n_categories))
    width_i, width_u = len(str(n_items - 1)), len(str(cfg.n_users - 1))
    item_ids = pa.array([f"i{i:0{width_i}d}" for i in range(n_items)], pa.string())
    user_ids = pa.array([f"u{u:0{width_u}d}" for u in range(cfg.n_users)], pa.string())
    categories = pa.array([f"cat{c:02d}" for c in range(cfg.n_categories)], pa.string())
    return _World(
        publish_h=publish,
        life_h=life,
        category=category,
        quality=quality,
        popularity=popularity,
        evergreen=evergreen,
        burst_start_h=burst,
        burst_gain=gain,
        item_ids=item_ids,
        user_weight=user_weight / user_weight.sum(),
        taste_a=taste_a,
        taste_b=taste_b,
        user_ids=user_ids,
        category_names=categories,
    )


def _in_burst(world: _World, idx: np.ndarray, t_h: np.ndarray | float, burst_hours: float) -> np.ndarray:
    start = world.burst_start_h[idx]
    with np.errstate(invalid="ignore"):
        return (t_h >= start) & (t_h < start + burst_hours)


def _simulate_hour(
    cfg: SimulatorConfig, world: _World, hour: int, first_request: int
) -> tuple[pa.Table | None, int]:
    """One hour of requests; returns the table (or None) and how many requests it made."""
    rng = np.random.default_rng([cfg.seed, 1, hour])
    hour_of_day = (cfg.start.hour + hour) % 24
    diurnal = 1.0 + cfg.diurnal_amplitude * math.sin(2 * math.pi * (hour_of_day - 9) / 24.0)
    span = min(1.0, cfg.days * 24.0 - hour)  # the last hour may be partial
    mean_requests = cfg.impressions_per_day / 24.0 / cfg.slate_size * diurnal * span
    n_req = int(rng.poisson(mean_requests))
    mid = hour + 0.5 * span
    age_mid = mid - world.publish_h
    live = np.flatnonzero((age_mid >= 0) & (age_mid < world.life_h))
    if n_req == 0 or live.size == 0:
        return None, 0
    k = min(cfg.slate_size, live.size)

    # Traffic weight of each live item at the middle of the hour.
    pop = world.popularity[live] * np.exp(-age_mid[live] / world.life_h[live])
    if cfg.logging_policy == "hidden":  # traffic follows the hidden burst state (a leak)
        pop = pop * (1.0 + cfg.burst_popularity * _in_burst(world, live, mid, cfg.burst_hours))
    cum = np.cumsum(pop)
    picks = np.searchsorted(cum, rng.random((n_req, k)) * cum[-1], side="right")
    picks = np.minimum(picks, live.size - 1)
    picks = _dedupe_rows(picks, live.size, rng)  # (R, k), -1 = dropped duplicate
    kept = picks >= 0
    positions = (np.cumsum(kept, axis=1) - 1)[kept].astype(np.int32)
    req_local = np.broadcast_to(np.arange(n_req)[:, None], picks.shape)[kept]
    item = live[picks[kept]]

    offsets = np.sort(rng.random(n_req)) * span  # request times within the hour
    users = rng.choice(cfg.n_users, size=n_req, p=world.user_weight)
    t_h = hour + offsets[req_local]
    user = users[req_local]

    drift = np.minimum(1.0, cfg.taste_drift_per_week * (t_h / (7 * 24.0)))
    cat = world.category[item]
    affinity = (1.0 - drift) * world.taste_a[user, cat] + drift * world.taste_b[user, cat]
    age_days = (t_h - world.publish_h[item]) / 24.0
    fresh = np.where(world.evergreen[item], 0.0, -cfg.freshness_decay_per_day * age_days)
    burst = cfg.burst_ctr_logit * world.burst_gain[item] * _in_burst(world, item, t_h, cfg.burst_hours)
    logit = math.log(cfg.base_ctr / (1 - cfg.base_ctr)) + affinity + world.quality[item] + fresh + burst
    examine = 1.0 / (1.0 + positions) ** cfg.position_decay
    true_ctr = examine / (1.0 + np.exp(-logit))
    label = (rng.random(true_ctr.size) < true_ctr).astype(np.float32)

    start_us = int(cfg.start.timestamp() * 1_000_000)
    ts_us = start_us + np.round(t_h * _HOUR_US).astype(np.int64)
    request_ids = pc.binary_join_element_wise(
        "r", pa.array(first_request + req_local, pa.int64()).cast(pa.string()), ""
    )
    table = pa.table(
        {
            "user_id": world.user_ids.take(pa.array(user)),
            "item_id": world.item_ids.take(pa.array(item)),
            "ts": pa.array(ts_us, pa.int64()).cast(pa.timestamp("us", tz="UTC")),
            "label": pa.array(label, pa.float32()),
            "request_id": request_ids,
            "position": pa.array(positions, pa.int32()),
            "item_category": world.category_names.take(pa.array(cat)),
            "true_ctr": pa.array(true_ctr.astype(np.float32), pa.float32()),
        }
    )
    columns = [
        table.column(f.name) if f.name in table.column_names else pa.nulls(table.num_rows, f.type)
        for f in EVENTS_SCHEMA
    ]
    return pa.Table.from_arrays(columns, schema=EVENTS_SCHEMA), n_req


def _dedupe_rows(picks: np.ndarray, n_live: int, rng: np.random.Generator) -> np.ndarray:
    """Replace repeated items within a slate by uniform draws; drop what still repeats."""
    picks = picks.copy()
    for _ in range(3):
        dup = _duplicate_mask(picks)
        if not dup.any():
            return picks
        picks[dup] = rng.integers(0, n_live, int(dup.sum()))
    picks[_duplicate_mask(picks)] = -1
    return picks


def _duplicate_mask(picks: np.ndarray) -> np.ndarray:
    """True where a row repeats a value seen earlier in the same row."""
    order = np.argsort(picks, axis=1, kind="stable")
    sorted_ = np.take_along_axis(picks, order, axis=1)
    repeat = np.zeros_like(picks, dtype=bool)
    repeat[:, 1:] = (sorted_[:, 1:] == sorted_[:, :-1]) & (sorted_[:, 1:] >= 0)
    mask = np.zeros_like(repeat)
    np.put_along_axis(mask, order, repeat, axis=1)
    return mask


def iter_simulation(cfg: SimulatorConfig, *, hours_per_chunk: int = 24) -> Iterator[pa.Table]:
    """The log in time order, ``hours_per_chunk`` hours per table (memory stays bounded)."""
    if hours_per_chunk < 1:
        raise ValueError(f"hours_per_chunk must be >= 1, got {hours_per_chunk}")
    world = _build_world(cfg)
    next_request = 0
    pending: list[pa.Table] = []
    for hour in range(cfg.n_hours):
        table, n_req = _simulate_hour(cfg, world, hour, next_request)
        next_request += n_req
        if table is not None:
            pending.append(table)
        if (hour + 1) % hours_per_chunk == 0 and pending:
            yield pa.concat_tables(pending)
            pending = []
    if pending:
        yield pa.concat_tables(pending)


def simulate(cfg: SimulatorConfig | None = None) -> pa.Table:
    """The whole simulated log in memory (``EVENTS_SCHEMA``, sorted by ts)."""
    cfg = cfg or SimulatorConfig()
    tables = list(iter_simulation(cfg))
    return pa.concat_tables(tables) if tables else EVENTS_SCHEMA.empty_table()


def write_simulation(cfg: SimulatorConfig, path: str | os.PathLike[str]) -> int:
    """Stream the log into one Parquet file a day at a time; returns the number of rows.

    Atomic (``protos.atomic.atomic_path``): a reader sees the old file or the whole new one.
    """
    rows = 0
    with (
        atomic_path(path) as tmp,
        pq.ParquetWriter(tmp, EVENTS_SCHEMA, compression="zstd") as writer,
    ):
        for chunk in iter_simulation(cfg):
            writer.write_table(chunk)
            rows += chunk.num_rows
            logger.info("simulated %s events", rows)
    return rows
