"""The model registry: versions with lineage, status and gate results; a champion per tier."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest

from protos.registry import (
    LINEAGE_KEYS,
    ModelRegistry,
    PromotionRefused,
    RegistryError,
    UnknownVersionError,
)


def lineage(parent: str | None = None, **extra: object) -> dict:
    return {
        "data_window": {
            "train_start": "2026-01-01T00:00:00+00:00",
            "valid_end": "2026-01-09T00:00:00+00:00",
        },
        "feature_service": "ranker_v1",
        "parent": parent,
        "code_version": "src:abc",
        "metrics": {"val_logloss": 0.5},
        **extra,
    }


def artifact(
    tmp_path: pathlib.Path, name: str = "src", payload: bytes = b"weights"
) -> pathlib.Path:
    src = tmp_path / name
    (src / "sub").mkdir(parents=True)
    (src / "weights.bin").write_bytes(payload)
    (src / "sub" / "vocab.txt").write_text("u1\nu2\n")
    return src


@pytest.fixture
def registry(tmp_path: pathlib.Path) -> ModelRegistry:
    clock = iter(datetime(2026, 1, 1, tzinfo=UTC) + timedelta(minutes=i) for i in range(1000))
    return ModelRegistry(tmp_path / "registry", clock=lambda: next(clock))


def test_register_copies_the_artifact_and_keeps_lineage(
    registry: ModelRegistry, tmp_path: pathlib.Path
) -> None:
    v = registry.register("base", artifact(tmp_path), lineage())
    assert v == "base-0001"
    mv = registry.get("base", v)
    assert (mv.path / "weights.bin").read_bytes() == b"weights"
    assert (mv.path / "sub" / "vocab.txt").read_text() == "u1\nu2\n"
    assert mv.lineage == lineage()
    assert mv.status == "registered"
    assert mv.parent is None
    assert mv.created_at == "2026-01-01T00:00:00+00:00"
    assert json.loads((mv.path / "version.json").read_text())["version"] == v


def test_versions_are_numbered_in_order_per_tier(
    registry: ModelRegistry, tmp_path: pathlib.Path
) -> None:
    src = artifact(tmp_path)
    a = registry.register("base", src, lineage())
    b = registry.register("base", src, lineage(parent=a))
    o = registry.register("online", src, {"base_version": b, "parent": None, "code_version": "x"})
    assert [v.version for v in registry.versions("base")] == ["base-0001", "base-0002"]
    assert registry.get("base", b).parent == a
    assert o == "online-0001"
    assert registry.get("online", o).lineage["base_version"] == b


def test_champion_pointer_promotion_history_and_rollback(
    registry: ModelRegistry, tmp_path: pathlib.Path
) -> None:
    src = artifact(tmp_path)
    assert registry.champion("base") is None
    a = registry.register("base", src, lineage())
    b = registry.register("base", src, lineage(parent=a))
    registry.promote("base", a, reason="first")
    registry.promote("base", b, reason="weekly")
    assert registry.champion("base").version == b
    registry.promote("base", a, reason="rollback: b hurt CTR")
    assert registry.champion("base").version == a
    history = registry.champion_history("base")
    assert [(h["version"], h["previous"]) for h in history] == [(a, None), (b, a), (a, b)]
    assert history[-1]["reason"] == "rollback: b hurt CTR"
    assert registry.get("base", b).status == "promoted"


def test_a_rejected_version_stays_marked_and_cannot_be_promoted(
    registry: ModelRegistry, tmp_path: pathlib.Path
) -> None:
    v = registry.register("base", artifact(tmp_path), lineage())
    gates = {"offline_evaluation": {"passed": False, "reason": "CI lower bound -0.03 < -0.01"}}
    registry.set_status("base", v, "rejected", gates, reason="gate")
    mv = registry.get("base", v)
    assert mv.status == "rejected"
    assert mv.gate_results == gates
    assert [h["status"] for h in mv.status_history] == ["registered", "rejected"]
    with pytest.raises(PromotionRefused, match="CI lower bound"):
        registry.promote("base", v, reason="try anyway")
    assert registry.champion("base") is None
    assert [x.version for x in registry.versions("base")] == [v]


@pytest.mark.parametrize(
    ("tier", "bad", "message"),
    [
        ("base", {"parent": None}, "lacks data_window"),
        ("base", lineage(parent="base-0042"), "no version 'base-0042'"),
        ("base", lineage(metrics={"x": float("nan")}), "not JSON-serialisable"),
        (
            "online",
            {"base_version": "base-0009", "parent": None, "code_version": "x"},
            "no version 'base-0009'",
        ),
        ("offline", lineage(), "tier must be one of"),
    ],
)
def test_bad_lineage_or_tier_is_refused(
    registry: ModelRegistry, tmp_path: pathlib.Path, tier: str, bad: dict, message: str
) -> None:
    with pytest.raises(RegistryError, match=message):
        registry.register(tier, artifact(tmp_path), bad)
    assert not (registry.root / "base" / "versions").exists() or not registry.versions("base")


def test_reserved_file_names_and_unknown_versions(
    registry: ModelRegistry, tmp_path: pathlib.Path
) -> None:
    src = artifact(tmp_path)
    (src / "status.json").write_text("{}")
    with pytest.raises(RegistryError, match=r"status\.json"):
        registry.register("base", src, lineage())
    with pytest.raises(UnknownVersionError, match="base-0007"):
        registry.get("base", "base-0007")
    with pytest.raises(RegistryError, match="status must be one of"):
        registry.set_status("base", "base-0001", "great")
    with pytest.raises(RegistryError, match="reason"):
        registry.promote("base", "base-0001", reason=" ")


def test_lineage_keys_are_what_the_issue_asks_for() -> None:
    assert set(LINEAGE_KEYS["base"]) == {
        "data_window",
        "feature_service",
        "parent",
        "code_version",
        "metrics",
    }
    assert "base_version" in LINEAGE_KEYS["online"]


def test_the_registry_imports_no_torch() -> None:
    code = "import sys, protos.registry; print('torch' in sys.modules, 'ray' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.split() == ["False", "False"]


def test_versions_are_readable_by_other_processes_whatever_the_source_mode(
    registry: ModelRegistry, tmp_path: pathlib.Path
) -> None:
    src = artifact(tmp_path)
    src.chmod(0o700)  # what tempfile.TemporaryDirectory gives the trainer
    mv = registry.get("base", registry.register("base", src, lineage()))
    assert mv.path.stat().st_mode & 0o777 == 0o755
