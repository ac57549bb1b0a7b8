"""One running app (``tests.serve_system.running_system``: the guard and the breaker at their
defaults) for the hostile-input modules of this package: manipulated feedback
(test_attacks_grpc.py) and malformed or poisoned feedback (test_poisoned_grpc.py). Each module
drives its own traffic and checks what the learner counted since its own start, so they can
share the app: it is started for the first test here and stopped after the last, before any
other module starts its own (one Serve app per Ray cluster); one app start instead of two."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.serve_system import System, running_system


@pytest.fixture(scope="package")
def shared_system(ray_cluster: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    with running_system(tmp_path_factory.mktemp("hostile-grpc")) as running:
        yield running
