"""The one duration grammar and the one time parser (``protos.timeparse``), and the code
version both tiers record (``protos.code_version``)."""

from __future__ import annotations

import argparse
import doctest
from datetime import UTC, datetime, timedelta, timezone

import pytest

from protos import code_version as code_version_module
from protos import timeparse
from protos.errors import InvalidInput
from protos.timeparse import TimeParseError, floor_hour, format_duration, parse_duration, parse_time


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("7d", timedelta(days=7)),
        ("36h", timedelta(hours=36)),
        ("1d12h", timedelta(hours=36)),
        ("90m", timedelta(minutes=90)),
        ("45s", timedelta(seconds=45)),
        ("2w", timedelta(days=14)),
        ("0.5d", timedelta(hours=12)),
        (" 7D ", timedelta(days=7)),
        ("1d 12h", timedelta(hours=36)),
    ],
)
def test_durations(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "7", "d", "week", "7x", "7d 3", "-1h", "0d", "7dd", "1.d"])
def test_bad_durations_are_refused_with_the_fix(text: str) -> None:
    with pytest.raises(TimeParseError) as caught:
        parse_duration(text)
    assert "e.g. 7d" in str(caught.value) or "positive" in str(caught.value)


def test_the_error_is_invalid_input_and_an_argparse_type_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert issubclass(TimeParseError, InvalidInput) and issubclass(TimeParseError, ValueError)
    assert issubclass(TimeParseError, argparse.ArgumentTypeError)
    parser = argparse.ArgumentParser(prog="p")
    parser.add_argument("--every", type=parse_duration)
    with pytest.raises(SystemExit):
        parser.parse_args(["--every", "week"])
    assert "bad duration 'week'" in capsys.readouterr().err


def test_format_duration_round_trips() -> None:
    for text in ("7d", "36h", "90m", "45s"):
        assert format_duration(parse_duration(text)) == text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2018-01-01", datetime(2018, 1, 1, tzinfo=UTC)),
        ("2026-01-05T12:30", datetime(2026, 1, 5, 12, 30, tzinfo=UTC)),
        ("2026-01-05T12:30:00Z", datetime(2026, 1, 5, 12, 30, tzinfo=UTC)),
        ("2026-01-05T13:30:00+01:00", datetime(2026, 1, 5, 12, 30, tzinfo=UTC)),
        ("1767615000", datetime(2026, 1, 5, 12, 10, tzinfo=UTC)),
        ("1767615000.5", datetime(2026, 1, 5, 12, 10, 0, 500000, tzinfo=UTC)),
    ],
)
def test_times_are_aware_utc(text: str, expected: datetime) -> None:
    parsed = parse_time(text)
    assert parsed == expected and parsed.tzinfo == UTC


def test_now_and_datetimes() -> None:
    before = datetime.now(UTC)
    assert before <= parse_time("now") <= datetime.now(UTC)
    naive = datetime(2026, 1, 5, 12)
    assert parse_time(naive) == naive.replace(tzinfo=UTC)
    plus_two = datetime(2026, 1, 5, 14, tzinfo=timezone(timedelta(hours=2)))
    assert parse_time(plus_two).tzinfo == UTC and parse_time(plus_two).hour == 12


@pytest.mark.parametrize("text", ["", "yesterday", "2026-13-01", "nan", "1e400", "12:00"])
def test_bad_times_are_refused_with_the_fix(text: str) -> None:
    with pytest.raises(TimeParseError, match="ISO 8601"):
        parse_time(text)


def test_floor_hour() -> None:
    assert floor_hour(parse_time("2026-01-05T12:59:59.9Z")) == datetime(2026, 1, 5, 12, tzinfo=UTC)


def test_doctests_run() -> None:
    for module in (timeparse, code_version_module):
        result = doctest.testmod(module)
        assert result.attempted > 0 and result.failed == 0, module.__name__


def test_code_version_hashes_every_package(tmp_path) -> None:  # noqa: ANN001
    (tmp_path / "base_model").mkdir()
    (tmp_path / "serving").mkdir()
    (tmp_path / "base_model" / "a.py").write_text("x = 1\n")
    first = code_version_module.source_digest(root=tmp_path)
    (tmp_path / "serving" / "b.py").write_text("y = 2\n")
    second = code_version_module.source_digest(root=tmp_path)
    assert first.startswith("src:") and first != second
    assert code_version_module.code_version(root=tmp_path) == second  # not a git checkout
