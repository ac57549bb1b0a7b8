"""Shared fixtures of the feature-store tests (helpers live in fs_testkit.py).

``feature_ws`` is one small simulated workspace (events -> compute -> Feast apply ->
materialize), built once per session because ``apply`` costs seconds. Tests that change a
workspace's events build their own with ``fs_testkit.build_workspace``.
"""

from __future__ import annotations

import warnings

import pytest
from tests.feature_store.fs_testkit import Workspace, build_workspace

warnings.filterwarnings("ignore", category=FutureWarning)
warnings.filterwarnings("ignore", message=".*experimental.*")


@pytest.fixture(scope="session")
def feature_ws(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    """One applied + materialized workspace for read-only tests (and the push test)."""
    return build_workspace(tmp_path_factory.mktemp("feature_ws"), apply=True)
