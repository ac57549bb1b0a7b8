"""Backtest settings: durations, validation, schedules."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from protos.timeparse import TimeParseError, format_duration, parse_duration, parse_time
from serving.backtest.config import BacktestConfig
from serving.backtest.errors import BacktestSettingsError
from serving.backtest.policies import retrain_times


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("7d", timedelta(days=7)),
        ("2d", timedelta(days=2)),
        ("36h", timedelta(hours=36)),
        ("1d12h", timedelta(hours=36)),
        ("90m", timedelta(minutes=90)),
        ("1w", timedelta(days=7)),
        ("0.5d", timedelta(hours=12)),
    ],
)
def test_parse_duration(text, expected):
    """The backtest's cadences take the one duration grammar (protos.timeparse)."""
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "7", "d", "7x", "7d 3", "-1d", "0d", "7dd"])
def test_parse_duration_rejects(text):
    with pytest.raises(TimeParseError):
        parse_duration(text)
    with pytest.raises(BacktestSettingsError):  # a setting with it names the setting
        BacktestConfig.from_dict({"warmup": text})


def test_format_duration_round_trips():
    for text in ("7d", "36h", "90m", "45s"):
        assert format_duration(parse_duration(text)) == text


def test_parse_time_is_utc():
    assert parse_time("2018-01-01") == datetime(2018, 1, 1, tzinfo=UTC)
    with pytest.raises(TimeParseError, match="ISO 8601"):
        parse_time("yesterday")
    with pytest.raises(BacktestSettingsError, match="ISO 8601"):
        BacktestConfig.from_dict({"start": "yesterday"})


def test_config_from_dict_and_validation():
    cfg = BacktestConfig.from_dict({"warmup": "2d", "base_every": "2d", "start": "2019-11-24"})
    assert cfg.warmup == timedelta(days=2)
    assert cfg.start == datetime(2019, 11, 24, tzinfo=UTC)
    assert cfg.to_json()["base_every"] == "2d"
    with pytest.raises(BacktestSettingsError, match="unknown"):
        BacktestConfig.from_dict({"warm_up": "2d"})
    with pytest.raises(BacktestSettingsError, match="ceiling"):
        BacktestConfig(base_every=timedelta(hours=12))
    with pytest.raises(BacktestSettingsError, match="not before"):
        BacktestConfig.from_dict({"start": "2019-11-25", "end": "2019-11-24"})
    with pytest.raises(BacktestSettingsError, match="section"):
        BacktestConfig(tier_settings={"basemodel": {}})


def test_retrain_times():
    t0 = datetime(2024, 1, 3, tzinfo=UTC)
    assert retrain_times(t0, t0 + timedelta(days=4), timedelta(days=2)) == [
        t0,
        t0 + timedelta(days=2),
    ]
    assert len(retrain_times(t0, t0 + timedelta(days=4), timedelta(days=1))) == 4
