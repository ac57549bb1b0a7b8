"""The shadow verdict on real ``CandidateReportReply`` messages, and the canary verdict on real
event-log tables (``protos.events`` columns, as serving writes them)."""

from __future__ import annotations

from datetime import timedelta

import pyarrow as pa
import pytest

from protos.freshrank.v1 import ranking_pb2
from serving.controller.config import ControllerConfig
from serving.controller.staging import canary_rows
from serving.controller.verdicts import judge_canary, judge_shadow
from tests.serving.controller_kit import GOOD_SHADOW, T0, served_rows

SHADOW_CFG = ControllerConfig(shadow_min_requests=100)
CANARY_CFG = ControllerConfig(canary_min_events=3_000, canary_min_duration="10m",
                              canary_margin=0.05, canary_bootstrap_samples=400)
LONG_ENOUGH = timedelta(minutes=15)


def report(**fields: float) -> ranking_pb2.CandidateReportReply:
    values = {**GOOD_SHADOW, "shadow_requests": 150, **fields}
    return ranking_pb2.CandidateReportReply(
        champion_base_version="base-0001", candidate_base_version="base-0002",
        phase=ranking_pb2.CANDIDATE_PHASE_SHADOW, **values,  # type: ignore[arg-type]
    )


def test_a_shadow_within_every_bound_passes() -> None:
    verdict = judge_shadow(report(), SHADOW_CFG)
    assert verdict.decision == "pass"
    assert verdict.figures["ctr_ratio"] == pytest.approx(0.052 / 0.05)
    assert verdict.figures["latency_ratio_p50"] == pytest.approx(1.1)


def test_a_shadow_waits_for_its_minimum_of_requests() -> None:
    verdict = judge_shadow(report(shadow_requests=99, rank_correlation=-1.0), SHADOW_CFG)
    assert verdict.decision == "wait" and "99 of 100" in verdict.reason


@pytest.mark.parametrize(
    ("fields", "names"),
    [
        ({"top_k_overlap": 0.2}, "top-k overlap 0.200 < 0.5"),
        ({"rank_correlation": 0.1}, "rank correlation 0.100 < 0.3"),
        ({"candidate_mean_ctr": 0.2}, "predicted CTR ratio 4.000 outside [0.5, 2]"),
        ({"candidate_mean_ctr": 0.01}, "predicted CTR ratio 0.200 outside"),
        ({"candidate_latency_ms_p50": 5.0}, "p50 latency ratio 2.500 > 2"),
        ({"candidate_latency_ms_p99": 30.0}, "p99 latency ratio 5.000 > 3"),
        ({"champion_latency_ms_p50": 0.0}, "p50 latency ratio n/a (not measured)"),
        ({"champion_mean_ctr": 0.0}, "predicted CTR ratio n/a (not measured)"),
        ({"rank_correlation": float("nan")}, "rank correlation nan"),
    ],
)
def test_each_shadow_bound_fails_the_shadow_and_is_named(fields: dict[str, float], names: str) -> None:
    verdict = judge_shadow(report(**fields), SHADOW_CFG)
    assert verdict.decision == "fail"
    assert names in verdict.reason


def groups(candidate_distortion: float, users: int = 600, rows: int = 20) -> pa.Table:
    """Both groups from the same draws (true probabilities, labels), shown to different
    users: with ``candidate_distortion`` 1 the point difference is exactly 0, so the
    interval alone decides."""
    champion = served_rows("base-0001", users, rows, seed=5, user_prefix="a")
    candidate = served_rows("base-0002", users, rows, seed=5, user_prefix="b",
                            distortion=candidate_distortion)
    return pa.concat_tables([champion, candidate])


def test_a_canary_as_good_as_the_champion_is_non_inferior() -> None:
    verdict = judge_canary(groups(1.0), "base-0001", "base-0002", CANARY_CFG, LONG_ENOUGH)
    assert verdict.decision == "pass", verdict.reason
    f = verdict.figures
    assert f["candidate_rows"] == f["champion_rows"] == 12_000
    assert f["relative_difference"] == pytest.approx(0.0, abs=1e-12)
    assert f["bound_lower"] < 0 < f["bound_upper"] <= 0.05


def test_a_worse_canary_is_not_non_inferior() -> None:
    verdict = judge_canary(groups(2.5), "base-0001", "base-0002", CANARY_CFG, LONG_ENOUGH)
    assert verdict.decision == "fail"
    assert verdict.figures["relative_difference"] > 0.05
    assert verdict.figures["bound_lower"] > 0  # clearly worse, not just unproven


def test_too_few_rows_gives_an_unproven_canary_no_pass() -> None:
    """Equal quality but a tenth of the rows: the interval is too wide to show
    non-inferiority at 5 %, so it is not promoted (the bound, not the point, decides)."""
    cfg = ControllerConfig(canary_min_events=100, canary_min_duration="1m", canary_margin=0.05)
    verdict = judge_canary(groups(1.0, users=30), "base-0001", "base-0002", cfg, LONG_ENOUGH)
    assert verdict.decision == "fail"
    assert verdict.figures["bound_upper"] > 0.05


def test_the_canary_waits_for_its_rows_and_its_duration() -> None:
    table = groups(1.0)
    short = judge_canary(table, "base-0001", "base-0002", CANARY_CFG, timedelta(minutes=5))
    assert short.decision == "wait"
    few = ControllerConfig(canary_min_events=13_000, canary_min_duration="1m")
    assert judge_canary(table, "base-0001", "base-0002", few, LONG_ENOUGH).decision == "wait"


def test_the_bootstrap_is_deterministic_for_a_seed() -> None:
    table = groups(1.1)
    a = judge_canary(table, "base-0001", "base-0002", CANARY_CFG, LONG_ENOUGH).figures
    b = judge_canary(table, "base-0001", "base-0002", CANARY_CFG, LONG_ENOUGH).figures
    assert a == b


def test_rows_without_a_label_or_score_and_other_bases_are_not_judged() -> None:
    table = groups(1.0)
    other = served_rows("base-0009", 50, 10, seed=7, distortion=9.0)
    unlabelled = served_rows("base-0002", 50, 10, seed=8, distortion=9.0)
    unlabelled = unlabelled.set_column(
        unlabelled.schema.get_field_index("final_score"), "final_score",
        pa.nulls(unlabelled.num_rows, pa.float32()),
    )
    verdict = judge_canary(pa.concat_tables([table, other, unlabelled]), "base-0001", "base-0002",
                           CANARY_CFG, LONG_ENOUGH)
    assert verdict.figures["candidate_rows"] == 12_000 and verdict.decision == "pass"


def test_the_champion_is_compared_over_the_candidates_period_only() -> None:
    before = served_rows("base-0001", 100, 10, start=T0 - timedelta(hours=3), seed=9, distortion=5.0)
    during = groups(1.0)
    rows = canary_rows(pa.concat_tables([before, during]), "base-0001", "base-0002")
    assert rows.num_rows == during.num_rows  # the champion's earlier (worse) rows are out
