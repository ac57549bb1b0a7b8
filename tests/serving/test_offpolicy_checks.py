"""Off-policy estimates against known truths: the simulator (every policy's true click rate
is computable) and Open Bandit (the random policy's on-policy click rate, estimated from
the log of its Bernoulli Thompson sampling policy); and ``freshrank evaluate``."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from feature_store.simulate import SimulatorConfig, simulate
from protos.registry import ModelRegistry
from serving import cli
from serving.offpolicy.candidates import base_scores
from serving.offpolicy.evaluate import evaluate
from serving.offpolicy.logdata import bandit_log
from serving.offpolicy.marginals import logged_marginals
from serving.offpolicy.policies import ranking, uniform
from serving.offpolicy.simulated import Relogged, relog, true_value

CFG = SimulatorConfig(days=0.5, impressions_per_day=40_000, n_users=500)


@pytest.fixture(scope="module")
def relogged() -> Relogged:
    """Half a simulated day (~1,500 slates of 10) re-served by epsilon-greedy (0.3) over a
    noisy score, with its propensities. One seeded log: a 95 % interval misses about one
    log in ten to twenty (seed 1's uniform SNIPS interval ends 0.0001 below the truth);
    ``bench/ope.py`` measures the coverage over 40 logs (bench/RESULTS.md)."""
    return relog(simulate(CFG), CFG.position_decay, epsilon=0.3, seed=0)


def test_simulated_intervals_cover_each_policys_true_click_rate(relogged: Relogged) -> None:
    log = relogged.log
    targets = [uniform(log), ranking(log, relogged.attraction, "oracle"),
               ranking(log, -relogged.attraction, "worst")]
    truths = [true_value(relogged, t) for t in targets]
    assert truths[1] > 1.1 * true_value(relogged, relogged.logging) > 1.1 * truths[2]
    for target, truth in zip(targets, truths):
        report = evaluate(log, target, resamples=300)
        for name, got in report["estimates"].items():
            assert got["low"] <= truth <= got["high"], (target.name, name, truth, got)
        if target.name != "uniform":  # the log's own rate would not do: the check can fail
            rate = report["logged_rate"]
            assert not rate["low"] <= truth <= rate["high"], (target.name, truth, rate)


@pytest.fixture(scope="module")
def open_bandit(shared_data: Path) -> dict[str, pa.Table]:
    """Open Bandit's ``random`` and ``bts`` logs (10,000 rows each) as events."""
    from feature_store.importers import import_dataset

    return {p: import_dataset("open-bandit", shared_data / "open-bandit" / p) for p in ("random", "bts")}


def test_open_bandit_random_policys_rate_is_estimated_from_the_bts_log(
    open_bandit: dict[str, pa.Table],
) -> None:
    """Uniformly random over the 80 items (the ``random`` log's policy), estimated from the
    ``bts`` log's propensities, lands within its interval of the random log's own rate."""
    bts = bandit_log(open_bandit["bts"], "catalogue")
    random_log = bandit_log(open_bandit["random"], "catalogue")
    on_policy = float(random_log.reward.mean())  # 38 clicks in 10,000
    report = evaluate(bts, uniform(bts), resamples=300)
    assert report["ess"] < 0.1 * bts.n  # far from the random log: a real test of the weights
    for name, got in report["estimates"].items():
        assert got["low"] <= on_policy <= got["high"], (name, on_policy, got)
    assert evaluate(random_log, uniform(random_log), resamples=50)["estimates"]["ips"][
        "estimate"] == pytest.approx(on_policy, rel=1e-6)  # random's propensities are 1/80


def test_open_bandit_bts_policys_rate_is_estimated_from_the_random_log(
    open_bandit: dict[str, pa.Table],
) -> None:
    """The BTS policy (its marginals read back from its own log as daily show frequencies)
    estimated from the ``random`` log lands within its interval of the BTS log's own rate."""
    random_log = bandit_log(open_bandit["random"], "catalogue")
    on_policy = float(bandit_log(open_bandit["bts"], "catalogue").reward.mean())  # 42 clicks
    target = logged_marginals(random_log, open_bandit["random"], open_bandit["bts"], "bts")
    report = evaluate(random_log, target, resamples=300)
    assert report["ess"] < 0.5 * random_log.n  # BTS concentrates on a few items
    for name, got in report["estimates"].items():
        assert got["low"] <= on_policy <= got["high"], (name, on_policy, got)


def _register_tiny_base(workspace: Path) -> str:
    from tests.base_model.test_base_artifact import make_artifact

    with tempfile.TemporaryDirectory() as tmp:
        make_artifact(Path(tmp) / "a", users=[f"u{i:03d}" for i in range(50)])
        return ModelRegistry(workspace / "registry").register("base", Path(tmp) / "a", {
            "data_window": {}, "feature_service": "ranker_v1", "parent": None,
            "code_version": "test", "metrics": {}})


def test_evaluate_command_reports_a_registered_base_as_its_ranking(
    relogged: Relogged, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``freshrank evaluate --policy base:VERSION`` ranks each request's logged candidates
    by the base's score: the same report as ranking by a column holding those scores."""
    from base_model.artifact import BaseScorer

    workspace = tmp_path / "ws"
    version = _register_tiny_base(workspace)
    scorer = BaseScorer.load(ModelRegistry(workspace / "registry").get("base", version).path)
    scores, notes = base_scores(relogged.log, relogged.events, scorer)
    assert notes and "training means" in notes[0]  # simulator rows carry no served features
    events = relogged.events
    by_row = np.empty(events.num_rows)
    by_row[relogged.log.event_of_cand] = scores
    events = events.set_column(events.schema.get_field_index("base_score"), "base_score",
                               pa.array(by_row.astype(np.float32)))
    path = tmp_path / "relogged.parquet"
    pq.write_table(events, path)
    reports = {}
    for policy in (f"base:{version}", "score:base_score", "logged"):
        assert cli.main(["--workspace", str(workspace), "evaluate", "--events", str(path),
                         "--policy", policy, "--resamples", "100"]) == 0
        reports[policy] = json.loads(capsys.readouterr().out)
    base, column = reports[f"base:{version}"], reports["score:base_score"]
    assert base["policy"] == f"base:{version}"
    assert base["estimates"]["ips"]["estimate"] == pytest.approx(column["estimates"]["ips"]["estimate"])
    truth = true_value(relogged, ranking(relogged.log, scores))
    for got in base["estimates"].values():
        assert got["low"] <= truth <= got["high"]
    logged_report = reports["logged"]
    assert logged_report["estimates"]["dr"] == pytest.approx(logged_report["logged_rate"])
    assert set(base) >= {"estimates", "logged_rate", "ess", "interval", "warnings"}


def test_a_base_scores_the_candidates_with_the_features_logged_beside_them(tmp_path: Path) -> None:
    """Rows that carry the served features are scored with them (no "training means" note):
    the same logits as the scorer gives those features directly."""
    from base_model.artifact import BaseScorer
    from tests.base_model.test_base_artifact import features
    from tests.serving.offpolicy_kit import events_table

    version = _register_tiny_base(tmp_path)
    scorer = BaseScorer.load(ModelRegistry(tmp_path / "registry").get("base", version).path)
    rows = np.arange(12)
    table = events_table(rows // 4, rows % 4, rows % 4, np.zeros(12), np.full(12, 0.25))
    uf, itf = features(12)
    for name, values in (("user_features", uf), ("item_features", itf)):
        table = table.set_column(table.schema.get_field_index(name), name,
                                 pa.array(list(values), table.schema.field(name).type))
    log = bandit_log(table)
    scores, notes = base_scores(log, table, scorer)
    assert notes == []
    direct = scorer.score(table.column("user_id").to_pylist(), table.column("item_id").to_pylist(),
                          uf, itf).logits
    assert np.allclose(scores, direct[log.event_of_cand])
