"""Feedback pushed through the Feast PushSource is visible to serving at once."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from tests.feature_store.fs_testkit import Workspace

from feature_store import repo
from feature_store.catalog import FRESH_ITEM_FEATURES, ITEM_FEATURES
from feature_store.errors import EventsFormatError
from feature_store.online import OnlineFeatureReader
from feature_store.push import FreshCounterPusher

FRESH = [ITEM_FEATURES.index(f) for f in FRESH_ITEM_FEATURES]


def feedback(items: list[str], at: pd.Timestamp, labels: list[float]) -> pa.Table:
    return pa.table(
        {
            "item_id": items,
            "ts": pa.array([at] * len(items), pa.timestamp("us", tz="UTC")),
            "label": pa.array(labels, pa.float32()),
        }
    )


def test_observed_feedback_shows_up_in_the_next_lookup_and_leaves_after_an_hour(feature_ws: Workspace) -> None:
    cfg = feature_ws.cfg
    t0 = pd.Timestamp(feature_ws.end) + pd.Timedelta(minutes=20)
    reader = OnlineFeatureReader(cfg)
    pusher = FreshCounterPusher(cfg)

    pushed = pusher.observe(feedback(["breaking"] * 4 + ["quiet"], t0, [1, 1, 0, 1, 0]))
    assert pushed == 2
    got = reader.get("someone", ["breaking", "quiet", "other"], now=t0.timestamp())
    ctr = cfg.smoothed_ctr(3.0, 4.0)
    np.testing.assert_allclose(got.items[0, FRESH], [4, 3, ctr], rtol=1e-6)
    np.testing.assert_allclose(got.items[1, FRESH], [1, 0, cfg.smoothed_ctr(0.0, 1.0)], rtol=1e-6)
    assert got.items_found.tolist() == [True, True, False]  # pushed counters make an item known

    # Feast's own online read agrees with what the reader saw.
    store = repo.open_store(cfg)
    feast = store.get_online_features(
        features=[f"item_fresh:{f}" for f in FRESH_ITEM_FEATURES], entity_rows=[{"item_id": "breaking"}]
    ).to_dict()
    np.testing.assert_array_equal(
        np.array([feast[f][0] for f in FRESH_ITEM_FEATURES], dtype=np.float32), got.items[0, FRESH]
    )

    # 70 minutes later only the new click is in the window; 'breaking' and 'quiet' drop to zero.
    pushed = pusher.observe(feedback(["quiet"], t0 + pd.Timedelta(minutes=70), [1]))
    assert pushed == 2
    got = reader.get("someone", ["breaking", "quiet"], now=t0.timestamp())
    np.testing.assert_allclose(got.items[0, FRESH], [0, 0, cfg.ctr_prior], rtol=1e-6)
    np.testing.assert_allclose(got.items[1, FRESH], [1, 1, cfg.smoothed_ctr(1.0, 1.0)], rtol=1e-6)
    assert pusher.counters() == {"quiet": (1.0, 1.0)}
    assert pusher.now == (t0 + pd.Timedelta(minutes=70)).to_pydatetime()
    # Nothing changed: nothing is pushed.
    assert pusher.observe(feedback([], t0, [])) == 0


def test_bad_feedback_is_refused_before_anything_is_pushed(feature_ws: Workspace) -> None:
    pusher = FreshCounterPusher(feature_ws.cfg)
    at = pd.Timestamp(feature_ws.end)
    with pytest.raises(EventsFormatError, match="label"):
        pusher.observe(feedback(["x", "y"], at, [0.0, float("nan")]))
    with pytest.raises(EventsFormatError, match="item_id"):
        pusher.observe(pa.table({"ts": pa.array([at], pa.timestamp("us", tz="UTC")), "label": [1.0]}))
    assert pusher.counters() == {}
