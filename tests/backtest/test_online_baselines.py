"""The baselines with no neural base (issue 18): ``ftrl_alone`` and ``counter_ftrl``.

- ``ftrl_alone`` (the online layer on a logit of 0) learns what the layer can learn with no
  base: on a log where items differ strongly it beats the ``constant`` click rate;
- ``counter_ftrl`` is the layer on the counter's logit: where nothing is learned it is
  exactly ``item_rate``;
- neither sees its own label or a simultaneous one, nor one not yet due.

The real Cython FTRL and featurizer, the online layer's shipped defaults (as the rule says),
hand-made logs (no base, no feature store).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from online_layer.config import OnlineLayerConfig
from protos.metrics import log_loss
from serving.backtest.baselines import constant_so_far, item_rate_so_far
from serving.backtest.data import ReplayData
from serving.backtest.online_baselines import ONLINE_BASELINES, online_baseline_runs

SECOND = 1_000_000
DEFAULTS = OnlineLayerConfig()  # the shipped defaults: the baselines' fixed hyper-parameters


def _log(ts_us: np.ndarray, labels: np.ndarray, items: np.ndarray) -> ReplayData:
    n = ts_us.size
    return ReplayData(
        training_set=pa.table({"x": np.zeros(n)}),
        ts_us=ts_us.astype(np.int64),
        labels=labels.astype(np.float64),
        user_ids=np.array([f"u{i % 11}" for i in range(n)], dtype=object),
        item_ids=np.array([f"i{k}" for k in items], dtype=object),
        user_features=np.zeros((n, 6), np.float32),
        item_features=np.zeros((n, 10), np.float32),
        fresh=np.full((n, 3), np.nan, np.float32),  # no fresh counters: missing is 0
        item_categories=np.array(["c"] * n, dtype=object),
        positions=np.arange(n, dtype=np.int64) % 3,
        hours=np.zeros(n, dtype=np.int64),
    )


def _strong_items(n: int) -> ReplayData:
    """Item i0 is clicked 70% of the time, the other four 3%: one event a second."""
    rng = np.random.default_rng(5)
    items = rng.integers(0, 5, n)
    labels = (rng.random(n) < np.where(items == 0, 0.7, 0.03)).astype(float)
    return _log(np.arange(n) * SECOND, labels, items)


def test_ftrl_alone_learns_an_item_effect_and_beats_the_constant():
    data = _strong_items(3000)
    half = data.ts_us.size // 2
    runs = online_baseline_runs(data, half, DEFAULTS, DEFAULTS.batch_size, 10 * SECOND)
    assert set(runs) == set(ONLINE_BASELINES)
    alone = runs["ftrl_alone"].probs
    y = data.labels[half:]
    constant = constant_so_far(data.ts_us, data.labels, 10 * SECOND)[half:]
    assert log_loss(y, alone) < log_loss(y, constant) - 0.1
    i0 = data.item_ids[half:] == "i0"
    # It learned which item is which (slowly: the shipped alpha is small).
    assert alone[i0].mean() > 0.3 and alone[~i0].mean() < 0.2
    assert runs["ftrl_alone"].online_examples == data.ts_us.size  # learned every row, from the first


def test_counter_ftrl_is_the_counter_where_nothing_is_due_and_moves_once_it_learns():
    data = _strong_items(3000)
    delay = 600 * SECOND  # nothing is due for the first 600 events
    runs = online_baseline_runs(data, 0, DEFAULTS, DEFAULTS.batch_size, delay)
    counter = item_rate_so_far(data.ts_us, data.labels, data.item_ids, delay)
    both = runs["counter_ftrl"].probs
    early = data.ts_us < data.ts_us[0] + delay
    assert early.sum() == 600
    np.testing.assert_allclose(both[early], counter[early], rtol=1e-12)
    np.testing.assert_array_equal(runs["ftrl_alone"].probs[early], 0.5)  # a logit of 0, no weights
    assert np.abs(both[~early] - counter[~early]).max() > 1e-3  # later, the layer corrects it


def test_counter_ftrl_is_exactly_the_counter_when_no_weight_can_leave_zero():
    """An L1 so large that every weight stays 0: the base logit is all that is left, and it
    is ``item_rate``'s, event by event, with the same learning delay."""
    data = _strong_items(1500)
    frozen = OnlineLayerConfig(l1=1e12)
    runs = online_baseline_runs(data, 100, frozen, 64, 30 * SECOND)
    counter = item_rate_so_far(data.ts_us, data.labels, data.item_ids, 30 * SECOND)[100:]
    np.testing.assert_allclose(runs["counter_ftrl"].probs, counter, rtol=1e-9)
    np.testing.assert_array_equal(runs["ftrl_alone"].probs, 0.5)


@pytest.mark.parametrize("delay_us", [0, 1, 7 * SECOND])
def test_neither_sees_its_own_label_nor_a_simultaneous_one(delay_us):
    """Four events share each timestamp and the label is a function of the timestamp (the
    groups alternate: all clicked, none clicked). Flipping every label from group ``g`` on
    changes no score at a time before ``ts_g + max(delay, 1)``, the group itself included;
    later scores do change (they learned the flipped labels)."""
    groups = 300
    ts = np.repeat(np.arange(groups) * SECOND, 4)
    items = np.tile(np.arange(4), groups)
    labels = ((ts // SECOND) % 2 == 0).astype(float)
    g = 200
    flipped = labels.copy()
    flipped[ts >= g * SECOND] = 1.0 - flipped[ts >= g * SECOND]
    cfg = OnlineLayerConfig(alpha=0.5)  # learns fast enough for one flipped group to show
    a = online_baseline_runs(_log(ts, labels, items), 0, cfg, 16, delay_us)
    b = online_baseline_runs(_log(ts, flipped, items), 0, cfg, 16, delay_us)
    unchanged = ts < g * SECOND + max(delay_us, 1)
    for name in ONLINE_BASELINES:
        np.testing.assert_array_equal(a[name].probs[unchanged], b[name].probs[unchanged])
        assert not np.allclose(a[name].probs[~unchanged], b[name].probs[~unchanged])
