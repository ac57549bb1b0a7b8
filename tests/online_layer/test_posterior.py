"""The online layer's diagonal Gaussian posterior (Chapelle & Li 2011) and its Thompson samples."""

from __future__ import annotations

import hashlib
import json
import struct

import numpy as np
import pytest

from online_layer import load_snapshot
from online_layer.errors import InputError
from online_layer.features import OnlineInputs
from online_layer.ftrl import FTRLProximal
from online_layer.model import OnlineModel
from online_layer.reference import FTRLReference
from online_layer.snapshot import MAGIC
from online_layer.synthetic import benchmark_batch


def _trained(cls: type[OnlineModel], prior: float = 2.0) -> OnlineModel:
    m = cls(64, 12, "base-1", prior_precision=prior)
    for seed in range(3):
        m.learn_many(*benchmark_batch(200, hash_bits=12, seed=seed))
    return m


@pytest.mark.parametrize("cls", [FTRLProximal, FTRLReference], ids=["cython", "numpy"])
def test_precision_grows_for_seen_coordinates_and_stays_at_the_prior_elsewhere(cls: type) -> None:
    m = cls(64, 12, "base-1", prior_precision=2.0)
    assert np.array_equal(m.posterior_precision(), np.full(m.n_coords, 2.0))
    inputs, labels = benchmark_batch(200, hash_bits=12, seed=0)
    m.learn_many(inputs, labels)
    first = m.posterior_precision()
    seen = np.zeros(m.n_coords, dtype=bool)
    seen[:64] = True
    seen[64 + np.unique(inputs.sparse)] = True
    assert (first[seen] > 2.0).all()
    assert np.array_equal(first[~seen], np.full(int((~seen).sum()), 2.0))
    m.learn_many(inputs, labels)  # the same rows again: every seen precision grows further
    assert (m.posterior_precision()[seen] > first[seen]).all()


def test_one_example_adds_p_times_one_minus_p_times_x_squared() -> None:
    m = FTRLProximal(2, 4, "b", prior_precision=1.0)
    x = OnlineInputs(np.array([0.0]), np.array([[2.0, -1.0]]), np.array([[3, 3, 5]]))
    m.learn_many(x, np.array([1.0]))  # zero weights: p = sigmoid(0) = 0.5, h = 0.25
    prec = m.posterior_precision()
    assert prec[0] == pytest.approx(1.0 + 0.25 * 4.0)
    assert prec[1] == pytest.approx(1.0 + 0.25 * 1.0)
    assert prec[2 + 3] == pytest.approx(1.0 + 0.25 * 4.0)  # index 3 twice: one coordinate, x = 2
    assert prec[2 + 5] == pytest.approx(1.0 + 0.25)
    assert prec[2 + 4] == 1.0


def test_the_kernel_and_the_reference_keep_the_same_precision() -> None:
    fast, slow = _trained(FTRLProximal), _trained(FTRLReference)
    np.testing.assert_allclose(fast.posterior_precision(), slow.posterior_precision(), rtol=1e-9)
    np.testing.assert_allclose(fast.weights(), slow.weights(), rtol=0, atol=1e-9)


def test_samples_mean_and_variance_match_the_posterior() -> None:
    m = _trained(FTRLProximal)
    probe, _ = benchmark_batch(20, hash_bits=12, seed=42)
    samples = m.sample_logits(probe, np.random.default_rng(0), n_samples=20_000)
    assert samples.shape == (20_000, 20)
    mean, var = m.predict_many(probe), m.logit_variance(probe)
    se = np.sqrt(var / 20_000)
    assert (np.abs(samples.mean(axis=0) - mean) < 4.5 * se).all()
    np.testing.assert_allclose(samples.var(axis=0), var, rtol=0.06)
    # A row of new items (never learned) varies more than the same row learned on.
    fresh = FTRLProximal(64, 12, "base-1", prior_precision=2.0)
    assert (fresh.logit_variance(probe) > var).all()


def test_rows_that_share_coordinates_share_the_draw_and_scale_zero_is_the_mean() -> None:
    m = _trained(FTRLProximal)
    probe, _ = benchmark_batch(3, hash_bits=12, seed=5)
    twice = OnlineInputs(
        np.repeat(probe.base_logit, 2), np.repeat(probe.dense, 2, axis=0), np.repeat(probe.sparse, 2, axis=0)
    )
    s = m.sample_logits(twice, np.random.default_rng(1), n_samples=4)
    assert np.array_equal(s[:, 0::2], s[:, 1::2])
    assert not np.array_equal(s[0], s[1])
    mean = m.sample_logits(probe, np.random.default_rng(1), n_samples=2, scale=0.0)
    assert np.array_equal(mean, np.vstack([m.predict_many(probe)] * 2))
    with pytest.raises(InputError, match="n_samples"):
        m.sample_logits(probe, np.random.default_rng(1), n_samples=0)
    with pytest.raises(InputError, match="scale"):
        m.sample_logits(probe, np.random.default_rng(1), scale=-1.0)


def test_snapshot_round_trip_keeps_the_posterior() -> None:
    m = _trained(FTRLProximal, prior=3.0)
    back = load_snapshot(m.snapshot(), "base-1", implementation="numpy")
    assert back.prior_precision == 3.0
    assert np.array_equal(back.posterior_precision(), m.posterior_precision())
    assert np.array_equal(FTRLProximal.from_snapshot(back.snapshot(), "base-1").posterior_precision(),
                          m.posterior_precision())
    assert back.clone().prior_precision == 3.0


def _format_one(m: OnlineModel) -> bytes:
    """The snapshot as the format-1 encoder wrote it (before the posterior existed)."""
    z, n = m.state()
    coords = np.flatnonzero(n).astype("<i8")
    payload = coords.tobytes() + z[coords].astype("<f8").tobytes() + n[coords].astype("<f8").tobytes()
    header = {
        "format_version": 1, "base_version": m.base_version, "n_dense": m.n_dense,
        "hash_bits": m.hash_bits, "params": {"alpha": 0.05, "beta": 1.0, "l1": 0.5, "l2": 1.0},
        "n_updates": m.n_updates, "n_examples": m.n_examples, "nnz": int(coords.size),
        "payload_sha256": hashlib.sha256(payload).hexdigest(), "metadata": {},
    }
    raw = json.dumps(header, sort_keys=True).encode("utf-8")
    return struct.pack("<8sII", MAGIC, 1, len(raw)) + raw + payload


def test_a_format_one_snapshot_loads_with_its_weights_and_the_prior() -> None:
    m = _trained(FTRLProximal, prior=2.0)
    old = load_snapshot(_format_one(m), "base-1")
    assert np.array_equal(old.weights(), m.weights()) and old.nnz() > 0
    assert old.prior_precision == 1.0
    assert np.array_equal(old.posterior_precision(), np.ones(m.n_coords))
    old.learn_many(*benchmark_batch(10, hash_bits=12, seed=8))  # and it learns on from there
    assert old.posterior_precision().max() > 1.0


def test_the_kernel_gather_adds_each_rows_draws_bit_for_bit_as_numpy_does() -> None:
    from online_layer._ftrl import add_gathered

    rng = np.random.default_rng(5)
    for n_slots in (1, 3, 6):  # production has 6 hashed slots
        eps = rng.standard_normal((9, 40), dtype=np.float32) * np.float32(2.5)
        inv = rng.integers(0, 40, (300, n_slots))
        start = rng.standard_normal((9, 300))
        expected = start + eps[:, inv].sum(axis=2)
        add_gathered(start, eps, inv)
        assert np.array_equal(start, expected)
    out = np.zeros((2, 3))
    with pytest.raises(ValueError, match="outside"):
        add_gathered(out, np.zeros((2, 4), dtype=np.float32), np.array([[0], [4], [1]]))
    with pytest.raises(ValueError, match="shapes disagree"):
        add_gathered(out, np.zeros((3, 4), dtype=np.float32), np.zeros((3, 1), dtype=np.int64))
    assert not out.any()  # a refused call changes nothing


def test_columns_draw_only_those_slots_weights_and_hold_the_rest_at_the_mean() -> None:
    model = FTRLProximal(2, 8, "b", prior_precision=1.0)
    # rows 0 and 1 share slot 0's index but differ in slot 1 and in the dense columns
    rows = OnlineInputs(np.zeros(3), np.array([[1.0, 0.0], [0.0, 3.0], [2.0, 2.0]]),
                        np.array([[5, 7], [5, 9], [6, 7]]))
    noise = model.sample_noise(rows, np.random.default_rng(0), n_samples=4000, columns=(0,))
    assert np.array_equal(noise[:, 0], noise[:, 1])  # only the slot-0 weight moves them
    np.testing.assert_allclose(noise.var(axis=0), 1.0, rtol=0.1)  # one prior-variance weight each
    everything = model.sample_noise(rows, np.random.default_rng(0), n_samples=4000)
    assert everything[:, 1].var() > 5  # 9 (dense) + 1 + 1: the full posterior is wider
    with pytest.raises(InputError, match="columns"):
        model.sample_noise(rows, np.random.default_rng(0), columns=(2,))


def test_the_kernel_dedupe_returns_what_numpy_unique_returns() -> None:
    from online_layer._ftrl import distinct_sorted

    rng = np.random.default_rng(8)
    for shape in ((500, 6), (1, 6), (0, 6), (9, 1)):
        cells = np.ascontiguousarray(rng.integers(0, 50, shape)).ravel()
        uniq, inv = distinct_sorted(np.sort(cells), cells)
        expected_uniq, expected_inv = np.unique(cells, return_inverse=True)
        assert np.array_equal(uniq, expected_uniq) and np.array_equal(inv, expected_inv)
    with pytest.raises(ValueError, match="cells"):
        distinct_sorted(np.arange(3), np.arange(4))


def test_noise_parts_are_the_same_draws_split_at_each_rows_own_weight() -> None:
    model = FTRLProximal(2, 8, "b", prior_precision=1.0)
    model.learn_many(OnlineInputs(np.zeros(1), np.zeros((1, 2)), np.array([[4, 4]])), np.ones(1))
    # row 0's own index (slot 1) repeats in its slot 0: value 2; rows 2 and 3 share theirs
    rows = OnlineInputs(np.zeros(4), np.array([[1.0, 0.0], [0.0, 3.0], [2.0, 2.0], [0.0, 1.0]]),
                        np.array([[4, 4], [5, 9], [6, 7], [8, 7]]))
    for columns in (None, (1,)):
        parts = model.sample_noise_parts(rows, np.random.default_rng(3), 50, 0.5, columns, own=1)
        noise = model.sample_noise(rows, np.random.default_rng(3), n_samples=50, scale=0.5, columns=columns)
        assert np.array_equal(parts.noise, noise)  # the same stream, the same draws
        assert parts.alone.tolist() == [True, True, False, False]
        sd = 0.5 / np.sqrt(model.posterior_precision()[2 + np.array([4, 9, 7, 7])])
        count = [2, 1, 1, 1] if columns is None else [1, 1, 1, 1]  # among the drawn slots
        np.testing.assert_allclose(parts.own_sd, sd * np.array(count))
        np.testing.assert_allclose(parts.own[:, 2], parts.own[:, 3])  # one shared weight
        if columns is not None:  # only the own slot drawn: the own part is all of the noise
            np.testing.assert_allclose(parts.own, noise, rtol=1e-6)
    with pytest.raises(InputError, match="own"):
        model.sample_noise_parts(rows, np.random.default_rng(3), 5, 1.0, (0,), own=1)
