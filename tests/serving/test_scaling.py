"""A Ranker replica count is checked before Serve is asked (``serving.scaling``); the
scaling itself runs against the live app in tests/faults/test_switches.py."""

from __future__ import annotations

import pytest

from protos.errors import InvalidInput
from serving import app
from serving.scaling import MAX_RANKER_REPLICAS, ScaleResult, check_replicas
from serving.settings import load_settings


@pytest.mark.parametrize("count", [1, 2, MAX_RANKER_REPLICAS])
def test_a_whole_count_in_range_is_accepted(count: int) -> None:
    assert check_replicas(count) == count


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (0, "ranker_replicas must be in [1, 64], got 0 (to stop serving, remove the application)"),
        (-1, "ranker_replicas must be in [1, 64], got -1"),
        (MAX_RANKER_REPLICAS + 1, "got 65"),
        (2.0, "ranker_replicas must be a whole number, got 2.0"),
        ("2", "ranker_replicas must be a whole number, got '2'"),
        (True, "ranker_replicas must be a whole number, got True"),
        (None, "ranker_replicas must be a whole number, got None"),
    ],
)
def test_a_bad_count_is_refused_naming_the_field(value: object, message: str) -> None:
    with pytest.raises(InvalidInput) as error:
        check_replicas(value)
    assert message in str(error.value)
    assert error.value.grpc_status.name == "INVALID_ARGUMENT"


def test_the_app_refuses_a_bad_count_before_it_looks_for_ray(tmp_path) -> None:
    settings = load_settings(None, workspace=str(tmp_path))
    with pytest.raises(InvalidInput, match="ranker_replicas"):
        app.scale_rankers(settings, 0)


def test_the_result_prints_as_plain_json_values() -> None:
    result = ScaleResult("freshrank", 2, 1, ("abc",), 3.456)
    assert result.to_dict() == {"app": "freshrank", "previous": 2, "replicas": 1,
                                "replica_ids": ["abc"], "seconds": 3.46}
