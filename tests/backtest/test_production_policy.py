"""The backtest runs production's policy (issue 18).

- The online layer serves only once ``online_layer.readiness`` passes, with serving's
  settings; until then the request is served by the base alone, and counted as such.
- A base its evaluation gate rejected never serves ``base_only``/``hybrid``: the previous
  one keeps serving (its compute is still paid).
- ``daily_fresh``'s epoch count comes from one validated warm fit at the first daily cut-off;
  every later fit trains on every row before its cut-off (no held-out day) for that count.

Real Cython FTRL and featurizer; the base tier is replaced by fixed logits (no fit needed).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
import pyarrow as pa

from base_model.artifact import BaseScores
from online_layer.config import OnlineLayerConfig
from serving.backtest.ceiling import fresh_chain
from serving.backtest.config import BacktestConfig
from serving.backtest.data import ReplayData
from serving.backtest.online import OnlineSession
from serving.backtest.policies import Fit
from serving.backtest.replay import replay

D = 4
T0 = datetime(2026, 1, 5, tzinfo=UTC)


def _data(n: int, seconds_apart: float = 1.0, start: datetime = T0) -> ReplayData:
    rng = np.random.default_rng(0)
    items = np.arange(n) % 5
    labels = (rng.random(n) < np.where(items == 0, 0.9, 0.1)).astype(np.float64)
    ts = int(start.timestamp() * 1e6) + (np.arange(n) * seconds_apart * 1e6).astype(np.int64)
    return ReplayData(
        training_set=pa.table({"x": np.zeros(n)}),
        ts_us=ts,
        labels=labels,
        user_ids=np.array([f"u{i % 7}" for i in range(n)], dtype=object),
        item_ids=np.array([f"i{i}" for i in items], dtype=object),
        user_features=np.zeros((n, 6), np.float32),
        item_features=np.zeros((n, 10), np.float32),
        fresh=np.zeros((n, 3), np.float32),
        item_categories=np.array(["c"] * n, dtype=object),
        positions=np.zeros(n, dtype=np.int64),
        hours=np.zeros(n, dtype=np.int64),
    )


def _scores(n: int, logit: float = -1.0) -> BaseScores:
    rng = np.random.default_rng(1)
    return BaseScores(
        logits=np.full(n, logit, np.float32),
        user_embeddings=rng.normal(0, 1, (n, D)).astype(np.float32),
        item_embeddings=rng.normal(0, 1, (n, D)).astype(np.float32),
    )


def _base_probs(n: int, logit: float = -1.0) -> np.ndarray:
    return np.full(n, 1 / (1 + np.exp(-logit)))


def test_until_readiness_passes_the_base_alone_serves_and_is_counted_as_base():
    n, min_examples = 3000, 1000
    cfg = OnlineLayerConfig(hash_bits=10, alpha=0.5, batch_size=100,
                            readiness_min_examples=min_examples, readiness_window=500)
    session = OnlineSession("b1", D, cfg)
    out = session.run(_data(n), 0, n, _scores(n), 100)
    base = _base_probs(n)
    # Before min_examples were learned nothing but the base served, though the layer's own
    # (ungated) score had already moved.
    np.testing.assert_allclose(out.served[:min_examples], base[:min_examples], rtol=1e-6)
    assert not out.online[:min_examples].any()
    assert not np.allclose(out.ungated[:min_examples], base[:min_examples])
    # The layer learns item i0 (90% clicks vs 10%): it becomes ready and then serves.
    assert session.first_ready_after == min_examples
    assert out.online[min_examples:].all()
    np.testing.assert_array_equal(out.served[min_examples:], out.ungated[min_examples:])


def test_a_layer_that_never_passes_readiness_never_serves():
    n = 2000
    cfg = OnlineLayerConfig(hash_bits=10, alpha=0.5, batch_size=100, readiness_min_examples=5000)
    session = OnlineSession("b1", D, cfg)
    out = session.run(_data(n), 0, n, _scores(n), 100, delay_us=0)
    np.testing.assert_allclose(out.served, _base_probs(n), rtol=1e-6)
    assert not out.online.any() and not session.ever_ready
    assert session.readiness_checks == n // 100


def test_rank_time_correction_is_clipped_as_serving_clips_it():
    n = 3000
    cfg = OnlineLayerConfig.from_dict({"hash_bits": 10, "alpha": 5.0, "readiness_min_examples": 0,
                                       "guard": {"max_correction": 0.25}})
    out = OnlineSession("b1", D, cfg).run(_data(n), 0, n, _scores(n), 100)
    logit = np.log(out.ungated / (1 - out.ungated))
    assert np.abs(logit - -1.0).max() <= 0.25 + 1e-6


@dataclass
class _Scorer:
    logit: float
    embedding_dim: int = D


class _Tiers:
    """The replay's tier context with fixed-logit "bases"; statuses by fit number."""

    online_batch = 50
    online_delay_us = None
    online_cfg = OnlineLayerConfig(hash_bits=10)  # for the no-base baselines
    last_block = ""

    def __init__(self, statuses: list[str]) -> None:
        self.statuses = statuses
        self.calls: list[dict] = []

    def fit_base(self, data, n_rows, cutoff, parent, *, no_holdout=False, overrides=None,
                 train_days=None):
        k = len(self.calls)
        self.calls.append({"cutoff": cutoff, "parent": parent and parent.version,
                           "no_holdout": no_holdout, "overrides": dict(overrides or {}),
                           "train_days": train_days})
        status = self.statuses[k] if k < len(self.statuses) else "approved"
        fit = Fit(cutoff=cutoff, train_rows=n_rows, train_max_ts=None, seconds=1.0, artifact="",
                  version=f"v{k}", parent=parent and parent.version, status=status,
                  fit_seconds=1.0, samples=n_rows, epochs=3, best_epoch=2)
        return fit, _Scorer(logit=-1.0 - 0.1 * k)

    def score_base(self, scorer, data, lo, hi):
        return _scores(hi - lo, scorer.logit)

    def online_session(self, fit, scorer, online_cfg=None):
        return OnlineSession(fit.version, D, OnlineLayerConfig(hash_bits=10))


def test_a_rejected_base_is_never_served_and_the_next_fit_warm_starts_from_the_served_one():
    # 6 days of one event a minute; warm-up 2d, base every 1d (== daily): fits in order
    # shared v0, base_only v1 (rejected), v2, v3, then daily_retrain v4..v6, then
    # daily_fresh calibration v7 and v8..v10, daily_fresh_new calibration v11 and v12..v14.
    data = _data(6 * 1440, seconds_apart=60.0)
    cfg = BacktestConfig(warmup=timedelta(days=2), base_every=timedelta(days=1))
    tiers = _Tiers(["approved", "rejected", "approved", "approved", "rejected"])
    outcome = replay(data, cfg, tiers, lambda phase, msg: None)
    served = set(outcome.runs["base_only"].base_version)
    assert "v1" not in served and served == {"v0", "v2", "v3"}
    assert set(outcome.runs["hybrid"].base_version) == served
    assert tiers.calls[2]["parent"] == "v0"  # warm from the base that kept serving
    assert [f.version for f in outcome.runs["base_only"].fits] == ["v0", "v1", "v2", "v3"]  # paid
    assert outcome.production["rejected_fits"] == [
        {"policy": "base_only", "cutoff": (T0 + timedelta(days=3)).isoformat(), "version": "v1",
         "kept": "v0"}]
    # The ceilings do not obey the gate: daily_retrain serves its rejected v4.
    assert "v4" in set(outcome.runs["daily_retrain"].base_version)


def test_serve_rejected_restores_the_old_behaviour():
    data = _data(6 * 1440, seconds_apart=60.0)
    cfg = BacktestConfig(warmup=timedelta(days=2), base_every=timedelta(days=1), obey_gate=False,
                         fresh_ceiling=False)
    outcome = replay(data, cfg, _Tiers(["approved", "rejected"]), lambda phase, msg: None)
    assert "v1" in set(outcome.runs["base_only"].base_version)
    assert "daily_fresh" not in outcome.extra


def test_fresh_ceiling_fixes_its_epochs_on_the_first_daily_fit_and_holds_no_day_out():
    data = _data(6 * 1440, seconds_apart=60.0)
    tiers = _Tiers([])
    times = [T0 + timedelta(days=d) for d in (2, 3, 4, 5)]
    shared = tiers.fit_base(data, 10, times[0], None)

    def bound(t):
        return int(np.searchsorted(data.ts_us, int(t.timestamp() * 1e6)))

    ceiling = fresh_chain(data, tiers, shared, times, bound, lambda phase, msg: None)
    calib, *fresh = tiers.calls[1:]
    assert calib["cutoff"] == times[1] and not calib["no_holdout"] and calib["parent"] == "v0"
    assert ceiling.epochs == 2  # the calibration fit's best epoch
    assert [c["cutoff"] for c in fresh] == times[1:]
    assert all(c["no_holdout"] and c["overrides"] == {"warm_epochs": 2, "epochs": 2} for c in fresh)
    assert [c["parent"] for c in fresh] == ["v0", "v2", "v3"]  # warm, chained on itself
    assert [f.version for f, _ in ceiling.chain] == ["v0", "v2", "v3", "v4"]
    assert [f.version for f in ceiling.paid] == ["v0", "v1", "v2", "v3", "v4"]  # calibration paid


def test_fresh_new_ceiling_trains_each_fit_on_the_newest_day_only():
    data = _data(6 * 1440, seconds_apart=60.0)
    tiers = _Tiers([])
    times = [T0 + timedelta(days=d) for d in (2, 3, 4)]
    shared = tiers.fit_base(data, 10, times[0], None)

    def bound(t):
        return int(np.searchsorted(data.ts_us, int(t.timestamp() * 1e6)))

    fresh_chain(data, tiers, shared, times, bound, lambda phase, msg: None, window="new")
    calib, *fresh = tiers.calls[1:]
    assert calib["train_days"] == 1 and not calib["no_holdout"]
    assert all(c["train_days"] == 1 and c["no_holdout"] for c in fresh)
    fresh_chain(data, tiers, shared, times, bound, lambda phase, msg: None, window="all")
    assert all(c["train_days"] is None for c in tiers.calls[4:])
