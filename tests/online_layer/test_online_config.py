"""The [online_layer] settings: checked at start-up, unknown keys refused."""

from __future__ import annotations

from dataclasses import asdict

import pytest

from online_layer.config import OnlineLayerConfig


def test_defaults_round_trip_through_a_mapping() -> None:
    cfg = OnlineLayerConfig()
    assert OnlineLayerConfig.from_dict(asdict(cfg)) == cfg
    assert cfg.ftrl_params() == {"alpha": 0.05, "beta": 1.0, "l1": 0.5, "l2": 1.0}


def test_an_unknown_key_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="alpah"):
        OnlineLayerConfig.from_dict({"alpah": 0.1})


@pytest.mark.parametrize(
    "settings, name",
    [
        ({"alpha": 0}, "alpha"),
        ({"alpha": True}, "alpha"),
        ({"l1": -0.1}, "l1"),
        ({"l2": float("inf")}, "l2"),
        ({"hash_bits": 31}, "hash_bits"),
        ({"batch_size": 0}, "batch_size"),
        ({"join_window_s": 0}, "join_window_s"),
        ({"implementation": "rust"}, "implementation"),
        ({"emit": "sometimes"}, "emit"),
        ({"replay_fraction": 5}, "replay_fraction"),
        ({"position_buckets": 1}, "position_buckets"),
        ({"implicit_negatives": "yes"}, "implicit_negatives"),
    ],
)
def test_a_bad_value_is_refused_by_name(settings: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        OnlineLayerConfig.from_dict(settings)
