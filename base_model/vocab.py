"""String ids to embedding rows, with hashed rows for ids outside the vocabulary.

Row layout of each table: ``[0, len(vocab))`` for known ids in vocabulary order, then
``oov_buckets`` hashed rows. An unseen id goes to ``len(vocab) + crc32(id) % oov_buckets``:
stable across processes and machines (unlike ``hash()``), so training, serving and warm
starts agree on it. No torch here: the serving path imports this.

Item categories need no vocabulary: there are few of them and they outlive every item, so
each is hashed into ``category_buckets`` rows (``category_rows``), with row 0 kept for an
unknown category (null or ``""``). A brand-new item with a known category therefore scores
through its category's row from its first impression.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

__all__ = ["Vocabulary", "build_vocabulary", "category_rows", "oov_bucket"]


def oov_bucket(item: str, buckets: int) -> int:
    """The hashed bucket (0-based, before the vocabulary offset) of one id."""
    return zlib.crc32(item.encode("utf-8")) % buckets


def category_rows(
    categories: Sequence[str | None] | pa.Array | pa.ChunkedArray | None, n: int, buckets: int
) -> np.ndarray:
    """Rows (int64, shape (n,)) of the category table for ``n`` items.

    Row 0 is "unknown" (None, null or ``""``; also every row when ``categories`` is None or
    ``buckets`` is 0); a known category goes to ``1 + crc32(category) % buckets``. Few
    distinct values repeat many times, so each distinct one is hashed once.
    """
    if categories is None or buckets <= 0 or n == 0:
        return np.zeros(n, dtype=np.int64)
    if isinstance(categories, pa.ChunkedArray | pa.Array):
        column = (
            categories.combine_chunks()
            if isinstance(categories, pa.ChunkedArray)
            else categories
        )
        encoded = pc.dictionary_encode(pc.fill_null(column.cast(pa.string()), ""))
        values = encoded.dictionary.to_pylist()
        codes = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    else:
        if len(categories) != n:
            raise ValueError(f"item_categories has {len(categories)} entries, expected {n}")
        values, codes_list = [], []
        seen: dict[str, int] = {}
        for c in categories:
            key = "" if c is None else c
            if not isinstance(key, str):
                raise TypeError(f"item categories must be strings or None, got {type(c).__name__}")
            code = seen.get(key)
            if code is None:
                code = seen[key] = len(values)
                values.append(key)
            codes_list.append(code)
        codes = np.asarray(codes_list, dtype=np.int64)
    if len(codes) != n:
        raise ValueError(f"item_categories has {len(codes)} entries, expected {n}")
    table = np.asarray(
        [0 if not v else 1 + oov_bucket(v, buckets) for v in values], dtype=np.int64
    )
    return table[codes] if len(table) else np.zeros(n, dtype=np.int64)


class Vocabulary:
    """Known ids in row order plus ``oov_buckets`` hashed rows.

    ``lookup`` is the serving path (a dict, fast for a few hundred ids); ``lookup_arrow`` is
    the training path (Arrow's vectorised ``index_in``, fast for millions of rows).
    """

    def __init__(self, ids: Sequence[str], oov_buckets: int) -> None:
        if oov_buckets < 1:
            raise ValueError(f"oov_buckets must be >= 1, got {oov_buckets}")
        self.ids: np.ndarray = np.asarray(list(ids), dtype=object)
        self.oov_buckets = int(oov_buckets)
        self._index = {item: row for row, item in enumerate(self.ids.tolist())}
        if len(self._index) != len(self.ids):
            raise ValueError("vocabulary ids must be unique")

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, item: object) -> bool:
        return item in self._index

    @property
    def rows(self) -> int:
        """Rows of the embedding table: the vocabulary plus the hashed buckets."""
        return len(self.ids) + self.oov_buckets

    def lookup(self, ids: Iterable[str]) -> np.ndarray:
        """Rows (int64) of ``ids``; unseen ids get their hashed row."""
        values = ids if isinstance(ids, list | tuple) else list(ids)
        get = self._index.get
        rows = np.fromiter((get(v, -1) for v in values), dtype=np.int64, count=len(values))
        missing = np.flatnonzero(rows < 0)
        if missing.size:
            offset, buckets = len(self.ids), self.oov_buckets
            rows[missing] = [offset + oov_bucket(str(values[i]), buckets) for i in missing]
        return rows

    def lookup_arrow(self, ids: pa.Array | pa.ChunkedArray) -> np.ndarray:
        """Vectorised ``lookup`` for a training-set column."""
        if isinstance(ids, pa.ChunkedArray):
            ids = ids.combine_chunks()
        ids = ids.cast(pa.string())
        found = pc.index_in(ids, value_set=pa.array(self.ids.tolist(), type=pa.string()))
        rows = found.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
        missing = rows < 0
        if missing.any():
            unseen = pc.unique(ids.filter(pa.array(missing))).to_pylist()
            offset, buckets = len(self.ids), self.oov_buckets
            bucket_of = pa.array([offset + oov_bucket(u, buckets) for u in unseen], pa.int64())
            where = pc.index_in(
                ids.filter(pa.array(missing)), value_set=pa.array(unseen, pa.string())
            )
            rows[missing] = pc.take(bucket_of, where).to_numpy()
        return rows

    def hashed_rows(self, ids: Sequence[str]) -> np.ndarray:
        """The hashed row of each id, known or not (what it scored through before it was known)."""
        offset, buckets = len(self.ids), self.oov_buckets
        return np.asarray([offset + oov_bucket(str(i), buckets) for i in ids], dtype=np.int64)


def build_vocabulary(
    ids: pa.Array | pa.ChunkedArray, min_count: int, keep: Sequence[str] = ()
) -> list[str]:
    """Ids in row order: ``keep`` first (a parent's vocabulary, unchanged), then new ids with
    at least ``min_count`` rows, sorted so the same data always gives the same rows."""
    counts = pc.value_counts(ids.cast(pa.string()))
    values = counts.field("values").to_pylist()
    freq = counts.field("counts").to_numpy()
    kept = set(keep)
    new = sorted(v for v, c in zip(values, freq, strict=True) if c >= min_count and v not in kept)
    return [*keep, *new]
