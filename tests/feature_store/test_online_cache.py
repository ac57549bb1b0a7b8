"""The online reader's cache of decoded rows never changes an answer: a reader that caches
answers as one that reads the store every time, also right after a write to the store."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from tests.feature_store.fs_testkit import Workspace

from feature_store.catalog import FRESH_ITEM_FEATURES, ITEM_FEATURES
from feature_store.online import OnlineFeatureReader, RankFeatures
from feature_store.push import FreshCounterPusher
from feature_store.views import AGE_FEATURE

FRESH = [ITEM_FEATURES.index(f) for f in FRESH_ITEM_FEATURES]


def assert_same(a: RankFeatures, b: RankFeatures) -> None:
    np.testing.assert_array_equal(a.user, b.user)
    np.testing.assert_array_equal(a.items, b.items)
    assert a.user_found == b.user_found
    assert a.items_found.tolist() == b.items_found.tolist()
    assert a.item_categories == b.item_categories


@pytest.fixture(scope="module")
def candidates(feature_ws: Workspace) -> tuple[str, list[str]]:
    frame = feature_ws.events.to_pandas()
    items = list(dict.fromkeys(frame["item_id"].iloc[::-1]))[:40]
    return str(frame["user_id"].value_counts().index[0]), items + ["cache-a", items[2], "cache-b", "never-seen"]


def test_a_cached_reader_answers_as_an_uncached_one_and_sees_a_push_at_the_next_lookup(
    feature_ws: Workspace, candidates: tuple[str, list[str]]
) -> None:
    cfg = feature_ws.cfg
    user, items = candidates
    now = feature_ws.end.timestamp() + 1_800
    cached, uncached = OnlineFeatureReader(cfg), OnlineFeatureReader(cfg, cache_items=0)
    first = cached.get(user, items, now=now)
    assert_same(first, uncached.get(user, items, now=now))
    assert_same(cached.get(user, items, now=now), first)  # answered from the cache
    assert not first.items_found[items.index("cache-a")]

    t0 = pd.Timestamp(feature_ws.end) + pd.Timedelta(minutes=25)
    pushed = FreshCounterPusher(cfg).observe(
        pa.table({
            "item_id": ["cache-a", "cache-a", "cache-b"],
            "ts": pa.array([t0] * 3, pa.timestamp("us", tz="UTC")),
            "label": pa.array([1, 0, 1], pa.float32()),
        })
    )
    assert pushed == 2
    after = cached.get(user, items, now=now)  # another connection wrote: the cache is dropped
    assert_same(after, uncached.get(user, items, now=now))
    a = items.index("cache-a")
    assert after.items_found[a] and after.items_found[items.index("cache-b")]
    np.testing.assert_allclose(after.items[a, FRESH], [2, 1, cfg.smoothed_ctr(1.0, 2.0)], rtol=1e-6)


def test_item_ages_follow_the_request_time_when_rows_come_from_the_cache(
    feature_ws: Workspace, candidates: tuple[str, list[str]]
) -> None:
    user, items = candidates
    now = feature_ws.end.timestamp() + 600
    reader = OnlineFeatureReader(feature_ws.cfg)
    age = ITEM_FEATURES.index(AGE_FEATURE)
    early = reader.get(user, items, now=now)
    later = reader.get(user, items, now=now + 7_200)
    profiled = early.items[:, age] > 0
    assert profiled.any()
    np.testing.assert_allclose(later.items[profiled, age] - early.items[profiled, age], 2.0, atol=1e-3)
    assert_same(later, OnlineFeatureReader(feature_ws.cfg, cache_items=0).get(user, items, now=now + 7_200))


def test_a_cache_smaller_than_one_request_still_answers_every_item(
    feature_ws: Workspace, candidates: tuple[str, list[str]]
) -> None:
    user, items = candidates
    now = feature_ws.end.timestamp() + 900
    small = OnlineFeatureReader(feature_ws.cfg, cache_items=3)
    expected = OnlineFeatureReader(feature_ws.cfg, cache_items=0).get(user, items, now=now)
    for _ in range(3):
        assert_same(small.get(user, items, now=now), expected)
    with pytest.raises(ValueError, match="cache_items"):
        OnlineFeatureReader(feature_ws.cfg, cache_items=-1)
