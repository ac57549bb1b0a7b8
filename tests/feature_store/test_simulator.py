"""The simulator is deterministic, well-formed, and drifts the way freshness needs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from feature_store.simulate import SimulatorConfig, iter_simulation, simulate
from protos.events import EVENTS_SCHEMA

SMALL = SimulatorConfig(days=4, impressions_per_day=3_000, n_users=300, items_per_day=60, initial_items=50)


@pytest.fixture(scope="module")
def log() -> pd.DataFrame:
    return simulate(SMALL).to_pandas()


def test_same_seed_same_log_regardless_of_chunking_and_another_seed_differs() -> None:
    cfg = SimulatorConfig(days=1, impressions_per_day=2_000, n_users=100)
    a = simulate(cfg)
    b = pa.concat_tables(list(iter_simulation(cfg, hours_per_chunk=1)))
    assert a.equals(b)
    c = simulate(SimulatorConfig(days=1, impressions_per_day=2_000, n_users=100, seed=8))
    assert not a.equals(c)


def test_the_log_is_a_well_formed_impressions_log(log: pd.DataFrame) -> None:
    assert list(log.columns) == EVENTS_SCHEMA.names
    assert log["ts"].is_monotonic_increasing
    assert log["ts"].min() >= pd.Timestamp(SMALL.start) and log["ts"].max() < pd.Timestamp(SMALL.end)
    slates = log.groupby("request_id")
    assert (slates["user_id"].nunique() == 1).all() and (slates["ts"].nunique() == 1).all()
    assert (slates["item_id"].nunique() == slates.size()).all()  # no item twice in a slate
    # positions are 0..k-1 within every slate
    assert (slates["position"].max() + 1 == slates.size()).all()
    assert log["position"].max() == SMALL.slate_size - 1
    assert log["true_ctr"].between(0, 1, inclusive="neither").all()
    assert set(log["label"].unique()) <= {0.0, 1.0}
    assert log["item_category"].notna().all()
    # a few percent CTR, and labels follow the true click probability
    assert 0.01 < log["label"].mean() < 0.08
    assert abs(log["label"].mean() - log["true_ctr"].mean()) < 0.005


def test_position_bias_lowers_ctr_down_the_slate(log: pd.DataFrame) -> None:
    by_pos = log.groupby("position")["true_ctr"].mean()
    assert by_pos.is_monotonic_decreasing
    assert by_pos.iloc[0] > 2 * by_pos.iloc[-1]


def test_new_items_keep_arriving_so_an_old_model_has_not_seen_most_of_todays_items(log: pd.DataFrame) -> None:
    day = log["ts"].dt.floor("D")
    first_day_items = set(log.loc[day == day.min(), "item_id"])
    last_day = log[day == day.max()]
    unseen = ~last_day["item_id"].isin(first_day_items)
    assert unseen.mean() > 0.5
    first_seen = log.groupby("item_id")["ts"].min().dt.floor("D").value_counts()
    assert (first_seen >= 30).all()  # dozens of new items every day


def test_bursts_lift_an_items_traffic_and_click_rate_within_hours(log: pd.DataFrame) -> None:
    by_hour = log.assign(hour=log["ts"].dt.floor("h"))
    slates_per_hour = by_hour.groupby("hour")["request_id"].nunique()
    share = by_hour.groupby(["hour", "item_id"]).size() / slates_per_hour
    # some item is in most of an hour's slates (a breaking story); typical items are not
    assert share.max() > 0.5
    assert share.median() < 0.3
    top = share.idxmax()[1]
    rows = log[log["item_id"] == top]
    peak = rows["ts"].dt.floor("h") == share.idxmax()[0]
    assert rows.loc[peak, "true_ctr"].mean() > log["true_ctr"].mean()


def test_user_category_taste_is_learnable_structure_that_drifts_slowly() -> None:
    cfg = SimulatorConfig(days=14, impressions_per_day=4_000, n_users=60, n_categories=4, items_per_day=40)
    frame = simulate(cfg).to_pandas()
    # Position-corrected true CTR per (user, category) in week 1 vs week 2.
    frame["adj"] = frame["true_ctr"] * (1.0 + frame["position"]) ** cfg.position_decay
    week = (frame["ts"] - pd.Timestamp(cfg.start)).dt.days // 7
    taste = frame.groupby([week, "user_id", "item_category"])["adj"].mean().unstack(0).dropna()
    corr = np.corrcoef(np.log(taste[0]), np.log(taste[1]))[0, 1]
    assert corr > 0.5


def test_bad_settings_are_rejected_with_the_setting_named() -> None:
    with pytest.raises(ValueError, match="days"):
        SimulatorConfig(days=0)
    with pytest.raises(ValueError, match="base_ctr"):
        SimulatorConfig(base_ctr=1.5)
    with pytest.raises(ValueError, match=r"unknown \[simulate\] key\(s\): dayz"):
        SimulatorConfig.from_dict({"dayz": 3})


def _burst_traffic_ratio(cfg: SimulatorConfig, log: pd.DataFrame) -> float:
    """Impressions per hour of bursting items inside their burst over the same items in
    the equally long span just after it (the world is the simulator's own)."""
    from feature_store.simulate import _build_world

    world = _build_world(cfg)
    hours = (log["ts"] - pd.Timestamp(cfg.start)).dt.total_seconds().to_numpy() / 3600.0
    index = log["item_id"].str[1:].astype(int).to_numpy()
    start = world.burst_start_h[index]
    with np.errstate(invalid="ignore"):
        inside = (hours >= start) & (hours < start + cfg.burst_hours)
        after = (hours >= start + cfg.burst_hours) & (hours < start + 2 * cfg.burst_hours)
    return float(inside.sum() / max(after.sum(), 1))


def test_a_blind_logging_policy_does_not_leak_the_burst_state_through_traffic() -> None:
    """``logging_policy="blind"``: traffic follows popularity and age only, so a burst shows
    only in its clicks, not in how often the item is shown; the world (items, users, bursts,
    the click model) is the same as with the default policy."""
    blind_cfg = SimulatorConfig(**{**SMALL.__dict__, "logging_policy": "blind"})
    blind = simulate(blind_cfg).to_pandas()
    hidden = simulate(SMALL).to_pandas()
    assert _burst_traffic_ratio(SMALL, hidden) > 4.0
    assert _burst_traffic_ratio(blind_cfg, blind) < 2.0
    # Same catalogue and click model: an item shown at the same time and position to the
    # same user gets the same true click probability under either policy.
    keys = ["user_id", "item_id", "position", "ts"]
    both = hidden.merge(blind, on=keys, suffixes=("_h", "_b"))
    assert len(both) > 0
    np.testing.assert_allclose(both["true_ctr_h"], both["true_ctr_b"], rtol=1e-6)


def test_burst_spread_makes_bursts_item_specific_and_leaves_the_default_world_alone() -> None:
    spread = SimulatorConfig(**{**SMALL.__dict__, "burst_ctr_spread": 1.0})
    a, b = simulate(SMALL), simulate(spread)
    # Only clicks inside bursts change: the same impressions are drawn (same streams).
    assert a.column("item_id").equals(b.column("item_id"))
    assert a.column("user_id").equals(b.column("user_id"))
    changed = ~np.isclose(a.column("true_ctr").to_numpy(), b.column("true_ctr").to_numpy())
    assert 0 < changed.mean() < 0.5


def test_the_learnable_freshness_preset_is_a_valid_config_with_overrides() -> None:
    cfg = SimulatorConfig.learnable_freshness(days=2, n_users=50)
    assert cfg.logging_policy == "blind" and cfg.burst_ctr_spread > 0 and cfg.days == 2
    with pytest.raises(ValueError, match="logging_policy"):
        SimulatorConfig(logging_policy="oracle")
