"""Gates: bad data blocks training with a clear reason; a worse model is kept but never promoted.

These tests train with ``backend="local"`` (the same loop as the Ray workers, in-process):
the gates sit around the fit and do not depend on where it ran. The Ray path is tested in
``test_base_training.py`` and ``test_base_ray_job.py``.
"""

from __future__ import annotations

import pathlib
from datetime import timedelta

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from base_model.config import BaseModelConfig
from base_model.data import validate_training_set, windows_for
from base_model.errors import DataGateError
from base_model.gates import check_data, evaluation_gate
from protos.registry import ModelRegistry, PromotionRefused
from base_model.training import train_base_model
from tests.base_model.base_world import TRAIN_CFG, as_of_day

FAST = TRAIN_CFG.replace(epochs=2, eval_every_steps=0)


def ts_of(table: pa.Table) -> np.ndarray:
    return table.column("ts").cast(pa.timestamp("us")).to_numpy().astype("datetime64[us]")


def drop(table: pa.Table, start: str, end: str, keep_every: int = 0) -> pa.Table:
    """Remove rows with ``start <= ts < end`` (keep one in ``keep_every`` if > 0)."""
    ts = table.column("ts")
    lo = pa.scalar(np.datetime64(start, "us"), pa.timestamp("us")).cast(
        pa.timestamp("us", tz="UTC")
    )
    hi = pa.scalar(np.datetime64(end, "us"), pa.timestamp("us")).cast(pa.timestamp("us", tz="UTC"))
    inside = pc.and_(pc.greater_equal(ts, lo), pc.less(ts, hi)).to_numpy(zero_copy_only=False)
    if keep_every:
        inside &= np.arange(table.num_rows) % keep_every != 0
    return table.filter(pa.array(~inside))


def gates_by_name(table: pa.Table, as_of, cfg: BaseModelConfig = FAST) -> dict:  # noqa: ANN001
    return {
        r.name: r for r in check_data(ts_of(table), windows_for(as_of, cfg.train_days), as_of, cfg)
    }


def test_complete_fresh_data_passes_every_data_gate(world: pa.Table) -> None:
    results = gates_by_name(world, as_of_day(7))
    assert {name: r.passed for name, r in results.items()} == {
        "rows": True,
        "freshness": True,
        "daily_completeness": True,
        "hourly_completeness": True,
    }


def test_a_half_loaded_day_blocks_training_and_nothing_is_registered(
    world: pa.Table, tmp_path: pathlib.Path
) -> None:
    half = drop(world, "2026-01-08T12:00", "2026-01-09T00:00")  # day 7 stops at noon
    registry = ModelRegistry(tmp_path / "registry")
    with pytest.raises(DataGateError) as blocked:
        train_base_model(FAST, half, registry, as_of=as_of_day(7), backend="local")
    message = str(blocked.value)
    assert "half-loaded day" in message and "2026-01-08T00:00:00Z has" in message
    assert "stale data: newest event 2026-01-08T11:" in message
    assert "thin hour(s): 2026-01-08T12:00:00Z had 0 events" in message
    assert blocked.value.report["daily_completeness"]["passed"] is False
    assert registry.versions("base") == []


def test_one_thin_hour_blocks_training_and_is_named(world: pa.Table) -> None:
    thin = drop(world, "2026-01-05T14:00", "2026-01-05T15:00", keep_every=10)  # ~10% left
    results = gates_by_name(thin, as_of_day(7))
    assert not results["hourly_completeness"].passed
    assert results["hourly_completeness"].reason.startswith(
        "thin hour(s): 2026-01-05T14:00:00Z had "
    )
    assert results["hourly_completeness"].details["first_thin_hours"] == ["2026-01-05T14:00:00Z"]
    assert results["daily_completeness"].passed and results["freshness"].passed


def test_stale_data_blocks_training(world: pa.Table) -> None:
    late = as_of_day(8) + timedelta(hours=9)  # the newest event is ~9 h old
    results = gates_by_name(world, late)
    assert not results["freshness"].passed
    assert results["freshness"].reason.startswith("stale data: newest event 2026-01-09T23:")
    assert "(limit 6 h)" in results["freshness"].reason
    with pytest.raises(DataGateError, match="freshness: stale data"):
        train_base_model(FAST, world, "/nonexistent/never-written", as_of=late, backend="local")


def test_too_few_rows_blocks_training(world: pa.Table) -> None:
    results = gates_by_name(world, as_of_day(7), FAST.replace(min_train_rows=10**6))
    assert not results["rows"].passed
    assert "training rows in the window (need 1000000)" in results["rows"].reason


def test_a_worse_model_is_registered_rejected_and_never_promoted(
    world: pa.Table, tmp_path: pathlib.Path
) -> None:
    registry = ModelRegistry(tmp_path / "registry")
    good = train_base_model(FAST, world, registry, as_of=as_of_day(7), backend="local")
    assert good.status == "approved" and good.promoted
    assert good.gate_results["offline_evaluation"]["details"]["reference"].startswith(
        "the training click rate"
    )
    # Same data, next day, but barely trained from scratch: clearly worse than the champion.
    bad = train_base_model(
        FAST.replace(learning_rate=1e-6, epochs=1),
        world,
        registry,
        as_of=as_of_day(8),
        parent=None,
        backend="local",
    )
    assert bad.status == "rejected" and not bad.promoted
    stored = registry.get("base", bad.version)
    assert stored.status == "rejected"
    evaluation = stored.gate_results["offline_evaluation"]
    assert evaluation["passed"] is False
    assert evaluation["details"]["reference"] == f"champion {good.version}"
    assert evaluation["details"]["ci_high"] < FAST.min_gain_vs_champion  # confidently worse
    assert "does not clear the threshold" in evaluation["reason"]
    assert registry.champion("base").version == good.version
    with pytest.raises(PromotionRefused):
        registry.promote("base", bad.version, reason="by hand")


def bernoulli(p: np.ndarray, seed: int) -> np.ndarray:
    return (np.random.default_rng(seed).random(p.shape) < p).astype(np.float64)


@pytest.mark.parametrize(
    ("candidate", "reference", "threshold", "passes"),
    [
        ("truth", "noisy", 0.0, True),  # clearly better: the lower bound clears 0
        ("noisy", "truth", -0.01, False),  # clearly worse
        ("jitter_a", "jitter_b", 0.0, False),  # as good: the interval straddles 0
        ("jitter_a", "jitter_b", -0.01, True),  # as good, and a 1% loss is tolerated
    ],
)
def test_evaluation_gate_uses_the_lower_bound_of_a_bootstrap_interval(
    candidate: str, reference: str, threshold: float, passes: bool
) -> None:
    rng = np.random.default_rng(0)
    n, users = 20000, 500
    truth = 1 / (1 + np.exp(-rng.normal(-1, 1.2, n)))
    noisy = 1 / (1 + np.exp(-(np.log(truth / (1 - truth)) + rng.normal(0, 1.0, n))))
    logit = np.log(truth / (1 - truth))
    probs = {"truth": truth, "noisy": noisy}
    for name, seed in (("jitter_a", 2), ("jitter_b", 3)):
        probs[name] = 1 / (1 + np.exp(-(logit + np.random.default_rng(seed).normal(0, 0.3, n))))
    y = bernoulli(truth, 1)
    clusters = np.array([f"u{i % users}" for i in range(n)], dtype=object)
    result = evaluation_gate(
        probs[candidate],
        probs[reference],
        y,
        clusters,
        BaseModelConfig(bootstrap_samples=200),
        "reference",
        threshold,
    )
    d = result.details
    assert result.passed is passes
    assert d["ci_low"] <= d["gain"] <= d["ci_high"]
    if candidate.startswith("jitter"):
        assert d["ci_low"] < 0 < d["ci_high"]
    assert d["clusters"] == users and d["rows"] == n
    assert ("lower bound clears" in result.reason) is passes


def test_training_set_errors_name_the_column(world: pa.Table) -> None:
    from base_model.errors import TrainingDataError

    with pytest.raises(TrainingDataError, match=r"lacks column.*item_ctr_7d"):
        validate_training_set(world.drop_columns(["item_ctr_7d"]))
    bad = world.set_column(
        world.schema.get_field_index("label"),
        "label",
        pa.array(np.where(np.arange(world.num_rows) == 5, 2.0, 0.0), pa.float32()),
    )
    with pytest.raises(TrainingDataError, match=r"label must be in \[0, 1\]; row 5 has 2\.0"):
        validate_training_set(bad)


SPARSE = FAST.replace(min_day_fraction=0.0, min_hour_fraction=0.0, max_staleness_hours=48.0)


def test_an_empty_validation_day_blocks_with_a_reason_that_says_what_to_do(
    world: pa.Table,
) -> None:
    no_day7 = drop(world, "2026-01-08T00:00", "2026-01-09T00:00")
    rows = gates_by_name(no_day7, as_of_day(7), SPARSE)["rows"]
    assert not rows.passed
    assert rows.reason.startswith(
        "the validation day [2026-01-08T00:00:00+00:00, 2026-01-09T00:00:00+00:00) holds no "
        "rows (min_valid_rows = 1); on sparse data set min_valid_rows = 0"
    )
    assert rows.details["valid_rows"] == 0 and rows.details["train_rows"] > 0
    thin = gates_by_name(world, as_of_day(7), SPARSE.replace(min_valid_rows=10**6))["rows"]
    assert not thin.passed
    assert "holds only 4" in thin.reason and "(need min_valid_rows = 1000000)" in thin.reason


def test_min_valid_rows_0_trains_without_validation_and_never_auto_promotes(
    world: pa.Table, tmp_path: pathlib.Path
) -> None:
    """The sparse-data trade-off: the fit runs (last epoch kept, no early stopping), but with
    nothing to judge it on it is registered, neither approved nor promoted."""
    no_day7 = drop(world, "2026-01-08T00:00", "2026-01-09T00:00")
    registry = ModelRegistry(tmp_path / "registry")
    result = train_base_model(
        SPARSE.replace(min_valid_rows=0), no_day7, registry, as_of=as_of_day(7), backend="local"
    )
    assert result.status == "registered" and not result.promoted
    assert result.curve == () and result.metrics["best"] is None
    assert result.metrics["epochs_run"] == FAST.epochs and result.metrics["valid_rows"] == 0
    gates = result.gate_results
    assert gates["rows"]["passed"] and "training without validation" in gates["rows"]["reason"]
    assert not gates["offline_evaluation"]["passed"]
    assert gates["offline_evaluation"]["reason"].startswith("not evaluated: the validation day")
    assert registry.champion("base") is None
    assert registry.get("base", result.version).status == "registered"
    registry.promote("base", result.version, reason="trusted by hand")  # allowed: not rejected
    assert registry.champion("base").version == result.version


def test_a_log_that_starts_inside_the_window_is_young_not_half_loaded(world: pa.Table) -> None:
    """Days before the first event are no history, not missing data: not judged."""
    young = drop(world, "2026-01-01T00:00", "2026-01-04T00:00")  # the log starts on day 3
    results = gates_by_name(young, as_of_day(7))
    assert all(r.passed for r in results.values()), {n: r.reason for n, r in results.items()}
    daily = results["daily_completeness"]
    assert daily.details["not_judged"] == [
        "2026-01-01T00:00:00Z",
        "2026-01-02T00:00:00Z",
        "2026-01-03T00:00:00Z",
    ]
    assert "3 day(s) before the log's first event 2026-01-04T00:" in daily.reason
    # ... but a hole after the log has started is still a half-loaded day.
    holed = drop(young, "2026-01-05T00:00", "2026-01-05T18:00")
    assert not gates_by_name(holed, as_of_day(7))["daily_completeness"].passed


def test_item_category_is_optional_text(world: pa.Table) -> None:
    from base_model.errors import TrainingDataError

    absent = validate_training_set(world.drop_columns(["item_category"]))
    assert pc.unique(absent.column("item_category")).to_pylist() == [""]  # all unknown
    index = world.schema.get_field_index("item_category")
    nulls = world.set_column(
        index, "item_category", pa.array([None] * world.num_rows, pa.string())
    )
    assert pc.unique(validate_training_set(nulls).column("item_category")).to_pylist() == [""]
    numbers = world.set_column(index, "item_category", pa.array(np.arange(world.num_rows)))
    with pytest.raises(TrainingDataError, match="column item_category must hold text, got int64"):
        validate_training_set(numbers)
