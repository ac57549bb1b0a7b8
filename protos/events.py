"""The events contract: one Arrow schema for everything shown and everything that happened.

Every package reads and writes events through these names, so the simulator, the dataset
importers, the Feast feature jobs, base-model training, the online learner and the serving
log cannot disagree on a column. A user's own file (Parquet or CSV) needs only the REQUIRED
columns; ``feature_store.events_file.load_events`` validates and normalises it to
``EVENTS_SCHEMA``.

Columns
-------
user_id : string (required)
    Who was shown the item. Integer ids in a user's file are converted to strings.
item_id : string (required)
    What was shown.
ts : timestamp[us, UTC] (required)
    When it was shown. A user's file may give unix seconds or any Arrow-parseable time.
label : float32 (required)
    What happened: 1 for a click or a positive, 0 for none, or a graded value in [0, 1].
request_id : string (optional)
    Events shown together (one Rank call). Missing: each (user, ts) pair is one request.
position : int32 (optional)
    0-based position at which the item was shown. Missing: null.
item_category : string (optional)
    A coarse item attribute (genre, section) for the online layer's user x category cross.
base_version, online_version : string (optional; written by serving)
    The model versions that scored the event.
base_score, final_score : float32 (optional; written by serving)
    Click probabilities from the base alone and from base + online correction.
fallback_reason : string (optional; written by serving)
    Empty when the online correction was applied; else why serving fell back.
true_ctr : float32 (optional; written by the simulator)
    The simulator's true click probability, so quality can be judged against the truth.

What the model saw (optional; written by serving, null elsewhere: features logged at serving
time, so training, replay and audits can use exactly what was scored)

user_features : list<float32>
    The user's dense features as the base scored them, in the order of
    ``feature_store.catalog.USER_FEATURES`` (the feature service the ``base_version``
    records); the defaults when the online store did not know the user.
item_features : list<float32>
    The item's dense features as served, in ``feature_store.catalog.ITEM_FEATURES`` order
    (fresh pushed counters included, as they were at the request).
online_base_logit : float64
    The base logit the online layer received (``base_score`` is its sigmoid, as float32).
online_dense, online_sparse : list<float64>, list<int64>
    The online layer's inputs for the row (``online_layer.features.OnlineInputs``: the
    dense base-embedding inputs and the hashed sparse indices, position token included);
    with ``online_base_logit`` they rebuild the ``OnlineInputs`` exactly
    (``serving.served_events.online_inputs_of``).
propensity : float32
    The probability with which the policy showed this item at this position: 1.0 while
    serving is deterministic (null: not known, e.g. a user's file).
interleave_team : int8
    Which ranker put the item in an interleaved list (``serving.interleaving``: 0 both, in
    the same round; 1 the champion; 2 the candidate); null: the request was not
    interleaved. An interleaved request's other columns are the champion's (its
    ``propensity`` null: the list is not the champion's policy).
"""

from __future__ import annotations

import pyarrow as pa

REQUIRED_COLUMNS: tuple[str, ...] = ("user_id", "item_id", "ts", "label")

EVENTS_SCHEMA = pa.schema(
    [
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("ts", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("label", pa.float32(), nullable=False),
        pa.field("request_id", pa.string()),
        pa.field("position", pa.int32()),
        pa.field("item_category", pa.string()),
        pa.field("base_version", pa.string()),
        pa.field("online_version", pa.string()),
        pa.field("base_score", pa.float32()),
        pa.field("final_score", pa.float32()),
        pa.field("fallback_reason", pa.string()),
        pa.field("true_ctr", pa.float32()),
        pa.field("user_features", pa.list_(pa.float32())),
        pa.field("item_features", pa.list_(pa.float32())),
        pa.field("online_base_logit", pa.float64()),
        pa.field("online_dense", pa.list_(pa.float64())),
        pa.field("online_sparse", pa.list_(pa.int64())),
        pa.field("propensity", pa.float32()),
        pa.field("interleave_team", pa.int8()),
    ]
)

OPTIONAL_COLUMNS: tuple[str, ...] = tuple(
    name for name in EVENTS_SCHEMA.names if name not in REQUIRED_COLUMNS
)

#: The optional columns only serving writes: what the model saw for each impression.
SERVED_COLUMNS: tuple[str, ...] = (
    "user_features",
    "item_features",
    "online_base_logit",
    "online_dense",
    "online_sparse",
    "propensity",
    "interleave_team",
)


def empty_events() -> pa.Table:
    """A zero-row table with the full schema (handy as a neutral element for concat)."""
    return EVENTS_SCHEMA.empty_table()


def conform(table: pa.Table) -> pa.Table:
    """Return ``table`` with exactly ``EVENTS_SCHEMA``'s columns, in order.

    Optional columns that are absent become all-null; present columns are cast to their
    declared type. This does not validate values: ``feature_store.events_file`` does that
    for untrusted files before calling it.

    Raises:
        ValueError: a required column is missing.
    """
    missing = [c for c in REQUIRED_COLUMNS if c not in table.column_names]
    if missing:
        raise ValueError(f"events table lacks required column(s): {', '.join(missing)}")
    columns = []
    for field in EVENTS_SCHEMA:
        if field.name in table.column_names:
            columns.append(table.column(field.name).cast(field.type))
        else:
            columns.append(pa.nulls(table.num_rows, type=field.type))
    return pa.Table.from_arrays(columns, schema=EVENTS_SCHEMA)
