"""Public datasets become events, sorted by time, with the documented conventions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from feature_store.errors import UnknownDatasetError
from feature_store.importers import import_dataset
from protos.events import EVENTS_SCHEMA

pytestmark = pytest.mark.shared_data


def check_sorted_events(table) -> pd.DataFrame:
    assert table.schema == EVENTS_SCHEMA
    frame = table.to_pandas()
    assert frame["ts"].is_monotonic_increasing
    assert frame["label"].isin([0.0, 1.0]).all()
    return frame


@pytest.mark.parametrize(
    ("name", "rows", "users", "items"),
    [("ml-100k", 100_000, 943, 1_682), ("ml-latest-small", 100_836, 610, 9_724), ("amazon-magazine", 89_689, 72_098, 2_428)],
)
def test_ratings_become_impressions_with_label_rating_at_least_4(
    shared_data: Path, name: str, rows: int, users: int, items: int
) -> None:
    frame = check_sorted_events(import_dataset(name, shared_data / name))
    assert len(frame) == rows
    assert frame["user_id"].nunique() == users and frame["item_id"].nunique() == items
    assert frame["request_id"].isna().all() and frame["position"].isna().all()


def test_ml_100k_labels_and_genres_match_the_source_files(shared_data: Path) -> None:
    frame = check_sorted_events(import_dataset("ml-100k", shared_data / "ml-100k"))
    raw = pd.read_csv(shared_data / "ml-100k" / "u.data", sep="\t", header=None, names=["u", "i", "r", "t"])
    assert frame["label"].sum() == (raw["r"] >= 4).sum()
    toy_story = frame.loc[frame["item_id"] == "1", "item_category"].unique()
    assert list(toy_story) == ["Animation"]  # first set flag in u.genre order
    # ties keep file order: the rows at the first second appear as in u.data
    first_t = raw["t"].min()
    assert list(frame.loc[frame["ts"] == pd.Timestamp(first_t, unit="s", tz="UTC"), "item_id"]) == list(
        raw.loc[raw["t"] == first_t, "i"].astype(str)
    )


def test_ml_latest_small_takes_the_first_listed_genre(shared_data: Path) -> None:
    frame = import_dataset("ml-latest-small", shared_data / "ml-latest-small").to_pandas()
    assert set(frame.loc[frame["item_id"] == "1", "item_category"]) == {"Adventure"}
    assert frame["label"].mean() == pytest.approx((pd.read_csv(shared_data / "ml-latest-small" / "ratings.csv")["rating"] >= 4).mean())


def test_open_bandit_clicks_positions_and_derived_user_ids(shared_data: Path) -> None:
    frame = check_sorted_events(import_dataset("open-bandit", shared_data / "open-bandit"))
    assert len(frame) == 20_000  # random/ and bts/
    assert set(frame["position"]) == {0, 1, 2}
    assert frame["user_id"].str.fullmatch(r"obd-[0-9a-f]{12}").all()
    assert 200 < frame["user_id"].nunique() < 1_000
    assert frame["request_id"].str.match(r"(random|bts)-\d+").all()
    assert frame["item_category"].notna().all() and frame["item_category"].nunique() == 12
    assert frame["item_category"].str.fullmatch(r"obd-cat-\d+").all()
    assert 0.001 < frame["label"].mean() < 0.01
    # The logging propensities are kept: 1/80 for the uniformly random policy.
    random_rows = frame["request_id"].str.startswith("random-")
    assert np.allclose(frame.loc[random_rows, "propensity"], 1 / 80)
    assert frame["propensity"].between(0, 1, inclusive="right").all()
    only_random = import_dataset("open-bandit", shared_data / "open-bandit" / "random").to_pandas()
    assert len(only_random) == 10_000
    assert np.isin(only_random["user_id"], frame["user_id"]).all()  # same scheme, same ids


def test_unknown_names_and_missing_files_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(UnknownDatasetError, match="unknown dataset 'movielens'"):
        import_dataset("movielens", tmp_path)
    with pytest.raises(UnknownDatasetError, match="u.data"):
        import_dataset("ml-100k", tmp_path)
    with pytest.raises(UnknownDatasetError, match="not a folder"):
        import_dataset("ml-100k", tmp_path / "nope")
