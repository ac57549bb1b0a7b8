"""Fixtures of the online-layer tests (builders live in ``ol_helpers``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.online_layer.ol_helpers import EMBEDDING_DIM, FakeClock, small_config, synthetic_user
from online_layer.learner import OnlineLearner


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def make_learner(clock: FakeClock) -> Callable[..., OnlineLearner]:
    def build(
        sink: Any = None,
        base_version: str = "base-1",
        established: Callable[[str], bool] | None = synthetic_user,
        **overrides: Any,
    ) -> OnlineLearner:
        return OnlineLearner(
            small_config(**overrides), base_version, EMBEDDING_DIM, snapshot_sink=sink,
            clock=clock, established_users=established,
        )

    return build
