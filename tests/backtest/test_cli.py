"""``freshrank backtest`` flags -> BacktestConfig, and the errors a user sees."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime, timedelta

import pytest

from serving.backtest.cli import config_from_args
from serving.backtest.errors import BacktestSettingsError
from serving.cli import build_parser


def _parse(*argv: str) -> argparse.Namespace:
    """``freshrank backtest ...`` as the root command parses it (``--config`` is the root's,
    accepted after the subcommand too)."""
    return build_parser().parse_args(["backtest", *argv])


def test_defaults_and_flags():
    cfg = config_from_args(_parse("--events", "x.parquet"))
    assert (cfg.warmup, cfg.base_every, cfg.daily_every) == (
        timedelta(days=14), timedelta(days=7), timedelta(days=1)
    )
    cfg = config_from_args(
        _parse("--events", "x.parquet", "--base-every", "2d", "--warmup", "36h", "--start", "2019-11-24",
               "--max-events", "500", "--seed", "3", "--series-every", "7d")
    )
    assert cfg.base_every == timedelta(days=2) and cfg.warmup == timedelta(hours=36)
    assert cfg.start == datetime(2019, 11, 24, tzinfo=UTC)
    assert (cfg.max_events, cfg.seed, cfg.series_every) == (500, 3, timedelta(days=7))


def test_set_overrides_reach_the_tier_sections():
    cfg = config_from_args(
        _parse("--events", "x", "--set", "base_model.epochs=1", "--set", "online_layer.alpha=0.2",
               "--set", "base_model.hidden_layers=[16, 8]")
    )
    assert cfg.tier_settings == {"base_model": {"epochs": 1, "hidden_layers": [16, 8]},
                                 "online_layer": {"alpha": 0.2}}


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--set", "serving.grpc_port=1"], "unknown section"),
        (["--set", "epochs=1"], "SECTION.KEY=VALUE"),
        (["--config", "/nonexistent/freshrank.toml"], "no such file"),
        (["--base-every", "12h"], "ceiling"),
    ],
)
def test_bad_settings_name_the_problem(argv, message):
    with pytest.raises(BacktestSettingsError, match=message):
        config_from_args(_parse("--events", "x", *argv))


def test_bad_duration_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit):
        _parse("--events", "x", "--warmup", "two weeks")
    assert "bad duration" in capsys.readouterr().err


def test_unknown_tier_key_is_rejected_by_the_tier(tmp_path):
    """Tier keys are checked by the tiers' own from_dict, through serving.settings."""
    from serving.backtest.tiers import tier_settings

    cfg = config_from_args(_parse("--events", "x", "--set", "base_model.epoch=1"))
    with pytest.raises(ValueError, match="epoch"):
        tier_settings(tmp_path, cfg)
