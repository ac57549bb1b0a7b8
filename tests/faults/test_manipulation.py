"""The manipulation attack of issue 15, replayed through the real Serve app over gRPC.

Many made-up users each Rank a target item among others and "click" only the target, mixed
into honest traffic (logged requests of real users with their logged labels). With the
guard on (the defaults), the target's rank for real users must stay where it was, beyond
noise, and ``Status`` must show the quarantined examples. How it is built: the target is
the item the base ranks lowest for a real user; its rank is measured for 30 probe users
(each ranks it among 19 logged items) after a stretch of honest traffic alone (the control:
honest learning moves the layer too) and after a campaign mixed into as much honest
traffic; the campaign's users are ids the base never saw, so the guard counts them as new.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pytest

from tests.serve_system import send_feedback

pytestmark = pytest.mark.slow



@dataclass
class Live:
    client: object  # serving.client.RankerClient
    requests: list[dict]  # logged requests: user, ts, items, labels


@pytest.fixture(scope="module")
def live(ray_cluster, tmp_path_factory) -> Iterator[Live]:
    from serving import app
    from serving.client import RankerClient
    from serving.settings import load_settings
    from tests.serve_system import FAST_BASE, TEST_SERVING, fault_simulator, trained_workspace

    workspace = tmp_path_factory.mktemp("manipulation-live")
    settings = load_settings(
        workspace=workspace,
        overrides={
            "serving": TEST_SERVING,
            "base_model": FAST_BASE,
            "online_layer": {  # the guard and the breaker at their defaults
                "emit": "on_arrival",
                "batch_size": 64,
                "max_batch_delay_s": 0.2,
                "publish_every_batches": 1,
                "publish_every_s": 0.2,
                "readiness_min_examples": 64,
                "readiness_window": 2_000,
                "readiness_tolerance": 10.0,
                "readiness_auc_tolerance": 1.0,
            },
        },
    )
    # The fault tests' log (tests.serve_system.fault_simulator) with this module's seed.
    trained = trained_workspace(settings, fault_simulator(seed=8))
    from serving.auth import session_token

    with session_token():  # Feedback needs the ingress token; RankerClient sends it
        running = app.start(settings)
        client = RankerClient(running.grpc_address, running.app_name)
        client.wait_ready()
        requests: dict[str, dict] = {}
        replay = trained.replay
        for row in replay.select(["request_id", "user_id", "item_id", "ts", "label"]).to_pylist():
            entry = requests.setdefault(row["request_id"], {"user": row["user_id"], "ts": row["ts"],
                                                            "items": {}})
            entry["items"][row["item_id"]] = max(row["label"], entry["items"].get(row["item_id"], 0))
        try:
            yield Live(client, list(requests.values()))
        finally:
            client.close()
            app.stop()


class Replay:
    def __init__(self, live: Live) -> None:
        self.live = live
        self.next = 0
        self.calls = 0

    def honest(self, n: int) -> None:
        """Rank ``n`` logged requests, then Feedback with their logged labels."""
        rows = []
        for _ in range(n):
            assert self.next < len(self.live.requests), "the replay must not wrap: time would jump back"
            logged = self.live.requests[self.next]
            self.next += 1
            rid = f"honest-{self.next}"
            response = self.live.client.rank(rid, logged["user"], list(logged["items"]),
                                             request_time=logged["ts"])
            for position, item in enumerate(response.items):
                rows.append({"request_id": rid, "user_id": logged["user"], "item_id": item.item_id,
                             "ts": logged["ts"], "label": float(logged["items"][item.item_id]),
                             "position": position})
        reply = send_feedback(self.live.client, rows)
        assert not reply.rejected_reason, reply.rejected_detail

    @property
    def now(self):  # noqa: ANN201 - the event time of the replay
        return self.live.requests[max(self.next - 1, 0)]["ts"]


def ranks_of(live: Live, target: str, probes: list[tuple[str, list[str]]], when, tag: str):  # noqa: ANN001, ANN201
    """The target's rank (0 = top) and score for each probe user."""
    ranks, base_ranks, scores = [], [], []
    for n, (user, others) in enumerate(probes):
        response = live.client.rank(f"{tag}-{n}", user, [target, *others], request_time=when)
        order = [item.item_id for item in response.items]
        ranks.append(order.index(target))
        by_base = sorted(response.items, key=lambda i: -i.base_score)
        base_ranks.append([i.item_id for i in by_base].index(target))
        scores.append(next(i.score for i in response.items if i.item_id == target))
    return (np.asarray(ranks, dtype=float), np.asarray(scores), response,
            np.asarray(base_ranks, dtype=float))


def test_made_up_users_clicking_one_target_do_not_move_it_for_real_users(live: Live) -> None:
    replay = Replay(live)
    for _ in range(10):  # warm-up: the layer learns from honest traffic and serves
        replay.honest(20)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and live.client.status().fallback:
        replay.honest(10)
    assert not live.client.status().fallback, live.client.status().fallback_detail
    items = sorted({item for r in live.requests[:400] for item in r["items"]})
    users = sorted({r["user"] for r in live.requests[:400]})
    rng = np.random.default_rng(0)
    probe_items = [str(i) for i in rng.choice(items, size=20, replace=False)]
    first = live.client.rank("pick", users[0], probe_items, request_time=replay.now)
    target = min(first.items, key=lambda i: i.base_score).item_id  # the base ranks it lowest
    others = [i for i in probe_items if i != target][:19]
    probes = [(u, others) for u in users[:30]]
    before, score_before, _, base_before = ranks_of(live, target, probes, replay.now, "before")
    # The control: the same amount of honest traffic, no campaign. Honest learning moves
    # the layer too; the campaign must not move the target beyond that.
    for _ in range(25):
        replay.honest(16)
    time.sleep(1.5)
    control, score_control, _, _ = ranks_of(live, target, probes, replay.now, "control")

    # The campaign: 500 made-up users, each ranks the target among 7 others and clicks only
    # it; 20 of them per round, each round followed by 16 honest requests.
    started = time.monotonic()
    for round_ in range(25):
        rows = []
        when = replay.now
        for b in range(20):
            bot = f"attacker-{round_}-{b}"
            rid = f"attack-{round_}-{b}"
            candidates = [target, *[str(i) for i in rng.choice(
                [i for i in items if i != target], size=7, replace=False)]]
            response = live.client.rank(rid, bot, candidates, request_time=when)
            for position, item in enumerate(response.items):
                rows.append({"request_id": rid, "user_id": bot, "item_id": item.item_id,
                             "ts": when, "label": float(item.item_id == target),
                             "position": position})
        reply = send_feedback(live.client, rows)
        assert not reply.rejected_reason, reply.rejected_detail  # valid feedback, every row
        replay.honest(16)
    attack_seconds = time.monotonic() - started
    time.sleep(1.5)  # the learner publishes, the replicas poll
    replay.honest(10)
    time.sleep(1.0)
    after, score_after, response, base_after = ranks_of(live, target, probes, replay.now, "after")
    status = live.client.status()
    print(f"\nmanipulation through gRPC ({attack_seconds:.1f} s, 500 made-up users): target "
          f"mean rank among 20 for 30 real users {before.mean():.2f}, after as much honest "
          f"traffic {control.mean():.2f}, after the campaign {after.mean():.2f} "
          f"(by the base alone {base_before.mean():.2f} -> {base_after.mean():.2f}), "
          f"mean score {score_before.mean():.4f} -> {score_after.mean():.4f}; quarantined "
          f"{dict(status.quarantined_examples)}; online {status.online_version or 'none'}")
    assert not response.fallback, response.fallback_detail  # the layer still serves ...
    assert status.quarantined_examples["coordinated_burst"] > 0  # ... the campaign did not
    assert abs(after.mean() - control.mean()) <= 2.0, (control, after)
    assert score_after.mean() <= score_control.mean() * 1.5 + 0.01
    assert status.breaker_state == "closed"
