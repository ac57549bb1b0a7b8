"""Stable feature hashing: the same token maps to the same weight in every process, forever.

Python's ``hash`` of a string is salted per process (PYTHONHASHSEED), so weights learned by
the learner actor would land on different slots in a serving replica. Tokens are hashed
with BLAKE2b (64-bit digest, the slot name as personalisation); crosses combine two token
hashes with the SplitMix64 finaliser, vectorised in NumPy (uint64 arithmetic wraps).
``HASH_SCHEME`` is written into every snapshot: change it and old weights are refused.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import numpy as np

HASH_SCHEME = "blake2b64+splitmix64/v1"

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_S30 = np.uint64(30)
_S27 = np.uint64(27)
_S31 = np.uint64(31)


def token_hash(namespace: str, token: str) -> int:
    """64-bit stable hash of ``token`` within ``namespace`` (at most 16 UTF-8 bytes)."""
    digest = hashlib.blake2b(
        token.encode("utf-8"), digest_size=8, person=namespace.encode("utf-8")[:16]
    ).digest()
    return int.from_bytes(digest, "little")


def mix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser of a uint64 array (a bijection that spreads every input bit)."""
    x = np.asarray(x, dtype=np.uint64)
    x = (x ^ (x >> _S30)) * _M1
    x = (x ^ (x >> _S27)) * _M2
    return x ^ (x >> _S31)


def cross(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Order-sensitive combination of two uint64 hash arrays (broadcasting)."""
    a = np.asarray(a, dtype=np.uint64)
    b = np.asarray(b, dtype=np.uint64)
    return mix64(a ^ (mix64(b) + _GOLDEN))


def to_index(hashes: np.ndarray, bits: int) -> np.ndarray:
    """The top ``bits`` bits of each hash, as int64 indices into a table of ``2**bits``."""
    return (np.asarray(hashes, dtype=np.uint64) >> np.uint64(64 - bits)).astype(np.int64)


class TokenCache:
    """Memoised ``token_hash`` for one namespace (item ids repeat across requests).

    Bounded: when it holds ``max_size`` tokens it starts over, which costs re-hashing and
    never changes a result.
    """

    def __init__(self, namespace: str, max_size: int = 1_000_000) -> None:
        self.namespace = namespace
        self.max_size = max_size
        self._cache: dict[object, int] = {}

    def __len__(self) -> int:
        return len(self._cache)

    def one(self, token: object) -> int:
        """The hash of one token (non-strings are hashed as ``str(token)``)."""
        value = self._cache.get(token)
        if value is None:
            if len(self._cache) >= self.max_size:
                self._cache.clear()
            value = token_hash(self.namespace, str(token))
            self._cache[token] = value
        return value

    def many(self, tokens: Iterable[object], count: int) -> np.ndarray:
        """Hashes of ``count`` tokens as a uint64 array."""
        get = self._cache.get
        one = self.one
        return np.fromiter(
            (v if (v := get(t)) is not None else one(t) for t in tokens),
            dtype=np.uint64,
            count=count,
        )
