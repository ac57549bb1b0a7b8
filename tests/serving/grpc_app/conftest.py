"""One running app (``tests.serve_system.running_system``, default settings) for the modules of
this package: the gRPC contract (test_grpc_app.py, which starts from a fresh app: no weights
yet) and then the fuzz (test_grpc_fuzz.py: its admin calls may change any state an operator
can, so it runs last, and ends by checking the app still answers). Package scope: the app is started for the first test here
and stopped after the last, before any other module starts its own (one Serve app per Ray
cluster); one app start instead of two."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.serve_system import System, running_system


@pytest.fixture(scope="package")
def system(ray_cluster: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    with running_system(tmp_path_factory.mktemp("grpc-app")) as running:
        yield running
