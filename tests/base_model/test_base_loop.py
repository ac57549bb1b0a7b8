"""The training loop's choices: which weights it returns, when it stops, where it starts.

Pure-noise labels make every step after the start memorisation: the validation loss can only
rise, so the loop must stop early and return the weights it started from.
"""

from __future__ import annotations

import numpy as np
import torch

from base_model.loop import LoopSettings, bare_loop
from base_model.model import ModelSpec, Ranker, cold_state, dense_kinds, dense_stats
from feature_store.catalog import ITEM_FEATURES, USER_FEATURES

NAMES = (*USER_FEATURES, *ITEM_FEATURES)
SPEC = ModelSpec(60, 80, len(USER_FEATURES), len(ITEM_FEATURES), 8, (16,), dense_kinds(NAMES), 4)


def rows(n: int, seed: int, click_rate: float) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    dense = rng.gamma(2.0, 5.0, size=(n, len(NAMES))).astype(np.float32)
    for j, name in enumerate(NAMES):
        if "_ctr" in name:
            dense[:, j] = rng.uniform(0.01, 0.1, n)
    return {
        "user": rng.integers(0, 60, n),
        "item": rng.integers(0, 80, n),
        "category": rng.integers(0, 5, n),
        "dense": dense,
        "label": (rng.random(n) < click_rate).astype(np.float32),
    }


def settings(**changes: object) -> LoopSettings:
    values = dict(
        learning_rate=0.05,
        epochs=8,
        batch_size=64,
        weight_decay=0.0,
        eval_every_steps=0,
        seed=0,
        keep_best=True,
        early_stopping_patience=2,
    )
    values.update(changes)
    return LoopSettings(**values)  # type: ignore[arg-type]


def start_state(train: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    mean, std = dense_stats(train["dense"], SPEC.dense_kinds)
    return cold_state(SPEC, 0, mean, std, label_rate=float(train["label"].mean()))


def test_when_nothing_beats_the_start_the_start_is_returned_and_training_stops() -> None:
    train, valid = rows(3000, 1, 0.5), rows(1000, 2, 0.5)
    init = start_state(train)
    out = bare_loop(SPEC, init, settings(), train, valid)
    assert out.best is not None and out.best["step"] == 0 and out.best["epoch"] == 0
    assert out.stopped_early and len(out.epoch_seconds) == 2 < 8  # patience 2
    assert all(c["val_logloss"] > out.best["val_logloss"] for c in out.curve[1:])
    for name, value in init.items():
        np.testing.assert_array_equal(out.state[name], value, err_msg=name)
    assert out.metrics()["val_logloss"] == out.best["val_logloss"]
    assert out.metrics()["last_val_logloss"] == out.curve[-1]["val_logloss"]


def test_without_keep_best_the_last_weights_are_returned() -> None:
    train, valid = rows(3000, 1, 0.5), rows(1000, 2, 0.5)
    init = start_state(train)
    out = bare_loop(
        SPEC, init, settings(keep_best=False, early_stopping_patience=0, epochs=3), train, valid
    )
    assert out.best is None and not out.stopped_early and len(out.epoch_seconds) == 3
    assert not np.array_equal(out.state["user_emb.weight"], init["user_emb.weight"])
    assert out.metrics()["val_logloss"] == out.curve[-1]["val_logloss"]


def test_a_cold_start_predicts_the_training_click_rate() -> None:
    """Rare clicks (0.4%): the untrained model says 0.4%, not 50% (nor, after a few steps of
    pushing a 50% start down, 1e-5)."""
    train = rows(4000, 3, 0.004)
    model = Ranker(SPEC)
    state = start_state(train)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
    with torch.no_grad():
        p = torch.sigmoid(
            model(*(torch.as_tensor(train[k]) for k in ("user", "item", "dense", "category")))
        )
    rate = float(train["label"].mean())
    assert 0.002 < rate < 0.008
    assert 0.7 * rate < float(p.mean()) < 1.4 * rate
