"""Manipulated feedback through a real gRPC channel against the running Serve app.

One app (``conftest.shared_system``, shared with test_poisoned_grpc.py: the guard and the
breaker at their defaults) serves honest traffic throughout: logged requests of real users (users the base
was trained on), ranked at the server's time, with their logged labels as feedback. Each
test is one campaign of issue 15 mixed into that traffic, and asserts what matters:

* the target's online correction for real users (30 probe users, each ranking it among
  the same 19 items) moves no further than honest traffic alone moves it (the control,
  measured once for the module) plus 0.15 logit, its score at most 1.5x, and it stays out
  of the top 3 (its rank is printed; it is a noisy measure here, see ``judged``);
* the served layer (what the learner published; ``online_version`` is set, no fallback)
  is the one measured, so a poisoned layer was not published;
* what the guard or the join did with the campaign is counted in ``Status`` (quarantined
  examples by reason, dropped rows, rejected batches), and the breaker stayed closed.

Campaigns: the steering attack (many made-up users each clicking only the target), a slow
drip (two made-up users a round, so no batch looks like a flood), sybils that behave like
real users first (requests and plausible clicks) and then attack, replayed real request
ids with flipped labels, and feedback for another user's request.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np
import pytest

from tests.serve_system import System, send_feedback

pytestmark = pytest.mark.slow

PROBE_USERS = 30
TOP_RANKS = 3  # the target must stay out of the top 3 of 20 (the campaign's aim: rank 0)
CORRECTION_SLACK = 0.15  # logits beyond it (the served correction is clipped to 2)


@dataclass
class Live:
    system: System
    requests: list[dict]  # logged requests: user, items -> label
    target: str = ""
    others: list[str] = field(default_factory=list)
    probes: list[str] = field(default_factory=list)
    items: list[str] = field(default_factory=list)
    next: int = 0
    drift: float = 0.0  # how far honest traffic alone moved the target's mean rank
    correction_drift: float = 0.0  # ... and its mean online correction (logit)
    rng: np.random.Generator = field(default_factory=lambda: np.random.default_rng(0))

    @property
    def client(self):  # noqa: ANN201 - serving.client.RankerClient
        return self.system.client

    def honest(self, n: int, tag: str = "honest") -> None:
        """Rank ``n`` logged requests of real users, then one Feedback with their labels."""
        rows = []
        for _ in range(n):
            logged = self.requests[self.next % len(self.requests)]
            self.next += 1
            rid = f"{tag}-{self.next}"
            response = self.client.rank(rid, logged["user"], list(logged["items"]))
            rows += feedback_rows(rid, logged["user"], response,
                                  lambda item, logged=logged: logged["items"][item])
        reply = send_feedback(self.client, rows)
        assert not reply.rejected_reason, reply.rejected_detail


def feedback_rows(rid: str, user: str, response, label) -> list[dict]:  # noqa: ANN001
    now = datetime.now(UTC)
    return [{"request_id": rid, "user_id": user, "item_id": item.item_id, "ts": now,
             "label": float(label(item.item_id)), "position": position}
            for position, item in enumerate(response.items)]


def measure(live: Live, tag: str) -> tuple[float, float, float]:
    """The target's mean rank (0 = top of 20), mean score and mean online correction
    (served logit minus the base's) for the probe users, under the layer being served
    (asserted: no fallback)."""
    ranks, scores, corrections = [], [], []
    for n, user in enumerate(live.probes):
        response = live.client.rank(f"{tag}-probe-{n}", user, [live.target, *live.others])
        assert not response.fallback and response.online_version, response.fallback_detail
        order = [item.item_id for item in response.items]
        ranks.append(order.index(live.target))
        item = next(i for i in response.items if i.item_id == live.target)
        scores.append(item.score)
        corrections.append(_logit(item.score) - _logit(item.base_score))
    return float(np.mean(ranks)), float(np.mean(scores)), float(np.mean(corrections))


def _logit(p: float) -> float:
    p = min(max(p, 1e-7), 1 - 1e-7)
    return float(np.log(p / (1 - p)))


@pytest.fixture(scope="module")
def live(shared_system: System) -> Iterator[Live]:
    system = shared_system
    requests: dict[str, dict] = {}
    for row in system.events.select(["request_id", "user_id", "item_id", "label"]).to_pylist():
        entry = requests.setdefault(row["request_id"], {"user": row["user_id"], "items": {}})
        entry["items"][row["item_id"]] = max(row["label"], entry["items"].get(row["item_id"], 0))
    live = Live(system, list(requests.values()))
    deadline = time.monotonic() + 90
    live.honest(40)
    while live.client.status().fallback:  # the layer learns from honest traffic, serves
        assert time.monotonic() < deadline, live.client.status().fallback_detail
        live.honest(20)
    time.sleep(0.6)  # a weight poll
    live.items = sorted({i for r in live.requests[:400] for i in r["items"]})
    users = sorted({r["user"] for r in live.requests[:400]})
    live.probes = users[:PROBE_USERS]
    # The target: the item the base scores lowest for the probe users, among all
    # logged items (the attack moved such an item from the bottom to the top);
    # the others: 19 random items. Items here score within a few hundredths of each
    # other, so only a clear bottom makes the rank a fair measure.
    base_scores: dict[str, list[float]] = {}
    for n, user in enumerate(live.probes[:5]):
        for start in range(0, len(live.items), 100):
            chunk = live.items[start:start + 100]
            for item in live.client.rank(f"pick-{n}-{start}", user, chunk).items:
                base_scores.setdefault(item.item_id, []).append(item.base_score)
    live.target = min(live.items, key=lambda i: float(np.mean(base_scores[i])))
    pool = [i for i in live.items if i != live.target]
    live.others = [str(i) for i in live.rng.choice(pool, size=19, replace=False)]
    # The control: honest traffic alone (as much as one campaign mixes in) moves the
    # layer, and so the target; a campaign must not move it beyond that.
    before = measure(live, "control-before")
    for _ in range(15):
        live.honest(8)
    time.sleep(0.6)
    after = measure(live, "control-after")
    live.drift = abs(after[0] - before[0])
    live.correction_drift = abs(after[2] - before[2])
    print(f"\nattacks: target {live.target}; honest traffic alone (the control): rank "
          f"{before[0]:.2f} -> {after[0]:.2f}, score {before[1]:.4f} -> {after[1]:.4f}, "
          f"correction {before[2]:+.3f} -> {after[2]:+.3f} logit")
    yield live


def attack_rows(live: Live, bot: str, rid: str, clicked: set[str], k: int = 8) -> list[dict]:
    """A made-up user ranks the target among ``k - 1`` random items; feedback clicks
    ``clicked`` (usually the target alone)."""
    pool = [i for i in live.items if i != live.target]
    candidates = [live.target, *[str(i) for i in live.rng.choice(pool, size=k - 1, replace=False)]]
    response = live.client.rank(rid, bot, candidates)
    return feedback_rows(rid, bot, response, lambda item: item in clicked)


def judged(live: Live, name: str, before: tuple[float, float, float],
           counted: dict[str, int], quarantined_before: dict[str, int]) -> None:
    """The campaign's outcome: rank/score for real users, what was quarantined, breaker."""
    time.sleep(0.6)  # the learner publishes, the replicas poll
    live.honest(8)
    time.sleep(0.6)
    rank, score, correction = measure(live, f"{name}-after")
    status = live.client.status()
    quarantined = {k: v - quarantined_before.get(k, 0)
                   for k, v in status.quarantined_examples.items()}
    print(f"{name}: target mean rank {before[0]:.2f} -> {rank:.2f} (control drift "
          f"{live.drift:.2f}), score {before[1]:.4f} -> {score:.4f}, correction "
          f"{before[2]:+.3f} -> {correction:+.3f} logit; quarantined {quarantined}; "
          f"campaign clicks {counted}")
    # The gate is the target's online correction: what a campaign moves, up to the 2-logit
    # clip. The rank is reported and bounded loosely: these items score within a few
    # hundredths of each other, so +0.08 logit (honest drift alone reached +0.09) moved the
    # target 7 of 20 places in one run; a steered target goes to the top (rank ~0).
    assert rank >= TOP_RANKS, (before, rank)
    assert correction - before[2] <= live.correction_drift + CORRECTION_SLACK, (before, correction)
    assert score <= before[1] * 1.5 + 0.01, (before, score)
    assert sum(quarantined.values()) > 0
    assert status.breaker_state == "closed", status.breaker_reason


def test_many_made_up_users_clicking_one_target_do_not_move_it(live: Live) -> None:
    before = measure(live, "steer-before")
    quarantined = dict(live.client.status().quarantined_examples)
    clicks = 0
    for round_ in range(12):
        rows = []
        for b in range(20):
            rows += attack_rows(live, f"steer-bot-{round_}-{b}", f"steer-{round_}-{b}",
                                {live.target})
        clicks += 20
        reply = send_feedback(live.client, rows)
        assert not reply.rejected_reason and reply.accepted == len(rows), reply  # all valid
        live.honest(8)
    judged(live, "steering (240 made-up users)", before, {"target": clicks}, quarantined)
    grown = live.client.status().quarantined_examples
    assert grown["coordinated_burst"] > quarantined.get("coordinated_burst", 0)


def test_a_slow_drip_under_the_flood_threshold_does_not_move_the_target(live: Live) -> None:
    before = measure(live, "drip-before")
    status = live.client.status()
    quarantined, rejected = dict(status.quarantined_examples), dict(status.rejected_batches)
    for round_ in range(30):  # two made-up users a round among honest traffic
        rows = []
        for b in range(2):
            rows += attack_rows(live, f"drip-bot-{round_}-{b}", f"drip-{round_}-{b}",
                                {live.target})
        rows_reply = send_feedback(live.client, rows)
        assert not rows_reply.rejected_reason, rows_reply
        live.honest(8)
    # No batch looked like a flood: the drip is caught by who clicks, not by how much.
    assert dict(live.client.status().rejected_batches).get("label_flood", 0) == \
        rejected.get("label_flood", 0)
    judged(live, "slow drip (60 made-up users over 30 rounds)", before, {"target": 60},
           quarantined)


def test_sybils_that_behave_normally_first_cannot_then_steer(live: Live) -> None:
    before = measure(live, "sybil-before")
    quarantined = dict(live.client.status().quarantined_examples)
    sybils = [f"sybil-{n}" for n in range(40)]
    # First they behave: 6 requests each over logged candidates, clicking what real users
    # clicked (so they earn request tenure and a plausible click rate).
    for turn in range(6):
        rows = []
        for n, sybil in enumerate(sybils):
            logged = live.requests[(turn * 40 + n) % len(live.requests)]
            rid = f"sybil-warm-{turn}-{n}"
            response = live.client.rank(rid, sybil, list(logged["items"]))
            rows += feedback_rows(rid, sybil, response,
                                  lambda item, logged=logged: logged["items"][item])
        reply = send_feedback(live.client, rows)
        assert not reply.rejected_reason, reply
        live.honest(8)
    # Then every one of them clicks the target, three times each.
    for turn in range(3):
        rows = []
        for n, sybil in enumerate(sybils):
            rows += attack_rows(live, sybil, f"sybil-attack-{turn}-{n}", {live.target})
        reply = send_feedback(live.client, rows)
        assert not reply.rejected_reason, reply
        live.honest(8)
    judged(live, "sybils (40 warmed-up accounts, 3 clicks each)", before, {"target": 120},
           quarantined)


def _quiet(live: Live) -> int:
    """Wait until the learner has learned everything waiting; returns ``online_updates``."""
    time.sleep(1.5)  # max_batch_delay_s 0.2 and the ticker's 0.5 s
    first = live.client.status().online_updates
    time.sleep(1.0)
    second = live.client.status().online_updates
    assert first == second, "the learner is still learning: the check below would be unfair"
    return second


def test_replayed_request_ids_with_flipped_labels_teach_nothing(live: Live) -> None:
    # Real users' requests, given their real feedback ...
    shown: list[tuple[str, str, object]] = []
    rows = []
    for n in range(10):
        logged = live.requests[(live.next + n) % len(live.requests)]
        rid = f"replayed-{n}"
        response = live.client.rank(rid, logged["user"], list(logged["items"]))
        rows += feedback_rows(rid, logged["user"], response,
                              lambda item, logged=logged: logged["items"][item])
        shown.append((rid, logged["user"], response))
    reply = send_feedback(live.client, rows)
    assert not reply.rejected_reason and reply.accepted == len(rows), reply
    updates = _quiet(live)
    # ... replayed by an attacker with every label flipped (the target's trick: 0 <-> 1).
    flipped = [{**row, "label": 1.0 - row["label"], "ts": datetime.now(UTC)} for row in rows]
    reply = send_feedback(live.client, flipped)
    assert reply.accepted == 0 and reply.dropped == len(flipped), reply  # duplicates
    assert _quiet(live) == updates  # nothing learned from them


def test_feedback_for_another_users_request_is_refused(live: Live) -> None:
    logged = live.requests[live.next % len(live.requests)]
    response = live.client.rank("victim-request", logged["user"], list(logged["items"]))
    rejected = dict(live.client.status().rejected_batches)
    updates = _quiet(live)
    rows = feedback_rows("victim-request", "someone-else", response,
                         lambda item: 1.0)
    reply = send_feedback(live.client, rows)
    assert reply.rejected_reason == "unknown_id", reply
    assert "differs from the user served" in reply.rejected_detail
    assert reply.accepted == 0
    status = live.client.status()
    assert status.rejected_batches["unknown_id"] == rejected.get("unknown_id", 0) + 1
    assert _quiet(live) == updates
    # The real user's own feedback for the same request still joins.
    reply = send_feedback(live.client, feedback_rows(
        "victim-request", logged["user"], response, lambda item: logged["items"][item]))
    assert not reply.rejected_reason and reply.accepted == len(response.items), reply
