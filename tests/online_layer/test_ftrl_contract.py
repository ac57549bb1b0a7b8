"""Every online model keeps one contract (River's ``test_estimators`` pattern).

Each check below runs on every implementation: the Cython ``FTRLProximal`` and the NumPy
``FTRLReference``. A new implementation joins ``IMPLEMENTATIONS`` and must pass them all.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import numpy as np
import pytest

from online_layer.errors import BaseVersionMismatch, InputError, SnapshotError
from online_layer.features import OnlineInputs
from online_layer.ftrl import FTRLProximal
from online_layer.model import OnlineModel
from online_layer.reference import FTRLReference

from tests.online_layer.ol_helpers import random_batch

IMPLEMENTATIONS: list[type[OnlineModel]] = [FTRLProximal, FTRLReference]


def trained(model: OnlineModel, batches: int = 5) -> OnlineModel:
    for seed in range(batches):
        model.learn_many(*random_batch(seed))
    return model


def fingerprint(model: OnlineModel) -> tuple[bytes, bytes, bytes, int, int]:
    z, n = model.state()
    return z.tobytes(), n.tobytes(), model.weights().tobytes(), model.n_updates, model.n_examples


# -- the checks --------------------------------------------------------------------------


def check_predict_shape_and_dtype(model: OnlineModel) -> None:
    inputs, _ = random_batch(1, n=17)
    out = model.predict_many(inputs)
    assert out.shape == (17,) and out.dtype == np.float64
    assert model.predict_proba_many(inputs).shape == (17,)
    assert model.predict_many(inputs.take(slice(0, 0))).shape == (0,)


def check_zero_weights_score_exactly_the_base(model: OnlineModel) -> None:
    inputs, _ = random_batch(2)
    assert np.array_equal(model.predict_many(inputs), inputs.base_logit)
    assert not model.weights().any()


def check_predict_changes_nothing(model: OnlineModel) -> None:
    trained(model)
    inputs, _ = random_batch(9)
    before = fingerprint(model)
    kept = copy.deepcopy((inputs.base_logit, inputs.dense, inputs.sparse))
    first = model.predict_many(inputs)
    assert fingerprint(model) == before
    assert np.array_equal(model.predict_many(inputs), first)
    assert all(np.array_equal(a, b) for a, b in zip(kept, (inputs.base_logit, inputs.dense, inputs.sparse)))


def check_learning_moves_scores_toward_labels(model: OnlineModel) -> None:
    inputs, _ = random_batch(3)
    for _ in range(5):
        model.learn_many(inputs, np.ones(len(inputs)))
    assert (model.predict_many(inputs) > inputs.base_logit).all()
    assert model.n_updates == 5 and model.n_examples == 5 * len(inputs)


def check_batch_equals_rows_one_by_one(model: OnlineModel) -> None:
    inputs, labels = random_batch(4, n=30)
    one_by_one = model.clone()
    model.learn_many(inputs, labels)
    for row in range(len(inputs)):
        one_by_one.learn_many(inputs.take([row]), labels[row : row + 1])
    assert np.array_equal(model.weights(), one_by_one.weights())


def check_deterministic(model: OnlineModel) -> None:
    other = model.clone()
    trained(model)
    trained(other)
    assert fingerprint(model) == fingerprint(other)


def check_snapshot_round_trip(model: OnlineModel) -> None:
    trained(model)
    inputs, _ = random_batch(11)
    blob = model.snapshot({"note": "round trip"})
    restored = type(model).from_snapshot(blob, "base-1")
    assert fingerprint(restored) == fingerprint(model)
    assert np.array_equal(restored.predict_many(inputs), model.predict_many(inputs))
    # Both keep learning identically after the restore.
    model.learn_many(*random_batch(12))
    restored.learn_many(*random_batch(12))
    assert fingerprint(restored) == fingerprint(model)


def check_restore_refuses_another_base_version(model: OnlineModel) -> None:
    blob = trained(model).snapshot()
    target = model.clone()
    target.base_version = "base-2"
    before = fingerprint(target)
    with pytest.raises(BaseVersionMismatch, match="base-1"):
        target.restore(blob, expected_base_version="base-2")
    with pytest.raises(BaseVersionMismatch):
        type(model).from_snapshot(blob, "base-2")
    assert fingerprint(target) == before


def check_restore_refuses_corrupt_or_misfit_blobs(model: OnlineModel) -> None:
    blob = trained(model).snapshot()
    target = model.clone()
    before = fingerprint(target)
    corrupt = blob[:-9] + bytes([blob[-9] ^ 0xFF]) + blob[-8:]
    for bad in (corrupt, blob[:-8], b"not a snapshot", blob[:10]):
        with pytest.raises(SnapshotError):
            target.restore(bad, "base-1")
    other_shape = type(model)(n_dense=7, hash_bits=10, base_version="base-1")
    with pytest.raises(SnapshotError, match="n_dense"):
        other_shape.restore(blob, "base-1")
    assert fingerprint(target) == before


def check_l1_makes_weights_sparse(model: OnlineModel) -> None:
    sparse = type(model)(n_dense=6, hash_bits=10, base_version="base-1", l1=3.0)
    trained(model, batches=8)
    trained(sparse, batches=8)
    assert 0 < sparse.nnz() < model.nnz()


def check_bad_inputs_raise_and_change_nothing(model: OnlineModel) -> None:
    trained(model)
    before = fingerprint(model)
    inputs, labels = random_batch(5)
    nan_dense = inputs.dense.copy()
    nan_dense[3, 2] = np.nan
    inf_base = inputs.base_logit.copy()
    inf_base[-1] = np.inf
    out_of_table = inputs.sparse.copy()
    out_of_table[-1, 0] = 1 << 10
    cases = [
        (OnlineInputs(inputs.base_logit, nan_dense, inputs.sparse), labels),
        (OnlineInputs(inf_base, inputs.dense, inputs.sparse), labels),
        (OnlineInputs(inputs.base_logit, inputs.dense, out_of_table), labels),
        (inputs, np.where(np.arange(len(labels)) == 7, 2.0, labels)),
        (inputs, np.where(np.arange(len(labels)) == 7, np.nan, labels)),
        (inputs, labels[:-1]),
        (OnlineInputs(inputs.base_logit, inputs.dense[:, :5], inputs.sparse), labels),
    ]
    for bad_inputs, bad_labels in cases:
        with pytest.raises(InputError):
            model.learn_many(bad_inputs, bad_labels)
        assert fingerprint(model) == before
    with pytest.raises(InputError):
        model.predict_many(OnlineInputs(inputs.base_logit, inputs.dense, out_of_table))
    with pytest.raises(InputError):
        model.predict_many("not inputs")  # type: ignore[arg-type]


def check_empty_batch_is_a_no_op(model: OnlineModel) -> None:
    inputs, labels = random_batch(6)
    model.learn_many(inputs.take(slice(0, 0)), labels[:0])
    assert model.n_updates == 0 and not model.weights().any()


CHECKS: list[Callable[[OnlineModel], None]] = [
    check_predict_shape_and_dtype,
    check_zero_weights_score_exactly_the_base,
    check_predict_changes_nothing,
    check_learning_moves_scores_toward_labels,
    check_batch_equals_rows_one_by_one,
    check_deterministic,
    check_snapshot_round_trip,
    check_restore_refuses_another_base_version,
    check_restore_refuses_corrupt_or_misfit_blobs,
    check_l1_makes_weights_sparse,
    check_bad_inputs_raise_and_change_nothing,
    check_empty_batch_is_a_no_op,
]


@pytest.mark.parametrize(
    "implementation, check",
    [
        pytest.param(impl, check, id=f"{impl.__name__}-{check.__name__.removeprefix('check_')}")
        for impl in IMPLEMENTATIONS
        for check in CHECKS
    ],
)
def test_contract(implementation: type[OnlineModel], check: Callable[[OnlineModel], None]) -> None:
    check(implementation(n_dense=6, hash_bits=10, base_version="base-1"))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"n_dense": -1}, "n_dense"),
        ({"hash_bits": 40}, "hash_bits"),
        ({"base_version": ""}, "base_version"),
        ({"alpha": 0.0}, "alpha"),
        ({"l1": -1.0}, "l1"),
        ({"l2": float("nan")}, "l2"),
    ],
)
@pytest.mark.parametrize("implementation", IMPLEMENTATIONS, ids=lambda c: c.__name__)
def test_bad_hyper_parameters_are_refused(
    implementation: type[OnlineModel], kwargs: dict, message: str
) -> None:
    settings = {"n_dense": 6, "hash_bits": 10, "base_version": "base-1", **kwargs}
    with pytest.raises(InputError, match=message):
        implementation(**settings)
