"""The snapshot format: versioned, bound to a base version and a feature layout, checked."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from online_layer import load_snapshot, read_snapshot_header
from online_layer.errors import BaseVersionMismatch, SnapshotError
from online_layer.features import OnlineFeaturizer
from online_layer.ftrl import FTRLProximal
from online_layer.reference import FTRLReference
from online_layer.snapshot import FORMAT_VERSION, MAGIC
from online_layer.synthetic import benchmark_batch


@pytest.fixture
def model() -> FTRLProximal:
    m = FTRLProximal(64, 18, "base-7", alpha=0.1)
    for seed in range(3):
        m.learn_many(*benchmark_batch(100, seed=seed))
    return m


def test_header_names_the_base_and_is_readable_without_restoring(model: FTRLProximal) -> None:
    blob = model.snapshot({"version": "ol-1", "layout": {"hash_bits": 18}})
    assert blob.startswith(MAGIC)
    header = read_snapshot_header(blob)
    assert header.format_version == FORMAT_VERSION
    assert header.base_version == "base-7" and header.n_dense == 64 and header.hash_bits == 18
    assert header.params["alpha"] == 0.1 and header.n_updates == 3 and header.n_examples == 300
    assert header.metadata == {"version": "ol-1", "layout": {"hash_bits": 18}}


def test_only_touched_coordinates_are_stored(model: FTRLProximal) -> None:
    blob = model.snapshot()
    touched = int(np.count_nonzero(model.state()[1]))
    assert read_snapshot_header(blob).nnz == touched
    assert len(blob) < 32 * touched + 2_000  # coordinate, z, n, prec: not the 2**18 table


def test_load_snapshot_gives_a_cython_model_for_serving(model: FTRLProximal) -> None:
    layout = OnlineFeaturizer(60, hash_bits=18).layout()
    blob = model.snapshot({"layout": layout})
    served = load_snapshot(blob, "base-7", expected_layout=layout)
    assert isinstance(served, FTRLProximal)
    assert isinstance(load_snapshot(blob, "base-7", implementation="numpy"), FTRLReference)
    probe, _ = benchmark_batch(50, seed=9)
    assert np.array_equal(served.predict_many(probe), model.predict_many(probe))


def test_another_base_version_is_refused(model: FTRLProximal) -> None:
    with pytest.raises(BaseVersionMismatch, match="'base-7'.*'base-8'"):
        load_snapshot(model.snapshot(), "base-8")


def test_another_feature_layout_is_refused(model: FTRLProximal) -> None:
    blob = model.snapshot({"layout": OnlineFeaturizer(60, hash_bits=18).layout()})
    other = OnlineFeaturizer(60, hash_bits=18, position_buckets=8).layout()
    with pytest.raises(SnapshotError, match="layout"):
        load_snapshot(blob, "base-7", expected_layout=other)


def test_unknown_format_versions_and_foreign_bytes_are_refused(model: FTRLProximal) -> None:
    blob = model.snapshot()
    future = MAGIC + struct.pack("<I", FORMAT_VERSION + 1) + blob[12:]
    with pytest.raises(SnapshotError, match="format"):
        read_snapshot_header(future)
    with pytest.raises(SnapshotError, match="magic"):
        read_snapshot_header(b"PK\x03\x04" + blob[4:])
    with pytest.raises(SnapshotError, match="bytes"):
        read_snapshot_header("text")  # type: ignore[arg-type]
