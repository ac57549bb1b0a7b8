"""Team-draft interleaving and its preference test (serving.interleaving), in process.

The draft's invariants on many random ranking pairs, its determinism per request, the credit
of clicks, and the sign test's error rates: near its level on two equally good rankers, and
power against a ranker that knows the true click probabilities.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from serving.interleaving import (
    CANDIDATE,
    CHAMPION,
    SHARED,
    credit,
    outcomes,
    preference_test,
    sign_test_p_value,
    team_draft,
    user_outcomes,
)

EXAMINE = 1.0 / (1.0 + np.arange(10)) ** 0.7  # the simulator's position bias


def _random_pair(rng: np.random.Generator) -> tuple[list[int], list[int]]:
    """Two rankings drawn from a pool of 15 items, of 5 to 15 items each, overlapping in part."""
    a = rng.permutation(15)[: rng.integers(5, 16)].tolist()
    b = rng.permutation(15)[: rng.integers(5, 16)].tolist()
    return a, b


def test_every_shown_item_comes_from_a_ranking_once_and_the_draft_rule_holds():
    rng = np.random.default_rng(0)
    for trial in range(2000):
        a, b = _random_pair(rng)
        k = int(rng.integers(1, 12))
        mixed = team_draft(a, b, k, f"r{trial}")
        assert len(mixed.items) == len(mixed.teams) == min(k, len(set(a) | set(b)))
        assert len(set(mixed.items)) == len(mixed.items)
        for slot, (item, team) in enumerate(zip(mixed.items, mixed.teams)):
            earlier = set(mixed.items[:slot])
            best_a = next((x for x in a if x not in earlier), None)
            best_b = next((x for x in b if x not in earlier), None)
            if team == CHAMPION:
                assert item == best_a
            elif team == CANDIDATE:
                assert item == best_b
            else:
                assert team == SHARED and item == best_a == best_b


def test_teams_are_balanced_within_one_when_both_rankings_cover_the_list():
    rng = np.random.default_rng(1)
    for trial in range(2000):
        pool = rng.permutation(12)
        a, b = pool.tolist(), rng.permutation(pool).tolist()
        k = int(rng.integers(1, 13))
        teams = team_draft(a, b, k, f"r{trial}").teams
        for end in range(1, len(teams) + 1):  # at every depth, not only the whole list
            prefix = teams[:end]
            assert abs(prefix.count(CHAMPION) - prefix.count(CANDIDATE)) <= 1


def test_identical_rankings_share_every_slot_so_every_request_is_a_tie():
    rng = np.random.default_rng(2)
    ranking = rng.permutation(10).tolist()
    teams = np.array([team_draft(ranking, list(ranking), 10, f"r{i}").teams for i in range(200)])
    assert (teams == SHARED).all()
    clicks = rng.random(teams.shape) < 0.5
    assert (outcomes(teams, clicks) == 0).all()
    assert preference_test(outcomes(teams, clicks)).decided == 0


def test_the_same_request_is_interleaved_the_same_way_and_coins_vary_across_requests():
    a, b = list(range(10)), list(range(9, -1, -1))
    assert team_draft(a, b, 10, "req-42") == team_draft(a, b, 10, "req-42")
    firsts = [team_draft(a, b, 10, f"req-{i}").teams[0] for i in range(2000)]
    assert 900 <= firsts.count(CANDIDATE) <= 1100  # a fair coin: 1000 +- 4.5 sd
    salted = [team_draft(a, b, 10, f"req-{i}", salt="exp-2").teams[0] for i in range(2000)]
    assert sum(x != y for x, y in zip(firsts, salted)) > 800  # another salt, other coins


def test_clicks_credit_the_team_of_the_clicked_slot_and_never_a_shared_one():
    teams = (SHARED, CHAMPION, CANDIDATE, CANDIDATE, CHAMPION)
    assert credit(teams, (1, 1, 0, 1, 0)) == (1, 1)
    assert credit(teams, (1, 0, 0, 0, 0)) == (0, 0)
    assert credit(teams, (0, 1, 1, 1, 1)) == (2, 2)
    matrix = np.array([teams, teams, teams, teams])
    clicks = np.array([[1, 1, 0, 1, 0], [1, 0, 0, 0, 0], [0, 1, 0, 0, 0], [0, 0, 1, 0, 0]])
    assert outcomes(matrix, clicks).tolist() == [0, 0, -1, 1]
    with pytest.raises(ValueError):
        credit(teams, (1, 0))


def test_a_user_outcome_is_the_sign_of_the_users_net_wins():
    users = np.array(["u2", "u1", "u2", "u3", "u1", "u2"])
    per_request = np.array([1, -1, 1, 0, 1, -1])
    assert user_outcomes(users, per_request).tolist() == [0, 1, 0]  # u1 0, u2 +1, u3 0


def test_the_sign_test_p_value_is_the_exact_two_sided_binomial_tail():
    for wins, losses in [(0, 1), (3, 7), (12, 4), (25, 25), (40, 60)]:
        n = wins + losses
        tail = sum(math.comb(n, x) for x in range(min(wins, losses) + 1)) / 2.0**n
        assert sign_test_p_value(wins, losses) == pytest.approx(min(1.0, 2 * tail), rel=1e-9)
        assert sign_test_p_value(wins, losses) == sign_test_p_value(losses, wins)
    result = preference_test(np.array([1] * 30 + [-1] * 10 + [0] * 5), alpha=0.05)
    assert (result.candidate_wins, result.champion_wins, result.ties) == (30, 10, 5)
    assert result.significant and result.preferred == "candidate"
    low, high = result.share_interval()
    assert low < 0.75 < high and low > 0.5


def _experiments(rng: np.random.Generator, champion_noise: float, candidate_noise: float,
                 n_experiments: int, n_requests: int) -> list[str]:
    """``preferred`` of each experiment: per request a slate of 10 items with random click
    probabilities, ranked by each ranker as the true logit plus its noise, 5 shown."""
    preferred = []
    for e in range(n_experiments):
        attract = rng.beta(1.0, 12.0, (n_requests, 10))
        logit = np.log(attract / (1 - attract))
        rank_a = np.argsort(-(logit + champion_noise * rng.standard_normal(logit.shape)), axis=1)
        rank_b = np.argsort(-(logit + candidate_noise * rng.standard_normal(logit.shape)), axis=1)
        teams = np.empty((n_requests, 5), dtype=np.int8)
        shown = np.empty((n_requests, 5), dtype=np.int64)
        for r in range(n_requests):
            mixed = team_draft(rank_a[r].tolist(), rank_b[r].tolist(), 5, f"e{e}-r{r}")
            shown[r], teams[r] = np.asarray(mixed.items), np.asarray(mixed.teams)
        clicks = rng.random(shown.shape) < EXAMINE[:5] * np.take_along_axis(attract, shown, axis=1)
        preferred.append(preference_test(outcomes(teams, clicks), alpha=0.05).preferred)
    return preferred


def test_equally_good_rankers_are_told_apart_about_as_often_as_the_level():
    preferred = _experiments(np.random.default_rng(3), 1.0, 1.0, n_experiments=400, n_requests=150)
    rate = sum(p != "" for p in preferred) / len(preferred)
    # Exact and discrete, the test holds at most its level: 0.05 +- 2.5 sd of 400 draws.
    assert 0.01 <= rate <= 0.078
    assert 0 < sum(p == "candidate" for p in preferred) and 0 < sum(p == "champion" for p in preferred)


def test_a_ranker_that_knows_the_click_probabilities_wins_with_few_requests():
    preferred = _experiments(np.random.default_rng(4), 3.0, 0.0, n_experiments=40, n_requests=300)
    assert sum(p == "candidate" for p in preferred) >= 36  # power >= 0.9
    assert "champion" not in preferred
