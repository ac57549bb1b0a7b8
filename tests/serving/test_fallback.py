"""Serving applies the online correction only to its own base, only while it is fresh."""

from __future__ import annotations

import pytest

from protos.freshrank.v1 import ranking_pb2 as pb
from serving.ranking import OnlineSlot, choose_fallback

SLOT = OnlineSlot(model=object(), version="o7", base_version="b2", published_at=1_000.0)


def decide(slot=SLOT, base="b2", now=1_010.0, ttl=60.0, enabled=True):
    return choose_fallback(slot, base, now, ttl, enabled)


def test_fresh_weights_for_the_serving_base_are_applied() -> None:
    assert decide() is None


@pytest.mark.parametrize(
    "kwargs, reason",
    [
        ({"enabled": False}, pb.FALLBACK_REASON_ONLINE_DISABLED),
        ({"slot": None}, pb.FALLBACK_REASON_ONLINE_ABSENT),
        ({"base": "b3"}, pb.FALLBACK_REASON_BASE_VERSION_MISMATCH),
        ({"now": 1_061.0}, pb.FALLBACK_REASON_ONLINE_STALE),
    ],
)
def test_each_unsafe_condition_falls_back_with_its_reason(kwargs: dict, reason: int) -> None:
    fallback = decide(**kwargs)
    assert fallback is not None and fallback.reason == reason
    assert fallback.detail


def test_weights_for_another_base_are_refused_even_when_fresh() -> None:
    fallback = decide(base="b1", now=SLOT.published_at)
    assert fallback is not None
    assert fallback.reason == pb.FALLBACK_REASON_BASE_VERSION_MISMATCH
    assert "b2" in fallback.detail and "b1" in fallback.detail
