"""Importers: public interaction datasets, in the formats their publishers use, to events.

Every importer returns ``protos.events.EVENTS_SCHEMA`` sorted stably by time (the files are
not in time order, and ties are common: Amazon has day-resolution times). Conventions, so
reported results say what they mean:

* **Ratings are impressions.** A rating event is an impression; ``label = 1.0`` when the
  rating is >= 4 (``POSITIVE_RATING``), else ``0.0`` (ml-100k, ml-latest-small,
  amazon-magazine). Requests are not known: ``request_id`` is null (one event, one request).
* **MovieLens genres.** ``item_category`` is the movie's first listed genre (ml-100k: the
  first set flag in ``u.genre`` order; ml-latest-small: the first of ``genres``), null when
  none is listed.
* **Open Bandit** (``random/`` and/or ``bts/``, each with ``all.csv`` + ``item_context.csv``):
  label = click, ``position`` = the 1-3 slot minus 1, ``request_id`` = ``<policy>-<row>``.
  The data has no user ids: ``user_id`` is ``obd-`` + the first 12 hex digits of the MD5 of
  the four hashed user features joined by ``|`` (one id per feature combination, ~250 per
  file). ``item_category`` is the group of ``item_feature_1`` (a hashed categorical with 12
  levels, hashed differently in each policy's file), named ``obd-cat-<smallest item id in
  the group>`` so both policies agree. ``propensity`` is the file's ``propensity_score``:
  the logging policy's probability of that item at that slot (what off-policy evaluation,
  ``freshrank evaluate``, needs).
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from feature_store.errors import UnknownDatasetError
from feature_store.events_file import normalize_events

__all__ = ["DATASETS", "POSITIVE_RATING", "import_dataset"]

logger = logging.getLogger(__name__)

#: A rating at or above this is a positive (label 1).
POSITIVE_RATING = 4.0


def import_dataset(name: str, source_dir: str | os.PathLike[str]) -> pa.Table:
    """Convert one of the supported datasets to events.

    Parameters
    ----------
    name
        One of ``DATASETS``: ``ml-100k``, ``ml-latest-small``, ``amazon-magazine``,
        ``open-bandit``.
    source_dir
        The dataset's folder as published (e.g. ``path/to/ml-100k``). For Open Bandit
        either the folder holding ``random/`` and ``bts/`` (both are imported) or one of them.

    Raises
    ------
    UnknownDatasetError
        Unknown name, or the folder lacks the dataset's files.
    """
    try:
        importer = DATASETS[name]
    except KeyError:
        raise UnknownDatasetError(
            f"unknown dataset {name!r}; known: {', '.join(sorted(DATASETS))}"
        ) from None
    source = Path(source_dir)
    if not source.is_dir():
        raise UnknownDatasetError(f"{name}: {source} is not a folder")
    frame = importer(source)
    table = pa.Table.from_pandas(frame, preserve_index=False)
    events = normalize_events(table, source=f"{name} ({source})")
    logger.info("imported %s: %s events", name, events.num_rows)
    return events


def _need(path: Path, dataset: str) -> Path:
    if not path.is_file():
        raise UnknownDatasetError(f"{dataset}: expected file {path} is missing")
    return path


def _ratings_frame(
    user: pd.Series,
    item: pd.Series,
    rating: pd.Series,
    ts_seconds: pd.Series,
    category: np.ndarray | None = None,
) -> pd.DataFrame:
    """A ratings table as events: every rating an impression, label = rating >= 4."""
    frame = pd.DataFrame(
        {
            "user_id": pd.Series(user).astype(str).to_numpy(),
            "item_id": pd.Series(item).astype(str).to_numpy(),
            "ts": pd.to_datetime(np.asarray(ts_seconds, dtype=np.int64), unit="s", utc=True),
            "label": (np.asarray(rating, dtype=np.float64) >= POSITIVE_RATING).astype(np.float32),
        }
    )
    if category is not None:
        frame["item_category"] = category
    return frame


def _ml_100k(source: Path) -> pd.DataFrame:
    data = pd.read_csv(
        _need(source / "u.data", "ml-100k"),
        sep="\t",
        header=None,
        names=["user", "item", "rating", "ts"],
        dtype={"user": np.int64, "item": np.int64, "rating": np.float64, "ts": np.int64},
    )
    genres = pd.read_csv(
        _need(source / "u.genre", "ml-100k"), sep="|", header=None, names=["genre", "idx"]
    ).dropna()
    genre_names = genres.sort_values("idx")["genre"].tolist()
    items = pd.read_csv(
        _need(source / "u.item", "ml-100k"), sep="|", header=None, encoding="latin-1"
    )
    flags = items.iloc[:, 5 : 5 + len(genre_names)].to_numpy(dtype=np.int64)
    has_genre = flags.any(axis=1)
    first = np.where(has_genre, flags.argmax(axis=1), -1)
    names = np.asarray(genre_names, dtype=object)
    item_genre = pd.Series(
        [names[f] if f >= 0 else None for f in first], index=items.iloc[:, 0].to_numpy(), dtype=object
    )
    category = data["item"].map(item_genre).to_numpy(dtype=object)
    return _ratings_frame(data["user"], data["item"], data["rating"], data["ts"], category)


def _ml_latest_small(source: Path) -> pd.DataFrame:
    ratings = pd.read_csv(_need(source / "ratings.csv", "ml-latest-small"))
    movies = pd.read_csv(_need(source / "movies.csv", "ml-latest-small"))
    first = movies["genres"].astype(str).str.split("|").str[0]
    first = first.where(first != "(no genres listed)", None)
    category = ratings["movieId"].map(pd.Series(first.to_numpy(), index=movies["movieId"]))
    return _ratings_frame(
        ratings["userId"], ratings["movieId"], ratings["rating"], ratings["timestamp"],
        category.to_numpy(dtype=object),
    )


def _amazon_magazine(source: Path) -> pd.DataFrame:
    files = sorted(source.glob("*.csv"))
    if not files:
        raise UnknownDatasetError(f"amazon-magazine: no .csv file in {source}")
    data = pd.read_csv(
        files[0], header=None, names=["item", "user", "rating", "ts"],
        dtype={"item": str, "user": str, "rating": np.float64, "ts": np.int64},
    )
    return _ratings_frame(data["user"], data["item"], data["rating"], data["ts"])


def _open_bandit(source: Path) -> pd.DataFrame:
    if (source / "all.csv").is_file():
        policies = [source]
    else:
        policies = [source / p for p in ("random", "bts") if (source / p / "all.csv").is_file()]
    if not policies:
        raise UnknownDatasetError(
            f"open-bandit: {source} holds neither all.csv nor random/all.csv or bts/all.csv"
        )
    frames = [_open_bandit_policy(p) for p in policies]
    return pd.concat(frames, ignore_index=True)


def _open_bandit_policy(folder: Path) -> pd.DataFrame:
    log = pd.read_csv(folder / "all.csv", index_col=0)
    feature_cols = [f"user_feature_{i}" for i in range(4)]
    missing = [c for c in ["timestamp", "item_id", "position", "click", *feature_cols] if c not in log]
    if missing:
        raise UnknownDatasetError(f"open-bandit: {folder / 'all.csv'} lacks {', '.join(missing)}")
    joined = log[feature_cols[0]].astype(str)
    for col in feature_cols[1:]:
        joined = joined + "|" + log[col].astype(str)
    digest = {s: "obd-" + hashlib.md5(s.encode()).hexdigest()[:12] for s in joined.unique()}
    user_ids = joined.map(digest)
    frame = pd.DataFrame(
        {
            "user_id": user_ids.to_numpy(),
            "item_id": log["item_id"].astype(str).to_numpy(),
            "ts": pd.to_datetime(log["timestamp"], utc=True, format="ISO8601"),
            "label": log["click"].astype(np.float32).to_numpy(),
            "request_id": (folder.name + "-" + log.index.astype(str)).to_numpy(),
            "position": (log["position"].astype(np.int64) - 1).astype(np.int32).to_numpy(),
        }
    )
    if "propensity_score" in log:
        frame["propensity"] = log["propensity_score"].astype(np.float32).to_numpy()
    context_path = folder / "item_context.csv"
    if context_path.is_file():
        context = pd.read_csv(context_path, index_col=0)
        if "item_feature_1" in context:
            # The hashes are salted per policy file; the grouping is the same, so name each
            # group by its smallest item id to get one name in every file.
            smallest = context.groupby("item_feature_1")["item_id"].transform("min")
            cats = pd.Series(
                ("obd-cat-" + smallest.astype(str)).to_numpy(),
                index=context["item_id"].astype(str).to_numpy(),
            )
            frame["item_category"] = frame["item_id"].map(cats).to_numpy(dtype=object)
    return frame


DATASETS: dict[str, Callable[[Path], pd.DataFrame]] = {
    "ml-100k": _ml_100k,
    "ml-latest-small": _ml_latest_small,
    "amazon-magazine": _amazon_magazine,
    "open-bandit": _open_bandit,
}
