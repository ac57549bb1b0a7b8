"""IPS, SNIPS and DR on synthetic bandit logs whose true values are known."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from protos.errors import InvalidInput
from serving.offpolicy.estimators import doubly_robust, ips, kish_ess, snips
from serving.offpolicy.evaluate import evaluate
from serving.offpolicy.intervals import bootstrap, clt, per_request
from serving.offpolicy.logdata import bandit_log
from serving.offpolicy.marginals import DAY_US, logged_marginals
from serving.offpolicy.policies import logged, ranking, uniform
from serving.offpolicy.reward_model import cross_fitted_rewards, fit_predict
from tests.serving.offpolicy_kit import T0, events_table, item_policy, item_values, one_slot_bandit

MU = np.array([0.1, 0.2, 0.3, 0.4])  # the logging policy favours the worst items
Q = np.array([0.5, 0.2, 0.1, 0.05])
PI = np.array([0.7, 0.1, 0.1, 0.1])
TRUTH = float(PI @ Q)  # 0.385; the log's own rate is MU @ Q = 0.12


def test_every_interval_covers_the_truth_and_the_logged_rate_does_not() -> None:
    log = one_slot_bandit(5000, MU, Q, seed=1)
    report = evaluate(log, item_policy(log, PI), resamples=400)
    for name, got in report["estimates"].items():
        assert got["low"] <= TRUTH <= got["high"], (name, got)
        assert got["high"] - got["low"] < 0.1, (name, got)
    assert report["logged_rate"]["high"] < TRUTH  # the naive rate is far off: not a trivial check


@pytest.mark.parametrize("estimator", ["ips", "dr"])
def test_ips_and_dr_are_unbiased_over_many_logs(estimator: str) -> None:
    estimates = []
    for seed in range(200):
        log = one_slot_bandit(400, MU, Q, seed=seed)
        target = item_policy(log, PI)
        terms = ips(log, target) if estimator == "ips" else doubly_robust(
            log, target, cross_fitted_rewards(log, seed=seed))
        estimates.append(terms.estimate)
    mean, se = np.mean(estimates), np.std(estimates, ddof=1) / np.sqrt(len(estimates))
    assert abs(mean - TRUTH) < 3 * se, (mean, se)


def test_snips_equals_ips_when_the_weights_average_to_one() -> None:
    # Two items logged half and half: weights 1.6 and 0.4 under pi = (0.8, 0.2) average to 1.
    item = np.array([0, 1] * 50)
    label = (np.arange(100) % 3 == 0).astype(float)
    log = bandit_log(events_table(np.arange(100), item, np.zeros(100, int), label,
                                  np.full(100, 0.5)), "catalogue")
    target = item_policy(log, np.array([0.8, 0.2]))
    assert snips(log, target).den.mean() == pytest.approx(1.0)
    assert snips(log, target).estimate == pytest.approx(ips(log, target).estimate, abs=1e-12)
    # ... and they differ once the weights do not: 60 / 40 logged gives a mean weight of 1.12.
    item = np.r_[np.zeros(60, int), np.ones(40, int)]
    unbalanced = bandit_log(events_table(np.arange(100), item, np.zeros(100, int), label,
                                         np.full(100, 0.5)), "catalogue")
    target = item_policy(unbalanced, np.array([0.8, 0.2]))
    assert snips(unbalanced, target).den.mean() == pytest.approx(1.12)
    assert snips(unbalanced, target).estimate != pytest.approx(ips(unbalanced, target).estimate, abs=1e-3)


def test_dr_with_a_perfect_reward_model_has_zero_variance_on_deterministic_rewards() -> None:
    q = np.array([1.0, 0.0, 1.0, 0.0])
    log = one_slot_bandit(2000, MU, q, seed=3, deterministic=True)
    report = evaluate(log, item_policy(log, PI), rewards=item_values(log, q), resamples=200)
    dr = report["estimates"]["dr"]
    assert dr["estimate"] == pytest.approx(PI @ q)
    assert dr["high"] - dr["low"] < 1e-12 and dr["low"] == pytest.approx(PI @ q)
    ips_got = report["estimates"]["ips"]
    assert ips_got["high"] - ips_got["low"] > 0.02  # IPS still varies with the logged draws


def test_the_logging_policy_gets_the_logged_rate_from_every_estimator() -> None:
    log = one_slot_bandit(3000, MU, Q, seed=4)
    report = evaluate(log, logged(), resamples=200)
    for got in report["estimates"].values():
        assert got == pytest.approx(report["logged_rate"])
    assert report["ess"] == pytest.approx(log.n)


def test_a_deterministic_log_is_reported_as_unable_to_judge_another_policy() -> None:
    """Serving logs propensity 1.0 while it is deterministic: the report says so."""
    rows = np.arange(40)
    log = bandit_log(events_table(rows // 4, rows % 4, rows % 4, (rows % 5 == 0), np.ones(40)))
    report = evaluate(log, uniform(log), resamples=50)
    assert any("deterministic" in w for w in report["warnings"])
    assert not any("deterministic" in w for w in evaluate(log, logged(), resamples=50)["warnings"])


def test_the_interval_unit_is_the_request() -> None:
    """Two slots of one request with the same click: resampling requests sees the
    correlation (a wider interval) that resampling impressions would miss."""
    rng = np.random.default_rng(5)
    clicks = (rng.random(2000) < 0.1).astype(float)
    rows = np.arange(4000)
    label, item, slot = np.repeat(clicks, 2), rows % 2, rows % 2
    paired = bandit_log(events_table(rows // 2, item, slot, label, np.ones(4000)))
    apart = bandit_log(events_table(rows, item, np.zeros(4000, int), label, np.ones(4000)))
    width = {}
    for name, log in (("paired", paired), ("apart", apart)):
        num = per_request(log.reward, log.request, log.n_requests)
        den = per_request(np.ones(log.n), log.request, log.n_requests)
        got = bootstrap(num, den, resamples=500)
        width[name] = got.high - got.low
    assert width["paired"] > 1.25 * width["apart"], width  # about sqrt(2)


def test_bootstrap_and_clt_agree_on_a_large_well_behaved_log() -> None:
    log = one_slot_bandit(20000, np.full(4, 0.25), Q, seed=6)
    terms = snips(log, item_policy(log, PI))
    num = per_request(terms.num, log.request, log.n_requests)
    den = per_request(terms.den, log.request, log.n_requests)
    a, b = bootstrap(num, den, resamples=500), clt(num, den)
    assert a.high - a.low == pytest.approx(b.high - b.low, rel=0.15)
    assert a.low < b.estimate < a.high


def test_the_reward_model_never_predicts_a_request_from_its_own_clicks() -> None:
    # Item 9 is shown once, and clicked: cross-fitted, its own request cannot know that.
    item = np.r_[np.zeros(199, int), 9]
    label = np.r_[np.zeros(199), 1.0]
    log = bandit_log(events_table(np.arange(200), item, np.zeros(200, int), label, np.ones(200)))
    honest = cross_fitted_rewards(log, folds=5)
    row = log.event_cand[-1]
    seen = fit_predict(log, np.ones(log.n, bool), np.array([row]))[0, 0]
    assert honest[row, 0] < 0.005 and seen > 2 * honest[row, 0]  # the slot's rate, not its own click


def test_a_context_free_policy_is_read_back_from_its_show_frequencies() -> None:
    """Two days of a policy showing items 0..3 at one slot with known daily probabilities:
    its marginals per day are recovered within sampling error, and sum to 1 per slot."""
    rng = np.random.default_rng(8)
    day_probs = np.array([[0.7, 0.1, 0.1, 0.1], [0.1, 0.1, 0.1, 0.7]])
    n = 4000
    day = np.repeat([0, 1], n // 2)
    item = np.array([rng.choice(4, p=day_probs[d]) for d in day])
    table = events_table(np.arange(n), item, np.zeros(n, int), np.zeros(n), day_probs[day, item])
    ts = pa.array((T0.timestamp() * 1e6 + day * 86_400e6 + np.arange(n)).astype(np.int64))
    table = table.set_column(table.schema.get_field_index("ts"), "ts",
                             ts.cast(pa.timestamp("us", tz="UTC")))
    log = bandit_log(table, "catalogue")
    probs = logged_marginals(log, table, table, window_us=DAY_US).probs
    assert probs is not None
    per_request = probs.reshape(log.n_requests, 4)
    assert np.allclose(per_request.sum(axis=1), 1.0)
    first, last = log.request[0], log.request[-1]
    assert np.allclose(per_request[first], day_probs[0], atol=0.03)
    assert np.allclose(per_request[last], day_probs[1], atol=0.03)
    with pytest.raises(InvalidInput, match="--candidates catalogue"):
        logged_marginals(bandit_log(table), table, table)


def test_kish_ess() -> None:
    assert kish_ess(np.ones(50)) == pytest.approx(50)
    assert kish_ess(np.r_[np.zeros(49), 3.0]) == pytest.approx(1)


def test_ranking_and_uniform_marginals_fill_each_slot_once() -> None:
    rows = np.arange(12)
    log = bandit_log(events_table(rows // 4, rows % 4, rows % 4, np.zeros(12), np.full(12, 0.25)))
    scores = np.array([0.1, 0.9, 0.5, 0.3] * 3)
    probs = ranking(log, scores).probs
    assert probs is not None
    assert probs[:4].argmax(axis=0).tolist() == [1, 2, 3, 0]  # best first
    per_request = np.add.reduceat(probs, log.cand_start[:-1], axis=0)
    assert np.array_equal(per_request, np.ones((3, 4)))
    uni = uniform(log).probs
    assert uni is not None and np.allclose(np.add.reduceat(uni, log.cand_start[:-1], axis=0), 1)


@pytest.mark.parametrize(("propensity", "message"), [
    (np.full(4, np.nan), "lack propensity"),
    (np.array([0.5, 0.0, 0.5, 0.5]), r"must be in \(0, 1\]"),
    (np.array([0.5, 1.5, 0.5, 0.5]), r"must be in \(0, 1\]"),
])
def test_a_log_without_usable_propensities_is_refused(propensity: np.ndarray, message: str) -> None:
    table = events_table(np.arange(4), np.arange(4), np.zeros(4, int), np.zeros(4), propensity)
    with pytest.raises(InvalidInput, match=message):
        bandit_log(table)


def test_an_item_twice_in_one_request_is_refused() -> None:
    table = events_table(np.zeros(2, int), np.zeros(2, int), np.arange(2), np.zeros(2), np.ones(2))
    with pytest.raises(InvalidInput, match="twice in one request"):
        bandit_log(table)
