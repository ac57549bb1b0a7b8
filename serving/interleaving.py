"""Team-draft interleaving of two rankings, click credit, and the preference test.

Interleaving (Radlinski, Kurup and Joachims, "How does clickthrough data reflect retrieval
quality?", CIKM 2008) shows one user one list built from two rankers' rankings and reads
which ranker the user's clicks prefer. Each user compares the two rankers on the same
request, so the request-to-request variance an A/B test must average away (users, items,
times of day) cancels, and far fewer requests decide.

Team draft, as built here (``team_draft``)
    Rounds. At the start of a round (both teams the same size) the two rankers' best items
    not yet shown are compared: if they are the same item it is shown and credited to
    neither ranker (``SHARED``: the rankers agree, a click there says nothing about which
    is better; so identical rankings give ties only). Otherwise a coin decides which ranker
    picks first; each then adds its best item not yet shown to the list and to its team.
    The list stops at ``k`` items. Teams differ by at most one item (when both rankings
    hold enough distinct items); a ranker with no item left lets the other pick.
Determinism
    The coins come from a hash of the request id (``request_coins``: blake2b, like
    ``serving.plan.in_canary``), so a request is interleaved the same way in every replica,
    process and restart, and a replayed request is credited as it was served.
Credit and outcome
    A click credits the team of the slot clicked (``credit``); a request's outcome is +1
    (candidate wins) when the candidate's team got more clicks, -1 (champion wins) when
    fewer, 0 (tie: no clicks, equal clicks, or clicks only on shared items).
Preference test (``preference_test``)
    A two-sided exact sign test: under "neither ranker is preferred" each decided (non-tied)
    unit is won by either ranker with probability 1/2 (the coin makes the two teams' places
    exchangeable), so the number of candidate wins is Binomial(n, 1/2) whatever the click
    rates; the p-value needs no model of clicks and no bootstrap. One fixed-sample look at
    level ``alpha``: the caller decides once, when ``min_decided`` units are reached (as
    the canary's single look), so peeking cannot inflate the error; a false preference at
    most ``alpha`` (two-sided; at most ``alpha``/2 in each direction).
    The unit is the request (``outcomes``) or the user (``user_outcomes``: each user's net
    wins, signed). Requests of one user are not independent when the rankers differ per
    user (a personalised ranker suits some tastes): the user is then the safe unit, as the
    canary's bootstrap resamples users; the request is the more powerful one when requests
    are independent. The live verdict uses users.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

__all__ = [
    "CANDIDATE",
    "CHAMPION",
    "SHARED",
    "Interleaving",
    "PreferenceTest",
    "credit",
    "outcomes",
    "preference_test",
    "request_coins",
    "sign_test_p_value",
    "team_draft",
    "user_outcomes",
]

SHARED = 0  # shown by both rankers in the same round: credited to neither
CHAMPION = 1
CANDIDATE = 2

T = TypeVar("T", bound=Hashable)


@dataclass(frozen=True)
class Interleaving:
    """One interleaved list: the items in shown order and the team of each slot."""

    items: tuple[Hashable, ...]
    teams: tuple[int, ...]  # SHARED, CHAMPION or CANDIDATE per slot


class _Coins:
    """Coin ``r`` of a request: bit ``r`` of blake2b(salt, request id, block)."""

    __slots__ = ("_blocks", "_key")

    def __init__(self, request_id: str, salt: str) -> None:
        self._key = f"{salt}\x1f{request_id}".encode("utf-8")
        self._blocks: list[int] = []

    def __call__(self, r: int) -> bool:
        block, bit = divmod(r, 64)
        while len(self._blocks) <= block:
            self._blocks.append(request_coins(self._key, len(self._blocks)))
        return bool((self._blocks[block] >> bit) & 1)


def request_coins(key: bytes, block: int = 0) -> int:
    """64 coins (bits) for a request key: a stable hash, the same in every process."""
    digest = hashlib.blake2b(key + block.to_bytes(4, "big"), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def team_draft(
    champion: Sequence[T], candidate: Sequence[T], k: int, request_id: str, salt: str = ""
) -> Interleaving:
    """Interleave ``champion`` and ``candidate`` (best first) into ``k`` items (module
    docstring); the coins are the request's (``request_id``, ``salt``: an experiment's name,
    so two experiments draw independent coins for one request).

    Examples
    --------
    >>> team_draft(["a", "b", "c"], ["a", "b", "c"], 3, "r1").teams
    (0, 0, 0)
    >>> shown = team_draft(["a", "b", "c", "d"], ["d", "c", "b", "a"], 4, "r1")
    >>> sorted(shown.items), sorted(shown.teams)
    (['a', 'b', 'c', 'd'], [1, 1, 2, 2])
    """
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    coin = _Coins(request_id, salt)
    shown: list[Hashable] = []
    teams: list[int] = []
    seen: set[Hashable] = set()
    i = j = 0
    n_champion = n_candidate = 0
    rounds = 0
    while len(shown) < k:
        while i < len(champion) and champion[i] in seen:
            i += 1
        while j < len(candidate) and candidate[j] in seen:
            j += 1
        has_a, has_b = i < len(champion), j < len(candidate)
        if not (has_a or has_b):
            break
        if n_champion == n_candidate and has_a and has_b and champion[i] == candidate[j]:
            item, team = champion[i], SHARED
        else:
            if not has_b:
                pick_candidate = False
            elif not has_a:
                pick_candidate = True
            elif n_champion == n_candidate:
                pick_candidate = coin(rounds)
                rounds += 1
            else:
                pick_candidate = n_candidate < n_champion
            if pick_candidate:
                item, team = candidate[j], CANDIDATE
                n_candidate += 1
            else:
                item, team = champion[i], CHAMPION
                n_champion += 1
        shown.append(item)
        teams.append(team)
        seen.add(item)
    return Interleaving(tuple(shown), tuple(teams))


def credit(teams: Sequence[int], clicks: Sequence[float]) -> tuple[int, int]:
    """(champion clicks, candidate clicks) of one interleaved list; a click is a label > 0."""
    if len(teams) != len(clicks):
        raise ValueError(f"{len(teams)} teams but {len(clicks)} clicks")
    champion = sum(1 for t, c in zip(teams, clicks) if c > 0 and t == CHAMPION)
    candidate = sum(1 for t, c in zip(teams, clicks) if c > 0 and t == CANDIDATE)
    return champion, candidate


def outcomes(teams: np.ndarray, clicks: np.ndarray) -> np.ndarray:
    """Per request (rows of ``(R, k)`` teams and clicks; pad slots with SHARED): +1 the
    candidate wins, -1 the champion wins, 0 a tie."""
    teams, clicks = np.asarray(teams), np.asarray(clicks)
    if teams.shape != clicks.shape or teams.ndim != 2:
        raise ValueError(f"teams {teams.shape} and clicks {clicks.shape} must be one (R, k) shape")
    clicked = clicks > 0
    net = (clicked & (teams == CANDIDATE)).sum(axis=1) - (clicked & (teams == CHAMPION)).sum(axis=1)
    return np.sign(net).astype(np.int8)


def user_outcomes(users: np.ndarray, request_outcomes: np.ndarray) -> np.ndarray:
    """Per user (in sorted order of id): the sign of the user's net wins over their requests."""
    users, request_outcomes = np.asarray(users), np.asarray(request_outcomes)
    if users.shape != request_outcomes.shape:
        raise ValueError(f"{users.shape} users but {request_outcomes.shape} outcomes")
    _, index = np.unique(users, return_inverse=True)
    return np.sign(np.bincount(index.ravel(), weights=request_outcomes.astype(np.float64))).astype(np.int8)


def sign_test_p_value(wins: int, losses: int) -> float:
    """Two-sided exact binomial p-value of ``wins`` out of ``wins + losses`` at p = 1/2.

    >>> round(sign_test_p_value(9, 1), 4)
    0.0215
    >>> sign_test_p_value(0, 0)
    1.0
    """
    if wins < 0 or losses < 0:
        raise ValueError(f"counts must be >= 0, got {wins} and {losses}")
    n = wins + losses
    if n == 0:
        return 1.0
    t = np.arange(1, min(wins, losses) + 1, dtype=np.float64)
    log_choose = np.concatenate([[0.0], np.cumsum(np.log(n - t + 1) - np.log(t))])  # C(n, 0..low)
    tail = float(np.exp(log_choose - n * math.log(2.0)).sum())
    return min(1.0, 2.0 * tail)


@dataclass(frozen=True)
class PreferenceTest:
    """The sign test's reading of a sample of outcomes (+1, -1, 0 per unit)."""

    candidate_wins: int
    champion_wins: int
    ties: int
    p_value: float
    alpha: float

    @property
    def decided(self) -> int:
        """Units that are not ties."""
        return self.candidate_wins + self.champion_wins

    @property
    def candidate_share(self) -> float:
        """Candidate wins over decided units (0.5 when none is decided)."""
        return self.candidate_wins / self.decided if self.decided else 0.5

    @property
    def significant(self) -> bool:
        return self.p_value < self.alpha

    @property
    def preferred(self) -> str:
        """"candidate", "champion", or "" (no significant preference)."""
        if not self.significant:
            return ""
        return "candidate" if self.candidate_wins > self.champion_wins else "champion"

    def share_interval(self, z: float = 1.959963984540054) -> tuple[float, float]:
        """Wilson interval of the candidate's share of decided units (95% by default)."""
        n = self.decided
        if n == 0:
            return 0.0, 1.0
        p = self.candidate_wins / n
        centre = (p + z * z / (2 * n)) / (1 + z * z / n)
        half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
        return max(0.0, centre - half), min(1.0, centre + half)


def preference_test(unit_outcomes: np.ndarray, alpha: float = 0.05) -> PreferenceTest:
    """The two-sided sign test (module docstring) over units' outcomes at level ``alpha``."""
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    values = np.asarray(unit_outcomes)
    wins, losses = int((values > 0).sum()), int((values < 0).sum())
    return PreferenceTest(
        candidate_wins=wins,
        champion_wins=losses,
        ties=int(values.size - wins - losses),
        p_value=sign_test_p_value(wins, losses),
        alpha=alpha,
    )
