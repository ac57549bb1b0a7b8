"""The artifact serving reads: NumPy scores equal to torch's, unseen ids, bad input, warm start."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import torch

from base_model.artifact import BaseScorer, read_weights, write_artifact
from base_model.errors import ArtifactError
from base_model.model import (
    LOG1P,
    RATE,
    ModelSpec,
    Ranker,
    dense_kinds,
    state_from_numpy,
    state_to_numpy,
)
from base_model.vocab import Vocabulary, category_rows, oov_bucket
from base_model.warm import incompatibility, warm_state
from feature_store.catalog import FEATURE_SERVICE_NAME, ITEM_FEATURES, USER_FEATURES

FU, FI = len(USER_FEATURES), len(ITEM_FEATURES)
USERS = [f"u{i}" for i in range(30)]
ITEMS = [f"i{i}" for i in range(50)]


def make_artifact(
    path: pathlib.Path,
    users: list[str] = USERS,
    items: list[str] = ITEMS,
    seed: int = 0,
    buckets: int = 8,
    category_buckets: int = 8,
) -> tuple[pathlib.Path, Ranker]:
    spec = ModelSpec(
        len(users) + buckets,
        len(items) + buckets,
        FU,
        FI,
        8,
        (16, 8),
        dense_kinds((*USER_FEATURES, *ITEM_FEATURES)),
        category_buckets,
    )
    torch.manual_seed(seed)
    model = Ranker(spec)
    with torch.no_grad():  # biases and stats away from their defaults, so the test sees them
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
        model.set_dense_stats(np.linspace(0.1, 1.0, FU + FI), np.linspace(0.5, 2.0, FU + FI))
    manifest = {
        "feature_service": FEATURE_SERVICE_NAME,
        "user_features": list(USER_FEATURES),
        "item_features": list(ITEM_FEATURES),
        "spec": spec.to_dict(),
        "oov_buckets": buckets,
    }
    write_artifact(path, manifest, state_to_numpy(model), users, items)
    return path, model


def features(n: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    uf = rng.gamma(2.0, 20.0, size=(n, FU)).astype(np.float32)
    itf = rng.gamma(2.0, 50.0, size=(n, FI)).astype(np.float32)
    for j, name in enumerate(USER_FEATURES):
        if "_ctr" in name:
            uf[:, j] = rng.random(n)
    for j, name in enumerate(ITEM_FEATURES):
        if "_ctr" in name:
            itf[:, j] = rng.random(n)
    uf[0, 0], itf[1, 2] = np.nan, -5.0  # NaN reads as 0, negatives clip
    return uf, itf


def test_numpy_scores_equal_the_torch_model(tmp_path: pathlib.Path) -> None:
    path, model = make_artifact(tmp_path / "a")
    scorer = BaseScorer.load(path)
    users = ["u3", "u3", "u7", "nobody", "u0"]
    items = ["i1", "i49", "never-seen", "i2", "i2"]
    categories = ["sport", "", None, "news", "sport"]
    uf, itf = features(len(items))
    got = scorer.score(users, items, uf, itf, categories)
    with torch.inference_mode():
        u = torch.as_tensor(scorer.users.lookup(users))
        i = torch.as_tensor(scorer.items.lookup(items))
        c = torch.as_tensor(category_rows(categories, len(items), 8))
        dense = torch.as_tensor(np.concatenate([uf, itf], axis=1))
        want = model(u, i, dense, c).numpy()
        want_u = model.user_emb(u).numpy()
        want_i = model.item_vectors(i, c).numpy()
    assert got.logits.dtype == np.float32 and got.logits.shape == (5,)
    np.testing.assert_allclose(got.logits, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got.user_embeddings, want_u, rtol=1e-6)
    np.testing.assert_allclose(got.item_embeddings, want_i, rtol=1e-6)
    assert got.item_embeddings.shape == (5, scorer.embedding_dim) == (5, 8)
    assert scorer.feature_service == FEATURE_SERVICE_NAME
    assert scorer.version == "unregistered"


def test_the_category_reaches_a_brand_new_item(tmp_path: pathlib.Path) -> None:
    """Two unseen ids in one hashed row: their scores differ only through their categories;
    no categories (the positional call) means "unknown" for every row."""
    scorer = BaseScorer.load(make_artifact(tmp_path / "a")[0])
    twin = next(
        f"new-{k}"
        for k in range(1000)
        if oov_bucket(f"new-{k}", 8) == oov_bucket("new-x", 8) and f"new-{k}" != "new-x"
    )
    uf, itf = features(2)
    itf2 = np.repeat(itf[1:], 4, axis=0)
    items = ["new-x", twin, "new-x", "new-x"]
    s = scorer.score("u1", items, uf[1], itf2, ("sport", "sport", "news", ""))
    assert s.logits[0] == s.logits[1]  # same hashed row, same category
    assert s.logits[0] != s.logits[2] and s.logits[2] != s.logits[3]  # category moves it
    unknown = scorer.score("u1", items, uf[1], itf2)  # positional call: all unknown
    none = scorer.score("u1", items, uf[1], itf2, [None] * 4)
    np.testing.assert_array_equal(unknown.logits, none.logits)
    assert unknown.logits[3] == s.logits[3]
    np.testing.assert_array_equal(s.item_embeddings[0], s.item_embeddings[1])
    assert not np.array_equal(s.item_embeddings[0], s.item_embeddings[2])


def test_a_missing_feature_reads_as_the_training_mean(tmp_path: pathlib.Path) -> None:
    """NaN is "unknown": the value whose standardised input is 0, not a raw 0 (which for a
    click rate would read as "never clicked")."""
    path, model = make_artifact(tmp_path / "a")
    scorer = BaseScorer.load(path)
    uf, itf = features(2)
    uf, itf = np.repeat(uf[1:], 2, axis=0), np.repeat(itf[:1], 2, axis=0)  # two equal rows
    mean = model.dense_mean.numpy()
    j = list(USER_FEATURES).index("user_imp_7d")
    k = list(ITEM_FEATURES).index("item_ctr_24h")
    uf[:, j] = [np.nan, np.expm1(mean[j])]  # log1p(x) == mean
    p = 1 / (1 + np.exp(-mean[FU + k]))  # logit(p) == mean
    itf[:, k] = [np.nan, p]
    s = scorer.score(["u1", "u1"], ["i1", "i1"], uf, itf)
    np.testing.assert_allclose(s.logits[0], s.logits[1], rtol=1e-4, atol=1e-4)
    zero = uf.copy()
    zero[0, j] = 0.0
    assert scorer.score(["u1"], ["i1"], zero[:1], itf[:1]).logits[0] != s.logits[0]


def test_a_format_1_artifact_still_loads_and_scores_as_before(tmp_path: pathlib.Path) -> None:
    """Registries hold versions written before categories: they keep serving unchanged."""
    path, model = make_artifact(tmp_path / "old", category_buckets=0)
    weights = read_weights(path)
    weights.pop("cat_emb.weight")
    weights.pop("cat_bias.weight")
    old_kinds = np.asarray(
        [RATE if "_ctr" in n else LOG1P for n in (*USER_FEATURES, *ITEM_FEATURES)]
    )
    weights["dense_kind"] = old_kinds
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["format"] = "freshrank.base/1"
    manifest["spec"].pop("category_buckets")
    manifest["spec"]["dense_kinds"] = old_kinds.tolist()
    (path / "manifest.json").write_text(json.dumps(manifest))
    np.savez(path / "weights.npz", **weights)
    scorer = BaseScorer.load(path)
    assert scorer.category_buckets == 0
    uf, itf = features(3)
    uf[0, 0] = itf[1, 2] = 1.0  # the old transform read NaN as 0 and did not clip
    got = scorer.score("u1", ["i1", "i2", "zz"], uf[0], itf, ["sport", "", None])
    with torch.no_grad():
        model.dense_kind.copy_(torch.as_tensor(old_kinds))
        model.cat_emb.weight.zero_()
        model.cat_bias.weight.zero_()
        want = model(
            torch.as_tensor(scorer.users.lookup(["u1"] * 3)),
            torch.as_tensor(scorer.items.lookup(["i1", "i2", "zz"])),
            torch.as_tensor(np.concatenate([np.repeat(uf[:1], 3, 0), itf], axis=1)),
        ).numpy()
    np.testing.assert_allclose(got.logits, want, rtol=1e-5, atol=1e-5)


def test_unseen_ids_score_through_their_hashed_row(tmp_path: pathlib.Path) -> None:
    scorer = BaseScorer.load(make_artifact(tmp_path / "a")[0])
    rows = scorer.items.lookup(["never-seen", "i4"])
    assert rows[0] == len(ITEMS) + oov_bucket("never-seen", 8)
    assert rows[1] == 4
    uf, itf = features(2)
    s = scorer.score("u1", ["never-seen", "never-seen"], uf[0], np.stack([itf[0], itf[0]]))
    assert np.isfinite(s.logits).all()
    assert s.logits[0] == s.logits[1]
    np.testing.assert_array_equal(s.user_embeddings[0], s.user_embeddings[1])


@pytest.mark.parametrize(
    ("users", "items", "uf_shape", "if_shape", "message"),
    [
        (["u1"], ["i1", "i2"], (2, FU), (2, FI), "user_ids has 1"),
        (["u1", "u1"], ["i1", "i2"], (2, FU + 1), (2, FI), "user_features must have shape"),
        (["u1", "u1"], ["i1", "i2"], (2, FU), (3, FI), "item_features must have shape"),
    ],
)
def test_bad_shapes_are_value_errors(
    tmp_path: pathlib.Path, users: list, items: list, uf_shape: tuple, if_shape: tuple, message: str
) -> None:
    scorer = BaseScorer.load(make_artifact(tmp_path / "a")[0])
    with pytest.raises(ValueError, match=message):
        scorer.score(users, items, np.zeros(uf_shape, np.float32), np.zeros(if_shape, np.float32))


def test_bad_categories_are_value_or_type_errors(tmp_path: pathlib.Path) -> None:
    scorer = BaseScorer.load(make_artifact(tmp_path / "a")[0])
    uf, itf = np.zeros((2, FU), np.float32), np.zeros((2, FI), np.float32)
    with pytest.raises(ValueError, match="item_categories has 1 entries but item_ids has 2"):
        scorer.score(["u1", "u1"], ["i1", "i2"], uf, itf, ("sport",))
    with pytest.raises(TypeError, match="item categories must be strings or None, got int"):
        scorer.score(["u1", "u1"], ["i1", "i2"], uf, itf, ("sport", 7))


def test_load_names_what_is_missing_or_wrong(tmp_path: pathlib.Path) -> None:
    path, _ = make_artifact(tmp_path / "a")
    (path / "vocab.npz").unlink()
    with pytest.raises(ArtifactError, match=r"vocab\.npz is missing"):
        BaseScorer.load(path)
    path, _ = make_artifact(tmp_path / "b")
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["format"] = "something/9"
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="format 'something/9'"):
        BaseScorer.load(path)


def test_the_serving_path_and_the_cli_import_no_torch() -> None:
    """Serving scores with NumPy; ``freshrank --help`` must not pay for torch or Ray."""
    code = (
        "import sys, base_model.artifact, base_model.training, base_model.train; "
        "print('torch' in sys.modules, 'ray' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.split() == ["False", "False"]


def test_warm_start_keeps_every_score_until_training_moves_it(tmp_path: pathlib.Path) -> None:
    """New ids start at the hashed row the parent scored them with: no score jumps."""
    path, _ = make_artifact(tmp_path / "parent")
    parent = BaseScorer.load(path)
    users = Vocabulary([*USERS, "new-user"], 8)
    items = Vocabulary([*ITEMS, "new-a", "new-b"], 8)
    warm = warm_state(parent, read_weights(path), users, items)
    assert (warm.new_user_rows, warm.new_item_rows) == (1, 2)
    spec = ModelSpec.from_dict(
        {**parent.manifest["spec"], "user_rows": users.rows, "item_rows": items.rows}
    )
    assert incompatibility(parent, spec, 8, FEATURE_SERVICE_NAME) is None
    model = Ranker(spec)
    state_from_numpy(model, warm.state)
    child_path = tmp_path / "child"
    manifest = {**parent.manifest, "spec": spec.to_dict()}
    manifest.pop("format")
    write_artifact(
        child_path, manifest, state_to_numpy(model), users.ids.tolist(), items.ids.tolist()
    )
    child = BaseScorer.load(child_path)
    q_users = ["u1", "new-user", "new-user", "other"]
    q_items = ["new-a", "i3", "new-b", "zzz"]
    uf, itf = features(4)
    np.testing.assert_allclose(
        child.score(q_users, q_items, uf, itf).logits,
        parent.score(q_users, q_items, uf, itf).logits,
        rtol=1e-6,
    )
    assert child.users.lookup(["new-user"])[0] == len(USERS)  # now a known id with its own row


def test_warm_start_refuses_another_shape(tmp_path: pathlib.Path) -> None:
    parent = BaseScorer.load(make_artifact(tmp_path / "p")[0])
    spec = ModelSpec.from_dict({**parent.manifest["spec"], "embedding_dim": 32})
    assert incompatibility(parent, spec, 8, FEATURE_SERVICE_NAME) == "embedding_dim 8 -> 32"
    spec = ModelSpec.from_dict({**parent.manifest["spec"], "category_buckets": 16})
    assert incompatibility(parent, spec, 8, FEATURE_SERVICE_NAME) == "category_buckets 8 -> 16"
    assert "feature service" in incompatibility(
        parent, ModelSpec.from_dict(parent.manifest["spec"]), 8, "ranker_v2"
    )
