"""A deterministic synthetic training set with learnable user x item structure.

For tests, the benchmark (``bench/train.py`` runs it on a GPU box with no Feast and no
network) and quick trials. Each user and item has a latent vector; the click probability is
``sigmoid(bias + strength * <u, v> + item_quality)``, so ids carry most of the signal and a
ranker that learns embeddings beats the click rate clearly. Items and users appear over time
(a later window has ids an earlier model never saw). Feature columns follow the catalog's
names with plausible raw values (counts, rates, ages) correlated with the truth.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
import pyarrow as pa

from feature_store.catalog import ITEM_FEATURES, USER_FEATURES

__all__ = ["SyntheticSpec", "day_end", "synthetic_encoded", "synthetic_training_set"]


@dataclass(frozen=True)
class SyntheticSpec:
    """Sizes and shape of the synthetic world."""

    days: int = 9
    events_per_hour: int = 100
    users: int = 200
    items: int = 120
    latent_dim: int = 4
    strength: float = 1.6
    bias: float = -1.0
    new_id_share: float = 0.15  # share of users/items that appear only after the first days
    diurnal: float = 0.3  # relative amplitude of the daily traffic cycle
    seed: int = 0
    start: datetime = datetime(2026, 1, 1, tzinfo=UTC)


def synthetic_training_set(spec: SyntheticSpec = SyntheticSpec()) -> pa.Table:
    """Events sorted by time with every catalog feature as a float32 column."""
    rng = np.random.default_rng(spec.seed)
    k = spec.latent_dim
    user_vec = rng.normal(size=(spec.users, k)) / np.sqrt(k)
    item_vec = rng.normal(size=(spec.items, k)) / np.sqrt(k)
    item_quality = rng.normal(scale=0.4, size=spec.items)
    user_activity = rng.pareto(2.0, size=spec.users) + 0.5
    item_popularity = rng.pareto(1.5, size=spec.items) + 0.5
    # The last new_id_share of users/items appear at a random day after the first two.
    user_from = np.zeros(spec.users)
    item_from = np.zeros(spec.items)
    n_new_u, n_new_i = int(spec.users * spec.new_id_share), int(spec.items * spec.new_id_share)
    if spec.days > 2:
        user_from[spec.users - n_new_u :] = rng.uniform(2, spec.days, n_new_u) * 24
        item_from[spec.items - n_new_i :] = rng.uniform(2, spec.days, n_new_i) * 24

    hours = spec.days * 24
    hour_idx = np.arange(hours)
    rate = spec.events_per_hour * (1 + spec.diurnal * np.sin(2 * np.pi * (hour_idx % 24 - 6) / 24))
    counts = rng.poisson(rate)
    n = int(counts.sum())
    event_hour = np.repeat(hour_idx, counts)
    offset_s = rng.uniform(0, 3600, n)
    ts_s = event_hour * 3600.0 + offset_s

    users = np.empty(n, dtype=np.int64)
    items = np.empty(n, dtype=np.int64)
    start = 0
    for h, c in zip(hour_idx, counts, strict=True):
        if c == 0:
            continue
        pu = user_activity * (user_from <= h)
        pi = item_popularity * (item_from <= h)
        users[start : start + c] = rng.choice(spec.users, size=c, p=pu / pu.sum())
        items[start : start + c] = rng.choice(spec.items, size=c, p=pi / pi.sum())
        start += c

    logit = (
        spec.bias
        + spec.strength * np.einsum("nk,nk->n", user_vec[users], item_vec[items]) * np.sqrt(k)
        + item_quality[items]
    )
    p = 1 / (1 + np.exp(-logit))
    label = (rng.random(n) < p).astype(np.float32)

    user_ctr = 1 / (1 + np.exp(-(spec.bias + 0.3 * rng.normal(size=spec.users))))
    item_ctr = 1 / (1 + np.exp(-(spec.bias + item_quality)))
    age_h = np.maximum(event_hour - item_from[items], 0) + offset_s / 3600.0
    feats: dict[str, np.ndarray] = {}
    for name in USER_FEATURES:
        scale = 7.0 if "7d" in name else 30.0
        if "_ctr" in name:
            feats[name] = np.clip(user_ctr[users] + rng.normal(scale=0.05, size=n), 0, 1)
        else:
            imp = rng.poisson(user_activity[users] * scale)
            feats[name] = imp * (user_ctr[users] if "_clk" in name else 1.0)
    for name in ITEM_FEATURES:
        if name == "item_age_hours":
            feats[name] = age_h
            continue
        scale = {"1h": 0.05, "24h": 1.0, "7d": 7.0}[name.rsplit("_", 1)[1]]
        if "_ctr" in name:
            feats[name] = np.clip(
                item_ctr[items] + rng.normal(scale=0.1 / np.sqrt(scale), size=n), 0, 1
            )
        else:
            imp = rng.poisson(item_popularity[items] * 20 * scale)
            feats[name] = imp * (item_ctr[items] if "_clk" in name else 1.0)

    order = np.argsort(ts_s, kind="stable")
    t0 = np.datetime64(spec.start.astimezone(UTC).replace(tzinfo=None), "us")
    ts = t0 + (ts_s[order] * 1e6).astype("timedelta64[us]")
    columns = {
        "user_id": pa.array([f"u{u}" for u in users[order]], pa.string()),
        "item_id": pa.array([f"i{i}" for i in items[order]], pa.string()),
        "ts": pa.array(ts, pa.timestamp("us", tz="UTC")),
        "label": pa.array(label[order], pa.float32()),
        "position": pa.array(rng.integers(0, 10, n)[order].astype(np.int32), pa.int32()),
        "item_category": pa.array([f"c{i % 7}" for i in items[order]], pa.string()),
    }
    for name in (*USER_FEATURES, *ITEM_FEATURES):
        columns[name] = pa.array(np.asarray(feats[name], dtype=np.float32)[order], pa.float32())
    return pa.table(columns)


def day_end(spec: SyntheticSpec, day: int) -> datetime:
    """The end of day ``day`` (0-based) of the synthetic world: a natural ``as_of``."""
    return spec.start + timedelta(days=day + 1)


def synthetic_encoded(
    rows: int, users: int, items: int, n_dense: int, seed: int = 0, latent_dim: int = 8
) -> dict[str, np.ndarray]:
    """Already-encoded training arrays (rows, not string ids) for throughput benchmarks.

    ``user`` and ``item`` are embedding rows (Zipf-like popularity), ``dense`` raw
    count-like features, ``label`` clicks from a latent user x item model; millions of rows
    in seconds, the same for the same seed.
    """
    rng = np.random.default_rng(seed)
    user_vec = rng.normal(size=(users, latent_dim)).astype(np.float32) / np.sqrt(latent_dim)
    item_vec = rng.normal(size=(items, latent_dim)).astype(np.float32) / np.sqrt(latent_dim)
    u = np.minimum(rng.zipf(1.3, rows) - 1, users - 1).astype(np.int64)
    i = np.minimum(rng.zipf(1.2, rows) - 1, items - 1).astype(np.int64)
    u = (u * 2654435761) % users  # spread the popular ids over the table
    i = (i * 2246822519) % items
    logit = -1.0 + 2.0 * np.einsum("nk,nk->n", user_vec[u], item_vec[i])
    label = (rng.random(rows, dtype=np.float32) < 1 / (1 + np.exp(-logit))).astype(np.float32)
    dense = rng.gamma(2.0, 10.0, size=(rows, n_dense)).astype(np.float32)
    return {"user": u, "item": i, "dense": dense, "label": label}
