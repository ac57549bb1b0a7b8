"""Serving logs what it served, and a base trains from that log as from a file.

Real components, in-process (no Ray): a ``HybridRanker`` over the session's materialized
workspace (``feature_ws``) and a small base scores every simulated request; each reply is
logged through the real write path (``served_entry`` -> ``ServedLogWriter``; the clicks
through the learner's ``FeedbackLog``); the compactor turns the logs into a second
workspace's event log. Then the same rows, exported to an events file and loaded into a
third workspace, must give the same training set and, trained the same deterministic way,
bitwise the same base.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from base_model.artifact import BaseScorer, read_weights
from base_model.config import BaseModelConfig
from base_model.data import validate_training_set
from base_model.training import train_base_model
from feature_store.compute import compute_features
from feature_store.config import FeatureStoreConfig
from feature_store.event_log import read_event_log, write_event_log
from feature_store.events_file import load_events
from feature_store.online import OnlineFeatureReader
from feature_store.training_set import build_training_set
from online_layer.config import OnlineLayerConfig
from online_layer.features import OnlineFeaturizer
from protos.metrics import sigmoid
from serving.config import ServingConfig
from serving.ranking import HybridRanker, RankOutcome
from serving.requests import RankQuery
from serving.served_events import compact_served_log
from serving.served_log import FeedbackLog, ServedLogWriter, served_entry
from serving.training_sources import training_set_from_log
from tests.feature_store.fs_testkit import Workspace

#: Small and deterministic (``base_model.loop``: CPU, one thread, fixed seed).
TINY = BaseModelConfig(
    embedding_dim=8, hidden_layers=(16,), epochs=1, batch_size=512, eval_every_steps=0,
    train_days=1, min_train_rows=100, bootstrap_samples=20, min_gain_vs_constant=-1.0,
    min_gain_vs_champion=-1.0, min_hour_fraction=0.0, min_day_fraction=0.0,
    max_staleness_hours=48.0, num_workers=1,
)
RETRIED = 3  # this many requests are ranked twice (a client retry with the same id)


@dataclass
class Served:
    cfg: FeatureStoreConfig  # the workspace whose event log is the compacted served log
    outcomes: list[RankOutcome]
    events: pa.Table  # the simulated events the requests came from


FEEDBACK = ["request_id", "user_id", "item_id", "ts", "label", "position"]


def _requests(events: pa.Table) -> list[list[dict]]:
    """The simulated requests, each its rows in the order they were shown."""
    by_id: dict[str, list[dict]] = {}
    for row in events.select(FEEDBACK).to_pylist():
        by_id.setdefault(row["request_id"], []).append(row)
    return list(by_id.values())


@pytest.fixture(scope="module")
def served(feature_ws: Workspace, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("served")
    base = train_base_model(TINY, build_training_set(feature_ws.cfg, feature_ws.events),
                            root / "registry0", parent=None, as_of=feature_ws.end,
                            backend="local")
    scorer = BaseScorer.load(base.path)
    online = OnlineLayerConfig()
    ranker = HybridRanker(
        OnlineFeatureReader(feature_ws.cfg), scorer,
        OnlineFeaturizer(scorer.embedding_dim, hash_bits=online.hash_bits,
                         position_buckets=online.position_buckets),
        ServingConfig(),
    )
    workspace = root / "workspace"
    writer = ServedLogWriter(workspace, replica="r1")
    feedback = FeedbackLog(workspace)
    outcomes = []
    schema = feature_ws.events.schema
    feedback_schema = pa.schema([schema.field(name) for name in FEEDBACK])
    for i, shown in enumerate(_requests(feature_ws.events)):
        first = shown[0]
        query = RankQuery(first["request_id"], first["user_id"],
                          tuple(r["item_id"] for r in shown), len(shown), first["ts"])
        for _ in range(2 if i < RETRIED else 1):
            outcome = ranker.rank(query)
            writer.append(served_entry(outcome, time.time()))
        outcomes.append(outcome)
        clicks = [r for r in shown if r["label"] > 0]
        if clicks:  # what the learner logs once it accepted the clicks
            feedback.append(pa.Table.from_pylist(clicks, schema=feedback_schema), len(clicks))
    writer.close()
    feedback.close()
    cfg = FeatureStoreConfig(workspace=workspace)
    written = compact_served_log(workspace, cfg.events_dir, 60.0, close_all=True)
    assert written == feature_ws.events.num_rows + sum(len(o.order) for o in outcomes[:RETRIED])
    yield Served(cfg, outcomes, feature_ws.events)


def test_each_impression_carries_the_features_the_ranker_looked_up(
    served: Served, feature_ws: Workspace
) -> None:
    log = read_event_log(served.cfg.events_dir)
    by_key = {(r["request_id"], r["item_id"]): r for r in log.to_pylist()}
    reader = OnlineFeatureReader(feature_ws.cfg)
    for outcome in served.outcomes[::25]:
        query = outcome.query
        found = reader.get(query.user_id, query.item_ids, now=query.request_time)
        base = sigmoid(outcome.base_logits)
        for position, index in enumerate(outcome.order.tolist()):
            row = by_key[(query.request_id, query.item_ids[index])]
            assert row["position"] == position
            np.testing.assert_array_equal(np.float32(row["user_features"]), found.user)
            np.testing.assert_array_equal(np.float32(row["item_features"]), found.items[index])
            np.testing.assert_array_equal(row["online_dense"], outcome.inputs.dense[index])
            np.testing.assert_array_equal(row["online_sparse"], outcome.inputs.sparse[index])
            assert row["online_base_logit"] == outcome.base_logits[index]
            assert row["base_score"] == pytest.approx(base[index], rel=1e-6)
            assert row["propensity"] == 1.0  # the policy is deterministic
            # No online weights were installed: the base served alone, and says why.
            assert row["fallback_reason"] == "FALLBACK_REASON_ONLINE_ABSENT"
            assert row["online_version"] == "" and row["base_version"] == outcome.base_version
    assert {len(r) for r in log.column("item_features").to_pylist()} == {10}


def test_the_log_labels_are_the_clicks_as_joined(served: Served) -> None:
    log = read_event_log(served.cfg.events_dir)
    truth = {(r["request_id"], r["item_id"]): r["label"]
             for r in served.events.select(["request_id", "item_id", "label"]).to_pylist()}
    got = {(r["request_id"], r["item_id"]): r["label"]
           for r in log.select(["request_id", "item_id", "label"]).to_pylist()}
    assert got == truth


def _assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = read_weights(a), read_weights(b)
    assert wa.keys() == wb.keys()
    for name in wa:
        np.testing.assert_array_equal(wa[name], wb[name], err_msg=name)


def test_a_base_trained_from_the_served_log_equals_one_trained_from_the_same_rows_as_a_file(
    served: Served, tmp_path: Path
) -> None:
    # The same rows given as a file: exported, then loaded into a workspace of their own.
    exported = tmp_path / "served-events.parquet"
    pq.write_table(read_event_log(served.cfg.events_dir), exported)
    from_file = FeatureStoreConfig(workspace=tmp_path / "from-file")
    write_event_log(load_events(exported), from_file.events_dir)
    # The file keeps every row and column, what the model saw included; only "" in the
    # optional text columns reads back as null (the events contract: empty = not given).
    text = ["online_version", "fallback_reason"]
    served_log, file_log = read_event_log(served.cfg.events_dir), read_event_log(from_file.events_dir)
    assert served_log.drop_columns(text).equals(file_log.drop_columns(text))
    for name in text:
        assert [v or None for v in served_log.column(name).to_pylist()] == file_log.column(name).to_pylist()
    sets = {}
    for name, cfg in (("log", served.cfg), ("file", from_file)):
        compute_features(cfg)
        sets[name] = training_set_from_log(cfg, "data-end", TINY.train_days)
    (log_set, log_as_of), (file_set, file_as_of) = sets["log"], sets["file"]
    assert log_as_of == file_as_of
    # One row per impression: the retried requests count once, and every shown item is in.
    assert log_set.num_rows == served.events.num_rows == file_set.num_rows
    assert log_set.drop_columns(text).equals(file_set.drop_columns(text))
    assert validate_training_set(log_set).equals(validate_training_set(file_set))
    results = [
        train_base_model(TINY, table, tmp_path / f"registry-{name}", parent=None,
                         as_of=as_of, backend="local")
        for name, (table, as_of) in sets.items()
    ]
    assert all(r.metrics["train_rows"] > TINY.min_train_rows for r in results)
    _assert_same_weights(results[0].path, results[1].path)
