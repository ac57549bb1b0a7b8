"""``BaseModelConfig``: validated, frozen, read from a TOML section, round-trips through a dict."""

from __future__ import annotations

import dataclasses

import pytest

from base_model.config import BaseModelConfig
from base_model.errors import ConfigError


def test_defaults_are_valid_and_round_trip_through_a_plain_dict() -> None:
    cfg = BaseModelConfig()
    assert BaseModelConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.use_gpu == "auto" and cfg.warm_start and cfg.train_days == 7
    # Measured defaults (bench/RESULTS.md, "Base ranker training"): early stopping on the validation day and
    # the best point exported; L2 on the id rows a batch uses; categories hashed.
    assert cfg.keep_best and cfg.early_stopping_patience == 2 and cfg.epochs == 50
    # A warm start trains fewer epochs: a lower cap and one epoch of patience.
    assert cfg.warm_epochs < cfg.epochs and cfg.warm_early_stopping_patience == 1
    assert cfg.embedding_l2 > 0 and cfg.category_buckets > 0 and cfg.min_valid_rows == 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.epochs = 9  # type: ignore[misc]


def test_toml_values_are_accepted() -> None:
    cfg = BaseModelConfig.from_dict(
        {
            "hidden_layers": [128, 64],
            "use_gpu": "true",
            "epochs": 5,
            "drift_exclude": ["item_age_hours", "user_imp_30d"],
        }
    )
    assert cfg.hidden_layers == (128, 64) and cfg.use_gpu is True and cfg.epochs == 5
    assert cfg.drift_exclude == ("item_age_hours", "user_imp_30d")


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"epoch": 3}, "unknown \\[base_model\\] key\\(s\\): epoch"),
        ({"embedding_dim": 0}, "embedding_dim must be >= 1, got 0"),
        ({"embedding_dim": 8.5}, "embedding_dim must be an int"),
        ({"learning_rate": 0.0}, "learning_rate must be > 0.0"),
        ({"use_gpu": "maybe"}, "use_gpu must be 'auto', true or false"),
        ({"placement_strategy": "spread"}, "placement_strategy must be one of PACK, SPREAD"),
        ({"hidden_layers": [64, -1]}, "hidden_layers must be a tuple of positive ints"),
        ({"confidence": 1.0}, "confidence must be < 1.0"),
        ({"oov_dropout": float("nan")}, "oov_dropout must be finite"),
        ({"warm_start": "yes"}, "warm_start must be true or false"),
        ({"keep_best": 1}, "keep_best must be true or false"),
        ({"category_buckets": -1}, "category_buckets must be >= 0, got -1"),
        ({"early_stopping_patience": -1}, "early_stopping_patience must be >= 0"),
        ({"warm_early_stopping_patience": -1}, "warm_early_stopping_patience must be >= 0"),
        ({"min_valid_rows": -1}, "min_valid_rows must be >= 0, got -1"),
        ({"embedding_l2": -0.1}, "embedding_l2 must be >= 0.0"),
    ],
)
def test_bad_values_name_the_field(values: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        BaseModelConfig.from_dict(values)


def test_config_errors_are_value_errors() -> None:
    assert issubclass(ConfigError, ValueError)
    with pytest.raises(ConfigError, match="must be a table"):
        BaseModelConfig.from_dict([("epochs", 3)])  # type: ignore[arg-type]
