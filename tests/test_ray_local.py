"""A local freshrank cluster is its own, on loopback, and refuses callers without its token."""

from __future__ import annotations

import grpc
import pytest


@pytest.mark.slow
def test_the_local_cluster_listens_on_loopback_and_refuses_an_anonymous_caller(ray_cluster) -> None:
    import ray

    gcs = ray._private.worker._global_node.gcs_address
    assert gcs.startswith("127.0.0.1:"), gcs
    with grpc.insecure_channel(gcs) as channel:
        call = channel.unary_unary(
            "/ray.rpc.NodeInfoGcsService/GetAllNodeInfo",
            request_serializer=None,
            response_deserializer=None,
        )
        with pytest.raises(grpc.RpcError) as refused:
            call(b"", timeout=10)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
