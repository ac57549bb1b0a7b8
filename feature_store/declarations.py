"""The Feast objects of freshrank, built for one workspace.

Order as Feast recommends: entities, sources, feature views (explicit schemas and TTLs), the
on-demand view, then the versioned ``FeatureService`` that the base model names. Training
(``get_historical_features``) and serving (``get_online_features``) both fetch by that
service, and every model version records its name (``catalog.FEATURE_SERVICE_NAME``).

This module is ``.feastignore``-d: ``feast apply`` reads ``definitions.py``, which calls
:func:`declare` for ``$FRESHRANK_WORKSPACE``; the library's ``repo.apply(cfg)`` calls it for
any workspace. Sources point at absolute paths, so neither depends on the caller's cwd.
"""

from __future__ import annotations

import types
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Union

from feast import (
    Entity,
    FeatureService,
    FeatureView,
    Field,
    FileSource,
    LabelView,
    PushSource,
    RequestSource,
    ValueType,
)
from feast.feast_object import FeastObject
from feast.on_demand_feature_view import OnDemandFeatureView, on_demand_feature_view
from feast.types import Array, Float32, Float64, String

from feature_store.catalog import (
    FEATURE_SERVICE_NAME,
    FEATURE_SERVICE_VERSION,
    ITEM_FEATURES,
    USER_FEATURES,
)
from feature_store.sources import CREATED_TIMESTAMP, EVENT_TIMESTAMP
from feature_store.views import (
    AGE_FEATURE,
    CATEGORY_FEATURE,
    FIRST_SEEN_FEATURE,
    ITEM_AGE_VIEW,
    ITEM_PROFILE,
    REQUEST_TIME_FIELD,
    WINDOW_VIEWS,
    check_catalog,
    view_of,
)

__all__ = ["Declarations", "declare"]

#: A data source of a view: Parquet files, or the push source in front of them.
Source = Union[FileSource, PushSource]


def _item_age(inputs: dict[str, list[float | None]]) -> dict[str, list[float | None]]:
    """Hours since the item was first seen, at request time (None when never seen)."""
    # Kept free of module globals: Feast serialises this function by value.
    out: list[float | None] = []
    for request_s, first_s in zip(inputs["request_unix_s"], inputs["item_first_seen_s"]):
        out.append(None if first_s is None or request_s is None else (request_s - first_s) / 3600.0)
    return {"item_age_hours": out}


def _fresh_copy(fn: Callable[..., object]) -> types.FunctionType:
    """A copy of ``fn``: Feast's decorator rewrites ``__module__`` of what it is given."""
    if not isinstance(fn, types.FunctionType):
        raise TypeError(f"expected a plain function, got {type(fn).__name__}")
    copy = types.FunctionType(fn.__code__, fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__)
    copy.__annotations__ = dict(fn.__annotations__)
    copy.__doc__ = fn.__doc__
    copy.__qualname__ = fn.__qualname__
    return copy


@dataclass(frozen=True)
class Declarations:
    """Every Feast object of one workspace, by role."""

    entities: tuple[Entity, ...]
    sources: tuple[Source, ...]
    feature_views: tuple[FeatureView, ...]
    on_demand_views: tuple[OnDemandFeatureView, ...]
    feature_services: tuple[FeatureService, ...]

    def objects(self) -> list[FeastObject]:
        """All objects, in apply order."""
        return [
            *self.entities,
            *self.sources,
            *self.feature_views,
            *self.on_demand_views,
            *self.feature_services,
        ]

    def view(self, name: str) -> FeatureView:
        for fv in self.feature_views:
            if fv.name == name:
                return fv
        raise KeyError(name)

    def source(self, name: str) -> Source:
        for src in self.sources:
            if src.name == name:
                return src
        raise KeyError(name)

    @property
    def service(self) -> FeatureService:
        """The FeatureService models name (``catalog.FEATURE_SERVICE_NAME``)."""
        return self.feature_services[0]


def declare(features_dir: str | Path) -> Declarations:
    """Build the Feast objects whose Parquet sources live under ``features_dir``."""
    check_catalog()
    features_dir = Path(features_dir).absolute()

    user = Entity(
        name="user", join_keys=["user_id"], value_type=ValueType.STRING,
        description="A person being ranked for.",
    )
    item = Entity(
        name="item", join_keys=["item_id"], value_type=ValueType.STRING,
        description="A rankable item (article, movie, product).",
    )
    entities = {"user": user, "item": item}

    sources: list[Source] = []
    views: dict[str, FeatureView] = {}
    for spec in WINDOW_VIEWS:
        batch = FileSource(
            name=f"{spec.name}_source",
            path=str(features_dir / spec.name),
            timestamp_field=EVENT_TIMESTAMP,
            created_timestamp_column=CREATED_TIMESTAMP,
            description=f"Hourly batch output of feature_store.compute for {spec.name}.",
        )
        sources.append(batch)
        source: Source = batch
        if spec.push_source:
            source = PushSource(name=spec.push_source, batch_source=batch,
                                description="Live counters pushed by feature_store.push.")
            sources.append(source)
        views[spec.name] = FeatureView(
            name=spec.name,
            entities=[entities[spec.entity]],
            ttl=timedelta(days=spec.ttl_days),
            schema=[
                *[Field(name=name, dtype=Float32) for name in spec.features],
                Field(name=spec.vector, dtype=Array(Float32),
                      description=f"{', '.join(spec.features)} packed, for fast reads"),
            ],
            source=source,
            online=True,
            description=spec.description,
            tags={"windows": ",".join(f"{s}={h}h" for s, h in spec.windows)},
        )

    profile_source = FileSource(
        name=f"{ITEM_PROFILE}_source",
        path=str(features_dir / ITEM_PROFILE),
        timestamp_field=EVENT_TIMESTAMP,
        created_timestamp_column=CREATED_TIMESTAMP,
        description="Item first-seen time and category, written by feature_store.compute.",
    )
    sources.append(profile_source)
    views[ITEM_PROFILE] = FeatureView(
        name=ITEM_PROFILE,
        entities=[item],
        ttl=timedelta(0),  # 0 = never expires: an item's first-seen time stays true
        schema=[
            Field(name=FIRST_SEEN_FEATURE, dtype=Float64, description="unix seconds"),
            Field(name=CATEGORY_FEATURE, dtype=String),
        ],
        source=profile_source,
        online=True,
        description="When an item was first seen, and its latest known category.",
    )

    request = RequestSource(
        name="rank_request",
        schema=[Field(name=REQUEST_TIME_FIELD, dtype=Float64, description="unix seconds")],
        description="The time a ranking (or a training row) is made for.",
    )
    item_age = on_demand_feature_view(
        sources=[views[ITEM_PROFILE][[FIRST_SEEN_FEATURE]], request],
        schema=[Field(name=AGE_FEATURE, dtype=Float64)],  # float32 once, in the arrays
        mode="python",
        name=ITEM_AGE_VIEW,
        description="Hours since the item was first seen, at request time.",
    )(_fresh_copy(_item_age))

    # The service: exactly the catalog's features, grouped by the view that serves them.
    # Item views first: Feast's file offline store de-duplicates entity rows on the join
    # keys of the first view plus the time, and (item, time) is unique in an impressions
    # log where (user, time) is not (a slate).
    wanted = (*USER_FEATURES, *ITEM_FEATURES)
    projections: list[FeatureView | OnDemandFeatureView | LabelView | str] = []  # Feast's type
    ordered = sorted(views.items(), key=lambda kv: kv[1].entities != ["item"])
    for name, fv in ordered:
        names = [f for f in wanted if view_of(f) == name]
        if names:
            projections.append(fv[names])
    if any(view_of(f) == ITEM_AGE_VIEW for f in wanted):
        projections.append(item_age)
    service = FeatureService(
        name=FEATURE_SERVICE_NAME,
        features=projections,
        description="What the base ranker reads; models record this name.",
        tags={"version": str(FEATURE_SERVICE_VERSION)},
    )
    return Declarations(
        entities=(user, item),
        sources=tuple(sources),
        feature_views=tuple(views.values()),
        on_demand_views=(item_age,),
        feature_services=(service,),
    )
