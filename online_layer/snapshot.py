"""The snapshot format: versioned bytes that name the base version they were trained for.

Layout (all little-endian)::

    b"FRFTRL\\x00\\x00"                 8-byte magic
    uint32 format_version            currently 1
    uint32 header_length
    header                           UTF-8 JSON: base_version, n_dense, hash_bits,
                                     params {alpha, beta, l1, l2}, counters, nnz,
                                     payload_sha256, metadata {layout, version, ...}
    payload                          int64[nnz] coordinate, float64[nnz] z, float64[nnz] n

Only coordinates that ever received a gradient (``n > 0``) are stored, so a layer that has
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
FORMAT_VERSION = 1
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
    metadata: Mapping[str, Any] | None = None,
) -> bytes:
    """Serialise a model's state (see the module docstring for the layout)."""
    coords = np.flatnonzero(n).astype("<i8")
    payload = coords.tobytes() + z[coords].astype("<f8").tobytes() + n[coords].astype("<f8").tobytes()
    header = {
        "format_version": FORMAT_VERSION,
        "base_version": base_version,
        "n_dense": int(n_dense),
        "hash_bits": int(hash_bits),
        "params": {k: float(v) for k, v in params.items()},
        "n_updates": int(n_updates),
        "n_examples": int(n_examples),
        "nnz": int(coords.size),
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
    if version != FORMAT_VERSION:
        raise SnapshotError(
            f"snapshot format {version} is not supported (this code reads {FORMAT_VERSION})"
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
        )
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise SnapshotError(f"snapshot header is malformed: {exc}") from exc


def decode(
    blob: bytes, expected_base_version: str
) -> tuple[SnapshotHeader, np.ndarray, np.ndarray, np.ndarray]:
    """Check and parse a snapshot: ``(header, coords, z_values, n_values)``.

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
    if len(payload) != 24 * header.nnz:
        raise SnapshotError(
            f"snapshot payload is {len(payload)} bytes; its header promises {24 * header.nnz}"
        )
    if hashlib.sha256(payload).hexdigest() != header.payload_sha256:
        raise SnapshotError("snapshot payload does not match its checksum (corrupted)")
    k = header.nnz
    coords = np.frombuffer(payload, dtype="<i8", count=k, offset=0).astype(np.int64)
    z = np.frombuffer(payload, dtype="<f8", count=k, offset=8 * k).astype(np.float64)
    n = np.frombuffer(payload, dtype="<f8", count=k, offset=16 * k).astype(np.float64)
    size = header.n_dense + (1 << header.hash_bits)
    if k and (coords.min() < 0 or coords.max() >= size):
        raise SnapshotError("snapshot has a coordinate outside its own table")
    if not (np.isfinite(z).all() and np.isfinite(n).all() and (n >= 0).all()):
        raise SnapshotError("snapshot holds non-finite or negative accumulators")
    return header, coords, z, n
