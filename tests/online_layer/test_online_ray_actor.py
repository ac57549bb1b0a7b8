"""The learner runs as a real Ray actor (as serving deploys it) and learns exactly what an
in-process learner learns from the same calls."""

from __future__ import annotations

import pathlib
from dataclasses import asdict
from typing import Any

import numpy as np

from tests.online_layer.ol_helpers import EMBEDDING_DIM, START, small_config
from online_layer import load_snapshot
from online_layer.learner import OnlineLearner
from online_layer.synthetic import SyntheticWorld


def test_the_learner_as_a_ray_actor(ray_cluster: None, tmp_path: pathlib.Path) -> None:
    import ray

    config = asdict(small_config(emit="on_arrival", publish_every_batches=2))
    out = tmp_path

    def sink(version: str, blob: bytes, lineage: dict) -> None:  # runs inside the actor
        (out / f"{version}.snapshot").write_bytes(blob)

    def established(user_id: str) -> bool:  # the world's users are known (pickled by value)
        return user_id.startswith("u")

    actor: Any = ray.remote(OnlineLearner).options(num_cpus=0).remote(
        config, "base-1", EMBEDDING_DIM, snapshot_sink=sink, established_users=established
    )
    local = OnlineLearner(config, "base-1", EMBEDDING_DIM, established_users=established)
    world = SyntheticWorld(local.featurizer, seed=1)
    pending = []
    for record, events in world.stream(40, START):
        actor.record_served.remote(record)  # fire and forget: calls from one caller keep order
        pending.append(actor.add_feedback.remote(events))
        local.record_served(record)
        local.add_feedback(events)
    assert all(result.rejected is None for result in ray.get(pending))
    ray.get(actor.flush.remote())
    local.flush()

    report = ray.get(actor.report.remote())
    assert report.examples_learned == 40 * 8 and report.rejected_batches == {}
    assert report.published == local.report().published > 0
    remote_snapshot = ray.get(actor.publish.remote())
    assert remote_snapshot.blob == local.publish().blob  # same bytes from another process
    written = sorted(p.name for p in out.glob("*.snapshot"))
    assert f"{remote_snapshot.version}.snapshot" in written
    model = load_snapshot((out / written[-1]).read_bytes(), "base-1")
    assert np.array_equal(model.weights(), local.model.weights())
    assert model.nnz() > 0  # equal bytes of zero weights would prove nothing
    ray.kill(actor)
