"""The online layer's one configuration object (section ``[online_layer]`` of the settings).

Every knob of the correction model, the featurizer and the learner service is here, checked
once in ``__post_init__``, so a bad setting fails at start-up with its name in the message
rather than deep inside a learning step. Ray actors receive ``asdict(cfg)`` and rebuild it
with ``OnlineLayerConfig.from_dict``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from online_layer.breaker import BreakerConfig
from online_layer.defences import GuardConfig
from protos.settings_io import from_section

IMPLEMENTATIONS = ("cython", "numpy")
EMIT_POLICIES = ("window_close", "on_arrival")


def _is_number(value: Any) -> bool:
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
    )


@dataclass(frozen=True)
class OnlineLayerConfig:
    """Settings of the online correction layer and its learner.

    Attributes
    ----------
    alpha, beta, l1, l2 : float
        FTRL-Proximal hyper-parameters (McMahan et al. 2013): per-coordinate learning rate
        ``alpha / (beta + sqrt(n_i))``, L1 (sparsity) and L2 strengths. L1 and L2 are in the
        units of a summed mini-batch gradient, as in the per-example algorithm.
    hash_bits : int
        The hashed crosses index a table of ``2**hash_bits`` weights.
    position_buckets : int
        Logged positions ``>= position_buckets - 1`` share the last position token.
    max_position : int
        Feedback with a position above this is out of range (rejected).
    implementation : {"cython", "numpy"}
        Which FTRL implementation the learner runs (the NumPy reference is for checks).
    batch_size : int
        A mini-batch is learned as soon as this many joined examples are waiting ...
    max_batch_delay_s : float
        ... or when the oldest waiting example has waited this long (wall clock), whichever
        comes first.
    join_window_s : float
        Event-time seconds after its request that a served record waits for feedback; a
        shown item's label is the largest one received within the window, and feedback
        after it is dropped as late.
    emit : {"window_close", "on_arrival"}
        When a joined example is learned. ``window_close``: when its window closes, with
        the largest label seen (exact delayed labels for impression-then-click streams;
        learning lags by the window). ``on_arrival``: as soon as its feedback arrives, that
        label taken as final (for feedback that reports each shown item once with what
        happened, as serving's Feedback rpc does: fresh within a batch). A later row for
        an item already learned is dropped and counted as ``duplicate``. (Emitting clicks
        at once and non-clicks a window later was tried and rejected: it inflates every
        item by its recent clicks, a popularity bias, and makes batches click-rich.)
    implicit_negatives : bool
        When a window closes, learn served items that got no feedback at all as label 0
        (for click-only feedback streams; requires serving to record only shown items).
    max_clock_skew_s : float
        Feedback more than this far ahead of the learner's watermark, or before its
        request, is out of range.
    max_served_ahead_s : float
        A served request time (``Rank``'s ``context.request_time``) or feedback time more
        than this ahead of the learner's wall clock is clamped to it (counted as
        ``clamped_future_times`` in the report): one request from the future must not move
        the join watermark and close every current window. Keep it well below
        ``join_window_s``.
    max_id_chars : int
        Served records with a request, user or item id longer than this are not kept
        (counted ``served_refused``): the ingress refuses them first; this bounds the
        learner's memory whatever its callers do. Feedback ids have the same limit
        (``online_layer.validation.MAX_ID_LENGTH``).
    max_pending_requests : int
        Served records kept for joining; the oldest are closed early beyond this.
    max_pending_rows : int
        Shown items (rows) kept for joining, over all pending records: the oldest records
        are closed early beyond this. It bounds the join's memory, which grows with rows,
        not requests (~490 bytes a row with a 32-wide base, measured): 1,000,000 rows is
        ~0.5 GB, a 300 s window at ~33 Rank calls/s of 100 candidates each.
    max_closed_requests : int
        Request ids whose window closed that the join remembers (so their late feedback
        is dropped, not refused as ``unknown_id``); the oldest are forgotten beyond this.
        Each is kept as an 8-byte digest, whatever the id's length: about 150 bytes each.
    replay_fraction : float
        Each mini-batch also learns ``round(replay_fraction * batch)`` older examples drawn
        from a replay buffer (0 disables it).
    replay_capacity : int
        Examples kept in the replay buffer (a ring of the most recent).
    publish_every_batches : int
        Publish a snapshot after this many learned batches ...
    publish_every_s : float
        ... or this many wall-clock seconds after the last publish, whichever comes first.
    label_rate_halflife : float
        Half-life, in examples, of the recent label rate that the click-flood check uses.
    label_rate_min_events : int
        The click-flood check starts after this many examples were checked.
    label_rate_factor : float
        A mini-batch whose label rate is above ``factor`` times the recent rate, beyond
        binomial noise, is a flood.
    label_rate_z : float
        Binomial noise allowance, in standard errors, added to that band.
    label_rate_two_sided : bool
        Also reject a rate below ``1/factor`` times the recent rate (a drought: click
        logging broken). Off by default: a drought poisons less than a flood, and a
        burst of non-clicks is common when many windows close at once (end of a gap).
    readiness_min_examples : int
        A layer must have learned this many examples before serving may use it.
    readiness_window : int
        Examples in the rolling progressive-validation window that the readiness check uses.
    readiness_tolerance : float
        Ready only while rolling hybrid log loss <= base log loss * (1 + tolerance) ...
    readiness_auc_tolerance : float
        ... and rolling hybrid AUC >= base AUC - this.
    keep_snapshots : int
        Published snapshots kept in memory for ``rollback``.
    seed : int
        Seed of the replay sampler (runs are deterministic given their inputs).
    guard : GuardConfig
        The manipulation defences (table ``[online_layer.guard]``,
        ``online_layer.defences``): per-user caps, a new-user budget, coordinated-burst
        quarantine, and ``max_correction``, the most logits the layer may move a score.
    breaker : BreakerConfig
        The circuit breaker (table ``[online_layer.breaker]``, ``online_layer.breaker``).
    """

    alpha: float = 0.05
    beta: float = 1.0
    l1: float = 0.5
    l2: float = 1.0
    hash_bits: int = 18
    position_buckets: int = 32
    max_position: int = 10_000
    implementation: str = "cython"
    batch_size: int = 512
    max_batch_delay_s: float = 1.0
    join_window_s: float = 300.0
    emit: str = "window_close"
    implicit_negatives: bool = False
    max_clock_skew_s: float = 3600.0
    max_pending_requests: int = 200_000
    max_pending_rows: int = 1_000_000
    max_closed_requests: int = 400_000
    replay_fraction: float = 0.0
    replay_capacity: int = 50_000
    publish_every_batches: int = 10
    publish_every_s: float = 5.0
    label_rate_halflife: float = 20_000.0
    label_rate_min_events: int = 2_000
    label_rate_factor: float = 3.0
    label_rate_z: float = 5.0
    label_rate_two_sided: bool = False
    readiness_min_examples: int = 5_000
    readiness_window: int = 20_000
    readiness_tolerance: float = 0.0
    readiness_auc_tolerance: float = 0.005
    keep_snapshots: int = 4
    seed: int = 0
    max_served_ahead_s: float = 60.0
    max_id_chars: int = 512
    guard: GuardConfig = field(default_factory=GuardConfig)
    breaker: BreakerConfig = field(default_factory=BreakerConfig)

    def __post_init__(self) -> None:
        # Sub-tables arrive as mappings (TOML, or ``asdict`` through Ray): unknown keys are
        # refused by name, like the section's own.
        for name, cls in (("guard", GuardConfig), ("breaker", BreakerConfig)):
            value = getattr(self, name)
            if isinstance(value, Mapping):
                object.__setattr__(self, name, from_section(cls, value, f"online_layer.{name}"))
            elif not isinstance(value, cls):
                raise ValueError(f"online_layer.{name} must be a table, got {value!r}")
        positive = ("alpha", "max_batch_delay_s", "publish_every_s", "label_rate_halflife",
                    "label_rate_factor", "join_window_s", "max_served_ahead_s")
        for name in positive:
            value = getattr(self, name)
            if not (_is_number(value) and value > 0):
                raise ValueError(f"online_layer.{name} must be a finite number > 0, got {value!r}")
        non_negative = ("beta", "l1", "l2", "max_clock_skew_s",
                        "label_rate_z", "readiness_tolerance", "readiness_auc_tolerance")
        for name in non_negative:
            value = getattr(self, name)
            if not (_is_number(value) and value >= 0):
                raise ValueError(f"online_layer.{name} must be a finite number >= 0, got {value!r}")
        at_least_one = ("batch_size", "max_pending_requests", "max_pending_rows", "max_closed_requests",
                        "replay_capacity", "publish_every_batches", "readiness_window", "keep_snapshots",
                        "max_position", "max_id_chars")
        for name in at_least_one:
            value = getattr(self, name)
            if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
                raise ValueError(f"online_layer.{name} must be an integer >= 1, got {value!r}")
        for name in ("label_rate_min_events", "readiness_min_examples", "seed"):
            value = getattr(self, name)
            if not (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
                raise ValueError(f"online_layer.{name} must be an integer >= 0, got {value!r}")
        if not (isinstance(self.hash_bits, int) and 4 <= self.hash_bits <= 30):
            raise ValueError(f"online_layer.hash_bits must be an integer in [4, 30], got {self.hash_bits!r}")
        if not (isinstance(self.position_buckets, int) and self.position_buckets >= 2):
            raise ValueError(
                f"online_layer.position_buckets must be an integer >= 2, got {self.position_buckets!r}"
            )
        if self.implementation not in IMPLEMENTATIONS:
            raise ValueError(
                f"online_layer.implementation must be one of {IMPLEMENTATIONS}, "
                f"got {self.implementation!r}"
            )
        if not (_is_number(self.replay_fraction) and 0.0 <= self.replay_fraction <= 4.0):
            raise ValueError(
                f"online_layer.replay_fraction must be in [0, 4], got {self.replay_fraction!r}"
            )
        if self.emit not in EMIT_POLICIES:
            raise ValueError(f"online_layer.emit must be one of {EMIT_POLICIES}, got {self.emit!r}")
        for name in ("implicit_negatives", "label_rate_two_sided"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"online_layer.{name} must be true or false")

    @classmethod
    def from_dict(cls, mapping: Mapping[str, Any]) -> OnlineLayerConfig:
        """Build from a mapping (a TOML section, or ``asdict`` of a config).

        Raises
        ------
        protos.settings_io.SettingsError
            A key that is not a setting (a typo must not be silently ignored), or a bad
            value; a ``ValueError``.
        """
        return from_section(cls, mapping, "online_layer")

    def ftrl_params(self) -> dict[str, float]:
        """The four FTRL hyper-parameters, as keyword arguments for a model."""
        return {"alpha": self.alpha, "beta": self.beta, "l1": self.l1, "l2": self.l2}
