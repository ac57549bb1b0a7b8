"""An application started where Serve already runs joins its proxies (``serving.app``).

The join itself runs in every Serve test module after the first (``tests.serve_system``
removes each app and leaves Serve up); here, the rule for configured ports, without Ray."""

from __future__ import annotations

import pytest

from serving.app import _join_running_serve


def test_ports_of_zero_take_the_running_proxies_ports() -> None:
    assert _join_running_serve(0, 0, (40123, 40124)) == (40123, 40124)


def test_a_configured_port_equal_to_the_running_proxys_is_accepted() -> None:
    assert _join_running_serve(40123, 40124, (40123, 40124)) == (40123, 40124)
    assert _join_running_serve(40123, 0, (40123, 40124)) == (40123, 40124)


@pytest.mark.parametrize(
    ("grpc_port", "http_port", "named"),
    [(50051, 0, "serving.grpc_port = 50051"), (0, 8000, "serving.http_port = 8000")],
)
def test_a_configured_port_the_running_proxy_does_not_listen_on_is_refused_by_name(
    grpc_port: int, http_port: int, named: str
) -> None:
    with pytest.raises(ValueError, match=named) as refused:
        _join_running_serve(grpc_port, http_port, (40123, 40124))
    assert "already runs" in str(refused.value)
