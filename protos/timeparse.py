"""One duration grammar and one time parser, for every flag and setting that takes them.

Why one: the CLI's flags (``--every 7d``, ``--warmup 36h``, ``--as-of``, ``--end``), the
backtest's settings and the feature store's commands all take durations and times; a user
should learn one spelling, and every refusal should read the same.

Durations are one or more ``<number><unit>`` parts, units ``w d h m s`` (case and spaces
ignored), and must be positive. Times are ISO 8601 (a date or a date-time; naive means UTC;
``Z`` accepted), unix seconds, or ``now``; the result is always timezone-aware UTC.

``TimeParseError`` is both an ``InvalidInput`` (a ``ValueError``) and an
``argparse.ArgumentTypeError``, so ``parse_duration``/``parse_time`` work as argparse ``type=``
functions and argparse prints their message as it is.

>>> parse_duration("1d12h")
datetime.timedelta(days=1, seconds=43200)
>>> format_duration(parse_duration("90m"))
'90m'
>>> parse_time("2026-01-05T12:00")
datetime.datetime(2026, 1, 5, 12, 0, tzinfo=datetime.timezone.utc)
>>> parse_time("2026-01-05T13:00+01:00") == parse_time("2026-01-05T12:00Z")
True
>>> parse_time("0")
datetime.datetime(1970, 1, 1, 0, 0, tzinfo=datetime.timezone.utc)
>>> try:
...     parse_duration("7")
... except ValueError as error:
...     print(error)
bad duration '7': use a number and a unit w/d/h/m/s, e.g. 7d, 36h, 1d12h
"""

from __future__ import annotations

import argparse
import math
import re
from datetime import UTC, datetime, timedelta

from protos.errors import InvalidInput

__all__ = ["TimeParseError", "floor_hour", "format_duration", "parse_duration", "parse_time"]

_UNITS = {"w": 7 * 86400, "d": 86400, "h": 3600, "m": 60, "s": 1}
_PART = re.compile(r"(\d+(?:\.\d+)?)([wdhms])")
_UNIX = re.compile(r"^[+-]?\d+(?:\.\d+)?$")


class TimeParseError(InvalidInput, argparse.ArgumentTypeError):
    """A duration or a time that does not follow the grammar; the message shows the fix."""


def parse_duration(text: str) -> timedelta:
    """``7d``, ``36h``, ``1d12h``, ``90m``, ``45s``, ``2w``, ``0.5d`` -> a positive timedelta.

    Raises:
        TimeParseError: empty, no unit, unknown unit, trailing characters, or not positive.

    >>> parse_duration("2w") == parse_duration("14d")
    True
    >>> try:
    ...     parse_duration("0d")
    ... except TimeParseError as error:
    ...     print(error)
    duration '0d' must be positive
    """
    compact = str(text).strip().lower().replace(" ", "")
    pos, seconds = 0, 0.0
    for match in _PART.finditer(compact):
        if match.start() != pos:
            break
        seconds += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if not compact or pos != len(compact):
        raise TimeParseError(
            f"bad duration {text!r}: use a number and a unit w/d/h/m/s, e.g. 7d, 36h, 1d12h"
        )
    if seconds <= 0:
        raise TimeParseError(f"duration {text!r} must be positive")
    return timedelta(seconds=seconds)


def format_duration(delta: timedelta) -> str:
    """The shortest whole-unit spelling ``parse_duration`` reads back (``7d``, ``36h``, ``90m``).

    >>> format_duration(timedelta(hours=36)), format_duration(timedelta(seconds=45))
    ('36h', '45s')
    """
    seconds = int(delta.total_seconds())
    for unit in ("d", "h", "m"):
        if seconds % _UNITS[unit] == 0:
            return f"{seconds // _UNITS[unit]}{unit}"
    return f"{seconds}s"


def parse_time(text: str | datetime) -> datetime:
    """An ISO 8601 date or date-time (naive = UTC), unix seconds, or ``now`` -> aware UTC.

    A ``datetime`` is accepted too (naive = UTC) and converted to UTC, so values read back
    from JSON or passed by code go through the same door.

    Raises:
        TimeParseError: none of the above.

    >>> parse_time("2018-01-01")
    datetime.datetime(2018, 1, 1, 0, 0, tzinfo=datetime.timezone.utc)
    >>> try:
    ...     parse_time("yesterday")
    ... except ValueError as error:
    ...     print(str(error)[:40])
    bad time 'yesterday': use ISO 8601 (e.g.
    """
    if isinstance(text, datetime):
        return _utc(text)
    value = str(text).strip()
    if value.lower() == "now":
        return datetime.now(UTC)
    try:
        return _utc(datetime.fromisoformat(value))
    except ValueError:
        pass
    if _UNIX.match(value):
        seconds = float(value)
        if math.isfinite(seconds):
            try:
                return datetime.fromtimestamp(seconds, tz=UTC)
            except (OverflowError, OSError, ValueError):
                pass
    raise TimeParseError(
        f"bad time {text!r}: use ISO 8601 (e.g. 2026-01-05 or 2026-01-05T12:00Z, naive = UTC), "
        "unix seconds, or 'now'"
    )


def floor_hour(moment: datetime) -> datetime:
    """The start of ``moment``'s UTC hour (training times are whole hours).

    >>> floor_hour(parse_time("2026-01-05T12:34:56Z")).isoformat()
    '2026-01-05T12:00:00+00:00'
    """
    return _utc(moment).replace(minute=0, second=0, microsecond=0)


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
