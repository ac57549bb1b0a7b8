"""How the catalog's features are grouped into Feast feature views (no Feast import here).

One table drives everything that must agree: the batch job (``compute``) writes one Parquet
source per view, the Feast declarations (``declarations``) declare one feature view per
entry, the training-set builder joins them, and the online reader decodes them. Adding a
windowed counter is one edit here plus its names in ``catalog`` (see README).

Window semantics (all views): a row with ``event_timestamp = B`` (a whole hour) holds, for
each window ``w``, the entity's impressions, clicks (sum of labels) and smoothed CTR over
events with ``B - w <= ts < B``: strictly before ``B``. Rows are written at every hour at
which some window's value changes (``h + 1`` and ``h + 1 + w`` for each event hour ``h``),
plus a "birth" row of empty windows at the entity's first event hour, so the latest row at
or before ``T`` is exact for the hour boundary ``floor_hour(T)`` from the entity's first
event on. Features therefore lag events by up to an hour offline; online, the pushed fresh
counters (``feature_store.push``) close that gap for the 1 h window.

TTL: the newest row stays exact until the next one (the job writes a row whenever a window
changes, including when it empties), so the TTL is only a staleness bound: an entity with no
row for ``ttl_days`` has long had empty windows, and Feast's "not found" maps to the
documented defaults, which equal empty windows. It must cover the longest window.

Each window view also stores its features packed into one ``Array(Float32)`` feature
(``vector``), in ``features`` order: the online reader fetches and decodes one row per
entity instead of one per feature.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from feature_store.catalog import FRESH_ITEM_FEATURES, ITEM_FEATURES, USER_FEATURES

__all__ = [
    "AGE_FEATURE",
    "ENTITY_JOIN_KEYS",
    "ITEM_AGE_VIEW",
    "ITEM_FRESH",
    "ITEM_PROFILE",
    "ITEM_STATS",
    "REQUEST_TIME_FIELD",
    "USER_STATS",
    "WINDOW_VIEWS",
    "WindowView",
    "check_catalog",
    "default_value",
    "view_of",
]

Entity = Literal["user", "item"]
ENTITY_JOIN_KEYS: dict[str, str] = {"user": "user_id", "item": "item_id"}


@dataclass(frozen=True)
class WindowView:
    """A feature view of windowed impression/click counters for one entity."""

    name: str
    entity: Entity
    windows: tuple[tuple[str, int], ...]  # (suffix, hours), ascending hours
    ttl_days: int
    push_source: str | None = None
    description: str = ""

    def __post_init__(self) -> None:
        # Rows are at most ``max_window`` hours apart while any window is non-empty, so a TTL
        # at least that long never hides a live value (see the module docstring).
        if self.ttl_days * 24 < self.max_window_hours + 1:
            raise ValueError(f"{self.name}: ttl_days must cover the longest window plus an hour")

    @property
    def join_key(self) -> str:
        return ENTITY_JOIN_KEYS[self.entity]

    @property
    def features(self) -> tuple[str, ...]:
        names: list[str] = []
        for suffix, _ in self.windows:
            names += [f"{self.entity}_imp_{suffix}", f"{self.entity}_clk_{suffix}", f"{self.entity}_ctr_{suffix}"]
        return tuple(names)

    @property
    def vector(self) -> str:
        """The packed feature: every feature of the view, in ``features`` order."""
        return f"{self.name}_vec"

    @property
    def max_window_hours(self) -> int:
        return max(hours for _, hours in self.windows)

    @property
    def row_offsets(self) -> tuple[int, ...]:
        """Hours after ``h + 1`` at which an event in hour ``h`` changes some window."""
        return (0, *sorted({hours for _, hours in self.windows}))


USER_STATS = WindowView(
    "user_stats", "user", (("7d", 168), ("30d", 720)), ttl_days=90,
    description="User activity: impressions, clicks and smoothed CTR over 7 and 30 days.",
)
ITEM_FRESH = WindowView(
    "item_fresh", "item", (("1h", 1),), ttl_days=30, push_source="item_fresh_push",
    description="Item counters over the last hour; also pushed live by the online loop.",
)
ITEM_STATS = WindowView(
    "item_stats", "item", (("24h", 24), ("7d", 168)), ttl_days=30,
    description="Item popularity: impressions, clicks and smoothed CTR over 24 hours and 7 days.",
)
WINDOW_VIEWS: tuple[WindowView, ...] = (USER_STATS, ITEM_FRESH, ITEM_STATS)

#: Item profile view: when the item was first seen, and its latest known category.
ITEM_PROFILE = "item_profile"
FIRST_SEEN_FEATURE = "item_first_seen_s"  # Float64 unix seconds
CATEGORY_FEATURE = "item_category"
#: On-demand view computing the item's age at request time.
ITEM_AGE_VIEW = "item_age"
AGE_FEATURE = "item_age_hours"
#: Request-time input of ``item_age``: the request's time as unix seconds (Float64).
REQUEST_TIME_FIELD = "request_unix_s"


def view_of(feature: str) -> str:
    """The feature view that serves ``feature`` (a catalog name)."""
    for view in WINDOW_VIEWS:
        if feature in view.features:
            return view.name
    if feature == AGE_FEATURE:
        return ITEM_AGE_VIEW
    if feature in (FIRST_SEEN_FEATURE, CATEGORY_FEATURE):
        return ITEM_PROFILE
    raise KeyError(f"no feature view serves {feature!r}: add it to feature_store/views.py")


def default_value(feature: str, ctr_prior: float) -> float:
    """The documented value of a feature for an entity the store has never seen.

    Counts are 0, CTRs are the prior mean (what the smoothed CTR of an entity with no
    impressions is), the age of an unknown item is 0 hours (it is new).
    """
    if "_ctr_" in feature:
        return float(ctr_prior)
    if "_imp_" in feature or "_clk_" in feature or feature == AGE_FEATURE:
        return 0.0
    raise KeyError(f"no default for feature {feature!r}")


def check_catalog() -> None:
    """Raise if the catalog names a feature no view computes, or the fresh set drifted.

    Called when the Feast objects are declared, so a half-done "add a feature" fails
    loudly at ``apply`` rather than as a missing column at training time.
    """
    for name in (*USER_FEATURES, *ITEM_FEATURES):
        view_of(name)  # raises KeyError naming the feature
    if set(USER_FEATURES) - set(USER_STATS.features):
        raise ValueError("every USER_FEATURES name must come from the user_stats view")
    if tuple(FRESH_ITEM_FEATURES) != ITEM_FRESH.features:
        raise ValueError(
            f"FRESH_ITEM_FEATURES {FRESH_ITEM_FEATURES} must equal the pushed view's "
            f"features {ITEM_FRESH.features}"
        )
