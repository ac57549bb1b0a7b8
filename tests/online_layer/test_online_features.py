"""What the featurizer builds: shapes, a stable hash, rank-time positions, clean inputs."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import numpy as np
import pytest

from feature_store.catalog import FRESH_ITEM_FEATURES
from online_layer.errors import InputError
from online_layer.features import POSITION_SLOT, SLOTS, OnlineFeaturizer, OnlineInputs
from online_layer.ftrl import FTRLProximal

D = 4


def build(featurizer: OnlineFeaturizer, n: int = 3, positions=None, fresh=None) -> OnlineInputs:
    rng = np.random.default_rng(0)
    return featurizer.transform(
        rng.normal(size=n),
        rng.normal(size=(n, D)),
        rng.normal(size=(n, D)),
        np.zeros((n, 3)) if fresh is None else fresh,
        "user-7",
        [f"item-{i}" for i in range(n)],
        ["news", "sport", "news"][:n],
        hours=13,
        positions=positions,
    )


@pytest.fixture
def featurizer() -> OnlineFeaturizer:
    return OnlineFeaturizer(embedding_dim=D, hash_bits=12)


def test_layout_of_the_rows(featurizer: OnlineFeaturizer) -> None:
    x = build(featurizer)
    assert featurizer.fresh_features == FRESH_ITEM_FEATURES
    assert x.dense.shape == (3, D + len(FRESH_ITEM_FEATURES)) and x.dense.dtype == np.float64
    assert x.sparse.shape == (3, len(SLOTS)) and x.sparse.dtype == np.int64
    assert ((x.sparse >= 0) & (x.sparse < 1 << 12)).all()
    assert (x.sparse[:, 0] == x.sparse[0, 0]).all()  # the bias token
    assert x.sparse[0, 2] == x.sparse[2, 2] != x.sparse[1, 2]  # category "news" twice


def test_embedding_block_is_scale_free_and_unit_norm_on_average(featurizer: OnlineFeaturizer) -> None:
    rng = np.random.default_rng(1)
    user, items = rng.normal(size=D), rng.normal(size=(200, D))
    args = (np.zeros((200, 3)), "u", [f"i{i}" for i in range(200)], ["c"] * 200)
    a = featurizer.transform(np.zeros(200), user, items, *args, hours=0)
    b = featurizer.transform(np.zeros(200), 50 * user, 0.01 * items, *args, hours=0)
    np.testing.assert_allclose(a.dense, b.dense, atol=1e-12)
    cosine = (items @ user) / (np.linalg.norm(items, axis=1) * np.linalg.norm(user))
    np.testing.assert_allclose(a.dense[:, :D].sum(axis=1), np.sqrt(D) * cosine, atol=1e-12)


def test_fresh_counters_are_squashed_and_missing_ones_are_zero(featurizer: OnlineFeaturizer) -> None:
    fresh = np.array([[1000.0, 50.0, 0.25], [0.0, 0.0, 0.0], [np.nan, np.nan, np.nan]])
    x = build(featurizer, fresh=fresh)
    np.testing.assert_allclose(x.dense[0, D:], [1.0, np.log1p(50) / np.log1p(1000), 0.5])
    assert not x.dense[1:, D:].any()


def test_rank_time_position_is_one_token_and_learning_swaps_it(featurizer: OnlineFeaturizer) -> None:
    served = build(featurizer)
    assert (served.sparse[:, POSITION_SLOT] == featurizer.rank_position_index).all()
    shown = featurizer.with_positions(served, np.array([0, 1, 500]))
    assert np.array_equal(np.delete(shown.sparse, POSITION_SLOT, 1), np.delete(served.sparse, POSITION_SLOT, 1))
    assert len(set(shown.sparse[:, POSITION_SLOT])) == 3
    last = featurizer.with_positions(served, np.array([31, 32, 10_000])).sparse[:, POSITION_SLOT]
    assert len(set(last)) == 1  # positions >= position_buckets - 1 share a token
    unknown = featurizer.with_positions(served, np.array([-1, -1, -1]))
    assert np.array_equal(unknown.sparse, served.sparse)
    assert np.array_equal(build(featurizer, positions=[0, 1, 500]).sparse, shown.sparse)


def test_learned_position_weights_never_change_the_ranking(featurizer: OnlineFeaturizer) -> None:
    model = FTRLProximal(featurizer.n_dense, 12, "b")
    served = build(featurizer)
    shown = featurizer.with_positions(served, np.array([0, 1, 2]))
    for _ in range(20):  # the top position is always clicked: a strong position weight
        model.learn_many(shown, np.array([1.0, 0.0, 0.0]))
    rank_time = model.predict_many(served)
    shift = rank_time - model.predict_many(featurizer.with_positions(served, np.array([5, 5, 5])))
    np.testing.assert_allclose(shift, shift[0], atol=1e-12)  # same shift for every candidate


def test_hashing_is_stable_across_processes(featurizer: OnlineFeaturizer) -> None:
    code = (
        "import json, numpy as np; from online_layer.features import OnlineFeaturizer\n"
        "f = OnlineFeaturizer(embedding_dim=4, hash_bits=12)\n"
        "x = f.transform(np.zeros(3), np.ones((3, 4)), np.ones((3, 4)), np.zeros((3, 3)),"
        " 'user-7', ['item-0', 'item-1', 'item-2'], ['news', 'sport', 'news'], hours=13)\n"
        "print(json.dumps(x.sparse.tolist()))"
    )
    results = []
    for seed in ("1", "2"):
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True,
            env={"PYTHONHASHSEED": seed, "PATH": "/usr/bin:/bin"},
        )
        results.append(json.loads(out.stdout))
    here = build(featurizer).sparse.tolist()
    assert results[0] == results[1] == here


def test_one_user_id_or_one_per_row_give_the_same_rows(featurizer: OnlineFeaturizer) -> None:
    rng = np.random.default_rng(2)
    args = (np.zeros(2), rng.normal(size=(2, D)), rng.normal(size=(2, D)), np.zeros((2, 3)))
    a = featurizer.transform(*args, "u1", ["a", "b"], ["c", "c"], hours=[3, 3])
    b = featurizer.transform(*args, ["u1", "u1"], ["a", "b"], ["c", "c"], hours=3)
    assert np.array_equal(a.sparse, b.sparse) and np.array_equal(a.dense, b.dense)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"base_logits": np.array([0.0, np.nan, 0.0])}, "finite"),
        ({"item_embeddings": np.ones((3, D + 1))}, "item_embeddings"),
        ({"user_embeddings": np.ones((2, D))}, "user_embeddings"),
        ({"fresh": np.zeros((3, 2))}, "fresh"),
        ({"item_ids": ["a", "b"]}, "item_ids"),
        ({"hours": 24}, "hours"),
        ({"hours": 1.5}, "hours"),
        ({"positions": [0, 1]}, "positions"),
    ],
)
def test_bad_arguments_are_named(featurizer: OnlineFeaturizer, change: dict, message: str) -> None:
    args: dict[str, Any] = {
        "base_logits": np.zeros(3),
        "user_embeddings": np.ones((3, D)),
        "item_embeddings": np.ones((3, D)),
        "fresh": np.zeros((3, 3)),
        "user_id": "u",
        "item_ids": ["a", "b", "c"],
        "item_categories": ["x", "y", "z"],
        "hours": 5,
    }
    args.update(change)
    with pytest.raises(InputError, match=message):
        featurizer.transform(**args)


def test_online_inputs_coerce_and_check() -> None:
    # Lists are coerced (the annotation says arrays; callers may pass array-likes).
    x = OnlineInputs(
        [1, 2], [[1, 2], [3, 4]], np.array([[1], [2]], dtype=np.int32)  # type: ignore[arg-type]
    )
    assert x.base_logit.dtype == np.float64 and x.sparse.dtype == np.int64 and len(x) == 2
    with pytest.raises(InputError, match="integers"):
        OnlineInputs([1.0], [[1.0]], [[0.5]])  # type: ignore[arg-type]
    with pytest.raises(InputError, match="dense"):
        OnlineInputs([1.0, 2.0], [[1.0]], [[1], [2]])  # type: ignore[arg-type]


def test_layout_names_everything_that_fixes_a_weights_meaning(featurizer: OnlineFeaturizer) -> None:
    layout = featurizer.layout()
    assert layout["slots"] == list(SLOTS) and layout["hash_bits"] == 12
    assert layout["embedding_dim"] == D and layout["fresh_features"] == list(FRESH_ITEM_FEATURES)
    assert "hash_scheme" in layout and json.loads(json.dumps(layout)) == layout
