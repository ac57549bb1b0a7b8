"""The snapshot format: versioned bytes that name the base version they were trained for.

Layout (all little-endian)::

    b"FRFTRL\\x00\\x00"                 8-byte magic
    uint32 format_version            currently 2 (1 is still read)
    uint32 header_length
    header                           UTF-8 JSON: base_version, n_dense, hash_bits,
                                     params {alpha, beta, l1, l2}, counters, nnz,
                                     prior_precision (format 2),
                                     payload_sha256, metadata {layout, version, ...}
    payload                          int64[nnz] coordinate, float64[nnz] z, float64[nnz] n,
                                     float64[nnz] prec (format 2: the posterior's data
                                     precision, ``online_layer.posterior``)

A format-1 snapshot (before the posterior existed) still restores: its weights as they
were, every precision at the prior (``prior_precision`` 1.0, no data precision).

Only coordinates that ever received a gradient or precision (``n > 0`` or ``prec > 0``) are stored, so a layer that has
seen a few thousand items is kilobytes, not the 2**hash_bits table. The weights themselves
are not stored: they are a closed-form function of ``z`` and ``n``. The checksum makes a
truncated or corrupted blob fail loudly instead of restoring half a model.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from online_layer.errors import BaseVersionMismatch, SnapshotError

MAGIC = b"FRFTRL\x00\x00"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
DEFAULT_PRIOR_PRECISION = 1.0
_PREFIX = struct.Struct("<8sII")


@dataclass(frozen=True)
class SnapshotHeader:
    """What a snapshot says about itself (readable without restoring it)."""

    format_version: int
    base_version: str
    n_dense: int
    hash_bits: int
    params: dict[str, float]
    n_updates: int
    n_examples: int
    nnz: int
    payload_sha256: str
    metadata: dict[str, Any] = field(default_factory=dict)
    prior_precision: float = DEFAULT_PRIOR_PRECISION

    @property
    def payload_columns(self) -> int:
        """8-byte columns per stored coordinate: coordinate, z, n (and prec from format 2)."""
        return 3 if self.format_version == 1 else 4


def encode(
    *,
    base_version: str,
    n_dense: int,
    hash_bits: int,
    params: Mapping[str, float],
    n_updates: int,
    n_examples: int,
    z: np.ndarray,
    n: np.ndarray,
    prec: np.ndarray | None = None,
    prior_precision: float = DEFAULT_PRIOR_PRECISION,
    metadata: Mapping[str, Any] | None = None,
) -> bytes:
    """Serialise a model's state (see the module docstring for the layout)."""
    prec = np.zeros_like(n) if prec is None else prec
    coords = np.flatnonzero((n != 0) | (prec != 0)).astype("<i8")
    payload = b"".join(
        [coords.tobytes()] + [a[coords].astype("<f8").tobytes() for a in (z, n, prec)]
    )
    header = {
        "format_version": FORMAT_VERSION,
        "base_version": base_version,
        "n_dense": int(n_dense),
        "hash_bits": int(hash_bits),
        "params": {k: float(v) for k, v in params.items()},
        "n_updates": int(n_updates),
        "n_examples": int(n_examples),
        "nnz": int(coords.size),
        "prior_precision": float(prior_precision),
        "payload_sha256": hashlib.sha256(payload).hexdigest(),
        "metadata": dict(metadata or {}),
    }
    raw = json.dumps(header, sort_keys=True).encode("utf-8")
    return _PREFIX.pack(MAGIC, FORMAT_VERSION, len(raw)) + raw + payload


def read_header(blob: bytes) -> SnapshotHeader:
    """Parse and check the header only (cheap: serving can vet a blob before loading it).

    Raises
    ------
    SnapshotError
        Not a snapshot, an unknown format version, or a malformed header.
    """
    if not isinstance(blob, (bytes, bytearray, memoryview)):
        raise SnapshotError(f"a snapshot is bytes, got {type(blob).__name__}")
    blob = bytes(blob)
    if len(blob) < _PREFIX.size:
        raise SnapshotError(f"snapshot is {len(blob)} bytes: too short to be one")
    magic, version, header_len = _PREFIX.unpack_from(blob)
    if magic != MAGIC:
        raise SnapshotError("not an online-layer snapshot (bad magic bytes)")
    if version not in READABLE_VERSIONS:
        raise SnapshotError(
            f"snapshot format {version} is not supported (this code reads {READABLE_VERSIONS})"
        )
    end = _PREFIX.size + header_len
    if len(blob) < end:
        raise SnapshotError("snapshot is truncated inside its header")
    try:
        header = json.loads(blob[_PREFIX.size:end].decode("utf-8"))
        return SnapshotHeader(
            format_version=int(header["format_version"]),
            base_version=str(header["base_version"]),
            n_dense=int(header["n_dense"]),
            hash_bits=int(header["hash_bits"]),
            params={k: float(v) for k, v in header["params"].items()},
            n_updates=int(header["n_updates"]),
            n_examples=int(header["n_examples"]),
            nnz=int(header["nnz"]),
            payload_sha256=str(header["payload_sha256"]),
            metadata=dict(header.get("metadata", {})),
            prior_precision=float(header.get("prior_precision", DEFAULT_PRIOR_PRECISION)),
        )
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise SnapshotError(f"snapshot header is malformed: {exc}") from exc


def decode(
    blob: bytes, expected_base_version: str
) -> tuple[SnapshotHeader, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Check and parse a snapshot: ``(header, coords, z_values, n_values, prec_values)``.

    A format-1 snapshot has no precisions: ``prec_values`` are zeros (the prior alone).

    Raises
    ------
    BaseVersionMismatch
        The snapshot was trained against another base version: its weights mean nothing
        on ``expected_base_version``.
    SnapshotError
        Corrupt, truncated, or of an unknown format.
    """
    header = read_header(blob)
    if header.base_version != expected_base_version:
        raise BaseVersionMismatch(
            f"snapshot was trained against base {header.base_version!r}; "
            f"refusing to restore it for base {expected_base_version!r}"
        )
    blob = bytes(blob)
    start = _PREFIX.size + _PREFIX.unpack_from(blob)[2]
    payload = blob[start:]
    width = 8 * header.payload_columns
    if len(payload) != width * header.nnz:
        raise SnapshotError(
            f"snapshot payload is {len(payload)} bytes; its header promises {width * header.nnz}"
        )
    if hashlib.sha256(payload).hexdigest() != header.payload_sha256:
        raise SnapshotError("snapshot payload does not match its checksum (corrupted)")
    k = header.nnz
    coords = np.frombuffer(payload, dtype="<i8", count=k, offset=0).astype(np.int64)
    z = np.frombuffer(payload, dtype="<f8", count=k, offset=8 * k).astype(np.float64)
    n = np.frombuffer(payload, dtype="<f8", count=k, offset=16 * k).astype(np.float64)
    if header.payload_columns == 4:
        prec = np.frombuffer(payload, dtype="<f8", count=k, offset=24 * k).astype(np.float64)
    else:
        prec = np.zeros(k, dtype=np.float64)
    size = header.n_dense + (1 << header.hash_bits)
    if k and (coords.min() < 0 or coords.max() >= size):
        raise SnapshotError("snapshot has a coordinate outside its own table")
    if not (np.isfinite(z).all() and np.isfinite(n).all() and (n >= 0).all()):
        raise SnapshotError("snapshot holds non-finite or negative accumulators")
    if not (np.isfinite(prec).all() and (prec >= 0).all()):
        raise SnapshotError("snapshot holds non-finite or negative posterior precisions")
    if not (np.isfinite(header.prior_precision) and header.prior_precision > 0):
        raise SnapshotError(f"snapshot prior_precision {header.prior_precision!r} is not > 0")
    return header, coords, z, n, prec
