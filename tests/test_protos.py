"""The generated gRPC code is never hand-edited and never stale against protos/."""

from __future__ import annotations

import pathlib

from protos.build import REPO_ROOT, generate, generated_paths


def test_generated_code_matches_the_proto(tmp_path: pathlib.Path) -> None:
    fresh = generate(tmp_path)
    installed = generated_paths(REPO_ROOT)
    assert [p.name for p in fresh] == [p.name for p in installed]
    for new, old in zip(fresh, installed, strict=True):
        assert old.exists(), f"{old} is missing: run `pip install -e .` (or make install)"
        assert new.read_text() == old.read_text(), (
            f"{old.relative_to(REPO_ROOT)} is stale against the proto: re-run `make install`"
        )


def test_service_exposes_rank_feedback_and_status() -> None:
    from protos.freshrank.v1 import ranking_pb2

    service = ranking_pb2.DESCRIPTOR.services_by_name["Ranker"]
    assert service.full_name == "freshrank.v1.Ranker"
    assert {m.name for m in service.methods} == {
        "Rank", "Feedback", "Status", "SetOnlineEnabled", "RollbackOnline",
        "StageCandidate", "PromoteBase", "RollbackBase", "AbortCandidate", "CandidateReport",
        "SetExploration",
    }
