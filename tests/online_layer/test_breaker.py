"""The circuit breaker opens on a sustained loss, cools down, and closes only on evidence."""

from __future__ import annotations

import numpy as np
import pytest

from online_layer.breaker import BreakerConfig, BreakerState, CircuitBreaker, trimmed_user_mean

CFG = BreakerConfig(
    window_events=400,
    min_events=200,
    min_users=20,
    trim_share=0.1,
    trip_margin=0.01,
    sustained_judgements=3,
    cooldown_seconds=30.0,
    half_open_events=200,
)


def _batch(n: int, excess: float, users: int = 40, seed: int = 0):
    rng = np.random.default_rng(seed)
    base = rng.uniform(0.1, 0.7, n)
    names = [f"u{i % users}" for i in range(n)]
    return names, base + excess + rng.normal(0, 0.001, n), base


def test_an_honest_layer_keeps_the_breaker_closed() -> None:
    breaker = CircuitBreaker(CFG)
    for step in range(20):
        status = breaker.observe(*_batch(100, -0.005, seed=step), now=float(step))
    assert breaker.state is BreakerState.CLOSED
    assert status.excess_loss is not None and status.excess_loss < 0
    assert status.transitions == {}


def test_a_sustained_loss_opens_it_after_the_configured_judgements_and_not_before() -> None:
    breaker = CircuitBreaker(CFG)
    states = [breaker.observe(*_batch(100, 0.05, seed=s), now=float(s)).state for s in range(5)]
    # Judged from the second batch (200 events) on; open at the third losing judgement.
    assert states == ["closed", "closed", "closed", "open", "open"]
    assert not breaker.allows_online
    assert breaker.status().transitions == {"closed->open": 1}


def test_one_bad_batch_among_good_ones_does_not_trip_it() -> None:
    breaker = CircuitBreaker(CFG)
    for step in range(10):
        excess = 0.05 if step == 5 else -0.01
        breaker.observe(*_batch(100, excess, seed=step), now=float(step))
    assert breaker.state is BreakerState.CLOSED


def test_after_the_cooldown_a_half_open_test_closes_it_when_the_layer_recovered() -> None:
    breaker = CircuitBreaker(CFG)
    for s in range(5):
        breaker.observe(*_batch(100, 0.05, seed=s), now=float(s))
    assert breaker.state is BreakerState.OPEN
    opened = breaker.status().opened_at
    assert breaker.observe(*_batch(100, -0.01), now=opened + 10).state == "open"  # cooling
    assert breaker.observe(*_batch(100, -0.01), now=opened + 31).state == "half_open"
    assert breaker.observe(*_batch(100, -0.01, seed=9), now=opened + 32).state == "closed"
    assert breaker.status().transitions == {
        "closed->open": 1, "open->half_open": 1, "half_open->closed": 1,
    }


def test_a_half_open_test_that_still_loses_opens_it_for_another_cooldown() -> None:
    breaker = CircuitBreaker(CFG)
    for s in range(5):
        breaker.observe(*_batch(100, 0.05, seed=s), now=float(s))
    breaker.observe(*_batch(100, 0.05), now=40.0)
    status = breaker.observe(*_batch(100, 0.05, seed=3), now=41.0)
    assert status.state == "open" and status.opened_at == 41.0
    assert status.transitions["half_open->open"] == 1


def test_a_few_accounts_cannot_trip_an_honest_layer() -> None:
    """Three accounts send most events, on which the layer looks terrible; judged per user
    with the top 10% of users trimmed, the other 40 users say the layer is fine."""
    breaker = CircuitBreaker(CFG)
    for step in range(10):
        names, hybrid, base = _batch(100, -0.005, seed=step)
        flood = ["attacker-1", "attacker-2", "attacker-3"] * 100
        breaker.observe(
            names + flood,
            np.concatenate([hybrid, np.full(300, 3.0)]),
            np.concatenate([base, np.full(300, 0.1)]),
            now=float(step),
        )
    assert breaker.state is BreakerState.CLOSED


def test_too_few_users_means_no_judgement() -> None:
    breaker = CircuitBreaker(CFG)
    for s in range(10):
        status = breaker.observe(*_batch(100, 0.5, users=5, seed=s), now=float(s))
    assert breaker.state is BreakerState.CLOSED
    assert "not enough data" in status.reason


def test_nan_losses_are_ignored() -> None:
    breaker = CircuitBreaker(CFG)
    names, hybrid, base = _batch(100, 0.0)
    hybrid[:50] = np.nan
    assert breaker.observe(names, hybrid, base, now=0.0).events == 50


def test_mismatched_lengths_are_refused() -> None:
    with pytest.raises(ValueError, match="one length"):
        CircuitBreaker(CFG).observe(["a"], [0.1, 0.2], [0.1, 0.2], now=0.0)


def test_the_per_user_judgement_counts_each_user_once_however_many_events() -> None:
    users = ["loud"] * 1000 + [f"u{i}" for i in range(20)]
    excess = np.concatenate([np.full(1000, 0.5), np.zeros(20)])
    assert trimmed_user_mean(users, excess, trim_share=0.0) == pytest.approx(0.5 / 21)
    assert trimmed_user_mean(users, excess, trim_share=0.1) == 0.0


def test_a_loss_shared_by_most_users_survives_the_trim() -> None:
    users = [f"u{i}" for i in range(100)]
    excess = np.full(100, 0.02)
    excess[:5] = -1.0  # a few users the layer helps a lot
    assert trimmed_user_mean(users, excess, trim_share=0.1) == pytest.approx(0.02)


def test_operator_can_force_it_open_and_reset_closes_it() -> None:
    breaker = CircuitBreaker(CFG)
    breaker.force_open("bad deploy", now=1.0)
    assert breaker.state is BreakerState.OPEN and "operator" in breaker.status().reason
    breaker.reset()
    assert breaker.state is BreakerState.CLOSED


def _noisy_batch(n: int, excess: float, noise: float, users: int, seed: int):
    """Per-example differences with real spread (a layer that ties the base scatters)."""
    rng = np.random.default_rng(seed)
    base = rng.uniform(0.1, 0.7, n)
    names = [f"u{i % users}" for i in range(n)]
    return names, base + excess + rng.normal(0, noise, n), base


def test_a_layer_within_the_margin_whose_noisy_point_strays_past_it_does_not_trip_it() -> None:
    """60 users, a true excess of 0.006 against a 0.01 margin and 0.05 nats of per-example
    spread (a standard error of ~0.003 over users): the point rule strays past the margin and
    trips; the lower bound would need a 3-standard-error stray."""
    noisy = BreakerConfig(window_events=400, min_events=200, min_users=20, trim_share=0.1,
                          trip_margin=0.01, sustained_judgements=1, cooldown_seconds=30.0,
                          half_open_events=200)
    bound, point = CircuitBreaker(noisy), CircuitBreaker(
        BreakerConfig(**{**noisy.__dict__, "confidence_z": 0.0}))
    for step in range(30):
        batch = _noisy_batch(200, 0.006, 0.05, users=60, seed=step)
        bound.observe(*batch, now=float(step))
        point.observe(*batch, now=float(step))
    assert point.status().transitions.get("closed->open", 0) >= 1
    assert bound.status().transitions == {}
    assert "lower bound" in bound.status().reason


def test_a_loss_clearly_past_the_margin_still_trips_it_through_the_same_noise() -> None:
    noisy = BreakerConfig(window_events=400, min_events=200, min_users=20, trim_share=0.1,
                          trip_margin=0.01, sustained_judgements=2, cooldown_seconds=30.0,
                          half_open_events=200)
    breaker = CircuitBreaker(noisy)
    states = [breaker.observe(*_noisy_batch(200, 0.05, 0.05, users=60, seed=s), now=float(s)).state
              for s in range(4)]
    assert states[-1] == "open", states
    assert "lower bound" in breaker.status().reason


def test_the_standard_error_is_over_users_not_events() -> None:
    """One user's thousand events count as one observation of the spread."""
    from online_layer.breaker import trimmed_user_mean_and_se

    users = [f"u{i}" for i in range(10)] * 100
    excess = np.tile(np.arange(10, dtype=float), 100)
    mean, se = trimmed_user_mean_and_se(users, excess, trim_share=0.0)
    assert mean == pytest.approx(4.5)
    assert se == pytest.approx(np.std(np.arange(10.0), ddof=1) / np.sqrt(10))


def test_a_negative_confidence_z_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="confidence_z"):
        BreakerConfig(confidence_z=-1.0)
