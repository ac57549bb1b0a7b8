"""Retrain triggers (schedule, performance drop, drift, new data) and the ``train --every`` loop."""

from __future__ import annotations

import json
import pathlib
from datetime import timedelta

import numpy as np
import pyarrow as pa
import pytest

from base_model.data import validate_training_set
from protos.registry import ModelRegistry
from base_model.training import TrainResult
from base_model.triggers import check_triggers
from tests.base_model.base_world import TRAIN_CFG, as_of_day
from feature_store.catalog import ITEM_FEATURES
from protos.timeparse import parse_duration
from serving import cli

DAY8 = ("2026-01-09T00:00", "2026-01-10T00:00")


def fired(decision) -> dict[str, list[str]]:  # noqa: ANN001
    out: dict[str, list[str]] = {}
    for c in decision.reasons:
        out.setdefault(c.kind, []).append(c.detail)
    return out


def edit_day8(table: pa.Table, column: str, fn) -> pa.Table:  # noqa: ANN001
    """Apply ``fn`` to ``column`` on day 8's rows only."""
    ts = table.column("ts").cast(pa.timestamp("us")).to_numpy().astype("datetime64[us]")
    mask = (ts >= np.datetime64(DAY8[0])) & (ts < np.datetime64(DAY8[1]))
    values = table.column(column).to_numpy(zero_copy_only=False).copy()
    values[mask] = fn(values[mask])
    return table.set_column(
        table.schema.get_field_index(column),
        column,
        pa.array(values, table.schema.field(column).type),
    )


@pytest.fixture(scope="module")
def rows(world: pa.Table) -> pa.Table:
    return validate_training_set(world)


@pytest.fixture(scope="module")
def champion_registry(first_version: tuple[ModelRegistry, TrainResult]) -> ModelRegistry:
    return first_version[0]


def test_nothing_fires_right_after_training(
    champion_registry: ModelRegistry, rows: pa.Table
) -> None:
    decision = check_triggers(TRAIN_CFG, champion_registry, rows, as_of_day(7))
    assert not decision.train, decision.summary()
    assert {c.kind for c in decision.checks} == {
        "schedule",
        "new_data",
        "performance_drop",
        "drift",
    }
    assert decision.summary() == "no trigger fired"


def test_schedule_fires_when_the_champions_data_is_a_week_old(
    champion_registry: ModelRegistry, rows: pa.Table
) -> None:
    week_later = as_of_day(7) + timedelta(days=7)
    decision = check_triggers(
        TRAIN_CFG, champion_registry, rows, week_later, every=timedelta(days=7)
    )
    assert "schedule" in fired(decision)
    assert "7.00 days before now (every 7 days)" in fired(decision)["schedule"][0]
    later = check_triggers(TRAIN_CFG, champion_registry, rows, week_later, every=timedelta(days=10))
    assert "schedule" not in fired(later)


def test_new_data_volume_fires(champion_registry: ModelRegistry, rows: pa.Table) -> None:
    # One day (~4.8k rows) after a 7-day window (~33.5k rows): 0.14 of it.
    assert "new_data" not in fired(check_triggers(TRAIN_CFG, champion_registry, rows, as_of_day(8)))
    decision = check_triggers(
        TRAIN_CFG.replace(new_data_fraction=0.1), champion_registry, rows, as_of_day(8)
    )
    assert fired(decision)["new_data"][0].startswith("4")
    assert "rows since 2026-01-09T00:00:00+00:00" in fired(decision)["new_data"][0]


def test_a_performance_drop_fires(champion_registry: ModelRegistry, rows: pa.Table) -> None:
    flipped = edit_day8(rows, "label", lambda y: 1.0 - y)  # the world changed its mind
    decision = check_triggers(TRAIN_CFG, champion_registry, flipped, as_of_day(8))
    assert "performance_drop" in fired(decision)
    check = next(c for c in decision.reasons if c.kind == "performance_drop")
    assert check.value > TRAIN_CFG.perf_drop_threshold
    healthy = check_triggers(TRAIN_CFG, champion_registry, rows, as_of_day(8))
    assert "performance_drop" not in fired(healthy)


def test_feature_drift_fires_and_names_the_feature(
    champion_registry: ModelRegistry, rows: pa.Table
) -> None:
    shifted = edit_day8(rows, "item_imp_24h", lambda x: x * 50 + 1000)
    decision = check_triggers(TRAIN_CFG, champion_registry, shifted, as_of_day(8))
    assert any("(item_imp_24h)" in d for d in fired(decision)["drift"])
    assert "item_imp_24h" in ITEM_FEATURES


def test_unseen_ids_count_as_drift(champion_registry: ModelRegistry, rows: pa.Table) -> None:
    strangers = edit_day8(
        rows, "user_id", lambda u: np.array([f"stranger-{x}" for x in u], dtype=object)
    )
    decision = check_triggers(TRAIN_CFG, champion_registry, strangers, as_of_day(8))
    assert any("never saw" in d for d in fired(decision)["drift"])


def test_train_loop_records_each_trigger_and_its_reason(
    ray_cluster: None,
    world_parquet: pathlib.Path,
    tmp_path: pathlib.Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``freshrank train --every 7d``: trains when a trigger fires (here: no champion yet),
    through Ray Train with two data-parallel workers, and logs every check with its reasons."""
    registry_root = tmp_path / "registry"
    overrides = [
        f"--set={k}={json.dumps(v)}" for k, v in TRAIN_CFG.replace(epochs=2).to_dict().items()
    ]
    status = cli.main(
        [
            "train",
            "--training-set",
            str(world_parquet),
            "--registry",
            str(registry_root),
            "--as-of",
            "data-end",
            "--num-workers",
            "2",
            "--every",
            "7d",
            "--check-every",
            "1s",
            "--max-checks",
            "2",
            *overrides,
        ]
    )
    assert status == 0
    log = [
        json.loads(line)
        for line in (registry_root / "base-train-log.jsonl").read_text().splitlines()
    ]
    assert [entry["decision"]["reasons"] for entry in log] == [["no_champion"], []]
    assert log[0]["as_of"] == "2026-01-10T00:00:00+00:00"
    assert log[0]["outcome"]["status"] == "approved" and log[0]["outcome"]["promoted"]
    assert log[1]["outcome"] == {"status": "not triggered"}
    champion = ModelRegistry(registry_root).champion("base")
    assert champion.lineage["trigger"]["reasons"] == ["no_champion"]
    assert (
        champion.lineage["metrics"]["workers"] == 2
        and champion.lineage["metrics"]["backend"] == "ray"
    )
    out, err = capsys.readouterr()
    assert "training: no_champion: no base champion yet" in err
    assert all(json.loads(line)["status"] for line in out.splitlines())  # stdout: JSON only


def test_durations_parse_and_bad_ones_are_refused() -> None:
    """``--every``/``--check-every`` take the one duration grammar (protos.timeparse)."""
    assert parse_duration("7d") == timedelta(days=7)
    assert parse_duration("90m") == timedelta(minutes=90)
    for bad in ("7", "week", "0d", "-1h"):
        with pytest.raises(ValueError):
            parse_duration(bad)


def test_one_off_train_reports_a_blocked_run(
    world_parquet: pathlib.Path, tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status = cli.main(
        [
            "train",
            "--training-set",
            str(world_parquet),
            "--registry",
            str(tmp_path / "r"),
            "--as-of",
            "2026-01-20T00:00:00+00:00",
            "--backend",
            "local",
        ]
    )
    assert status == 3
    captured = capsys.readouterr()
    out = json.loads(captured.out.strip().splitlines()[-1])
    assert out["status"] == "blocked" and "stale data" in out["reason"]
    # ... and one line on stderr naming the data's real span and the way out.
    hint = captured.err.strip().splitlines()[-1]
    assert "the training set holds events from" in hint and "--as-of data-end" in hint, hint
    assert not (tmp_path / "r" / "base").exists()
