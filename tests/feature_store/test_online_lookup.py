"""The fast online lookup returns exactly what Feast's get_online_features returns."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from tests.feature_store.fs_testkit import Workspace

from feature_store import repo
from feature_store.catalog import FEATURE_SERVICE_NAME, ITEM_FEATURES, USER_FEATURES
from feature_store.config import FeatureStoreConfig
from feature_store.errors import WorkspaceError
from feature_store.online import OnlineFeatureReader, RankFeatures, entity_key_bytes
from feature_store.views import REQUEST_TIME_FIELD, default_value


def feast_answer(cfg: FeatureStoreConfig, user: str, items: list[str], now: float) -> RankFeatures:
    """Feast's own get_online_features by the service, with the documented defaults applied."""
    store = repo.open_store(cfg)
    rows = [{"user_id": user, "item_id": i, REQUEST_TIME_FIELD: now} for i in items]
    got = store.get_online_features(features=store.get_feature_service(FEATURE_SERVICE_NAME), entity_rows=rows).to_dict()
    cats = store.get_online_features(features=["item_profile:item_category"], entity_rows=[{"item_id": i} for i in items]).to_dict()

    def column(name: str) -> np.ndarray:
        return np.array([default_value(name, cfg.ctr_prior) if v is None else v for v in got[name]], dtype=np.float32)

    return RankFeatures(
        user=np.array([column(f)[0] for f in USER_FEATURES], dtype=np.float32),
        items=np.stack([column(f) for f in ITEM_FEATURES], axis=1),
        user_found=got["user_imp_30d"][0] is not None,
        items_found=np.array([v is not None for v in got["item_imp_7d"]]),
        item_categories=tuple(c or "" for c in cats["item_category"]),
    )


@pytest.fixture(scope="module")
def known(feature_ws: Workspace) -> tuple[str, list[str]]:
    frame = feature_ws.events.to_pandas()
    users = frame["user_id"].value_counts().index
    items = list(dict.fromkeys(frame["item_id"].iloc[::-1]))  # most recent first
    return users[0], items


def test_the_serialized_entity_key_is_feasts() -> None:
    from feast.infra.key_encoding_utils import serialize_entity_key
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value

    for value in ("i0001", "", "ünïcödé-item", "x" * 300):
        proto = EntityKey(join_keys=["item_id"], entity_values=[Value(string_val=value)])
        assert entity_key_bytes("item_id", value) == serialize_entity_key(proto, entity_key_serialization_version=3)


def test_one_user_and_100_items_equal_feasts_answer_with_unknowns_and_duplicates(
    feature_ws: Workspace, known: tuple[str, list[str]]
) -> None:
    user, items = known
    candidates = items[:96] + ["never-seen-1", items[3], "never-seen-2", items[0]]
    now = feature_ws.end.timestamp() + 1_800

    with OnlineFeatureReader(feature_ws.cfg) as reader:
        ours = reader.get(user, candidates, now=now)
    feast = feast_answer(feature_ws.cfg, user, candidates, now)

    assert ours.user.dtype == np.float32 and ours.user.shape == (len(USER_FEATURES),)
    assert ours.items.dtype == np.float32 and ours.items.shape == (100, len(ITEM_FEATURES))
    np.testing.assert_array_equal(ours.user, feast.user)
    np.testing.assert_array_equal(ours.items, feast.items)
    assert ours.user_found and feast.user_found
    np.testing.assert_array_equal(ours.items_found, feast.items_found)
    assert ours.item_categories == feast.item_categories
    # the case mix is real: known and unknown items, non-trivial values
    assert ours.items_found[:96].all() and not ours.items_found[[96, 98]].any()
    assert (ours.items[:, ITEM_FEATURES.index("item_imp_7d")] > 0).sum() > 50
    assert all(c.startswith("cat") for c in ours.item_categories[:96])
    np.testing.assert_array_equal(ours.items[97], ours.items[3])  # duplicates answered alike


def test_unknown_user_and_items_get_documented_defaults_and_flags(feature_ws: Workspace) -> None:
    with OnlineFeatureReader(feature_ws.cfg) as reader:
        got = reader.get("stranger", ["ghost", "phantom"], now=feature_ws.end)
    prior = np.float32(feature_ws.cfg.ctr_prior)
    expected_user = [prior if "_ctr_" in f else 0.0 for f in USER_FEATURES]
    np.testing.assert_array_equal(got.user, np.array(expected_user, dtype=np.float32))
    expected_item = [prior if "_ctr_" in f else 0.0 for f in ITEM_FEATURES]
    np.testing.assert_array_equal(got.items, np.array([expected_item] * 2, dtype=np.float32))
    assert not got.user_found and not got.items_found.any()
    assert got.item_categories == ("", "")
    empty = OnlineFeatureReader(feature_ws.cfg).get("stranger", [])
    assert empty.items.shape == (0, len(ITEM_FEATURES))


def test_a_reader_needs_an_applied_store_and_string_ids(feature_ws: Workspace, tmp_path) -> None:
    with pytest.raises(WorkspaceError, match="apply"):
        OnlineFeatureReader(FeatureStoreConfig(workspace=tmp_path))
    with OnlineFeatureReader(feature_ws.cfg) as reader, pytest.raises(TypeError, match="item_ids"):
        reader.get("u", [1, 2])  # type: ignore[list-item]


def test_item_age_uses_the_request_time(feature_ws: Workspace, known: tuple[str, list[str]]) -> None:
    user, items = known
    age = ITEM_FEATURES.index("item_age_hours")
    with OnlineFeatureReader(feature_ws.cfg) as reader:
        a = reader.get(user, items[:5], now=feature_ws.end.timestamp())
        b = reader.get(user, items[:5], now=feature_ws.end.timestamp() + 7_200)
    np.testing.assert_allclose(b.items[:, age] - a.items[:, age], 2.0, rtol=1e-5)
    assert isinstance(pa.array(a.item_categories), pa.Array)
