"""Building a package's frozen config dataclass from one TOML section, refusing unknown keys.

Why one function: every package's config is a frozen dataclass built from its section of the
one ``freshrank.toml``; a typo must fail loudly (never fall back to a default silently), and
the message must name the section and the key the same way everywhere.

>>> from dataclasses import dataclass
>>> @dataclass(frozen=True)
... class Demo:
...     size: int = 1
>>> from_section(Demo, {"size": 3}, "demo")
Demo(size=3)
>>> try:
...     from_section(Demo, {"sise": 3}, "demo")
... except SettingsError as error:
...     print(error)
unknown [demo] key(s): sise; known: size
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

from protos.errors import InvalidInput

__all__ = ["SettingsError", "check_bounds", "check_known_keys", "from_section"]

T = TypeVar("T")


class SettingsError(InvalidInput):
    """A configuration section has an unknown key, a wrong type or a value out of range."""


def check_known_keys(
    cls: type, values: Mapping[str, Any], section: str, *, error: type[SettingsError] = SettingsError
) -> None:
    """Raise ``error`` if ``values`` is not a mapping or has keys ``cls`` lacks.

    ``error`` is a package's own subclass of ``SettingsError`` (``base_model``'s
    ``ConfigError``, the backtest's ``BacktestSettingsError``), so callers can catch either.
    """
    if not isinstance(values, Mapping):
        raise error(f"[{section}] must be a table, got {type(values).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise error(
            f"unknown [{section}] key(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}"
        )


def from_section(
    cls: type[T],
    values: Mapping[str, Any],
    section: str,
    *,
    error: type[SettingsError] = SettingsError,
) -> T:
    """Build ``cls(**values)`` after refusing unknown keys; lists become tuples.

    A ``SettingsError`` from the dataclass's own checks passes through unchanged; any other
    ``TypeError`` or ``ValueError`` is re-raised as ``error`` (default ``SettingsError``)
    naming the section, so the CLI can print it as one line.
    """
    check_known_keys(cls, values, section, error=error)
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    try:
        return cls(**kwargs)
    except SettingsError:
        raise
    except (TypeError, ValueError) as exc:
        raise error(f"[{section}] {exc}") from exc


def check_bounds(
    section: str,
    config: object,
    *,
    at_least: Mapping[str, float] | None = None,
    above: Mapping[str, float] | None = None,
    ports: Iterable[str] = (),
) -> None:
    """Refuse a config whose fields are out of range, naming ``section.field`` and the value,
    the same way in every package: ``at_least`` (field -> smallest allowed), ``above``
    (field -> the bound it must exceed), ``ports`` (0..65535; 0: the OS picks). NaN fails
    every bound.

    >>> from dataclasses import dataclass
    >>> @dataclass(frozen=True)
    ... class Bounded:
    ...     workers: int = 0
    >>> try:
    ...     check_bounds("demo", Bounded(), at_least={"workers": 1})
    ... except ValueError as error:
    ...     print(error)
    demo.workers must be >= 1, got 0
    """
    for name, bound in (at_least or {}).items():
        value = getattr(config, name)
        if not value >= bound:
            raise ValueError(f"{section}.{name} must be >= {bound:g}, got {value}")
    for name, bound in (above or {}).items():
        value = getattr(config, name)
        if not value > bound:
            raise ValueError(f"{section}.{name} must be > {bound:g}, got {value}")
    for name in ports:
        value = getattr(config, name)
        if not 0 <= value <= 65535:
            raise ValueError(f"{section}.{name} must be in [0, 65535], got {value}")
