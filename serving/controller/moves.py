"""What a step handler answers: go to the next step, wait and look again, or end the cycle."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["End", "Move", "Next", "OUTCOMES", "Wait"]

#: How a cycle can end (``machine``'s docstring says when).
OUTCOMES = ("not_triggered", "blocked", "failed", "rejected", "not_evaluated", "aborted",
            "abandoned", "promoted")


@dataclass(frozen=True)
class Next:
    step: str


@dataclass(frozen=True)
class Wait:
    reason: str = ""


@dataclass(frozen=True)
class End:
    outcome: str
    reason: str
    figures: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.outcome not in OUTCOMES:
            raise ValueError(f"unknown outcome {self.outcome!r}")


Move = Next | Wait | End
