"""``[controller]``: the live loop's cadence, bounds and where it reaches, one frozen dataclass.

Durations are written as ``protos.timeparse`` durations (``"7d"``, ``"90m"``); ``duration``
turns a field into a ``timedelta``. Built from the ``[controller]`` section of the one
``freshrank.toml`` by ``ControllerConfig.from_dict`` (unknown keys are errors).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from protos.settings_io import check_bounds, from_section
from protos.timeparse import parse_duration

__all__ = ["ControllerConfig", "TRAIN_BACKENDS"]

#: "ray": Ray Train fits the base (a Ray job when ``job_address`` is set, else a subprocess
#: of ``python -m base_model.train``); "process": the same subprocess with ``--backend
#: local`` (no Ray); "local": in the controller's own process (tests, small demos).
TRAIN_BACKENDS = ("ray", "process", "local")
_DURATIONS = ("every", "check_every", "poll_every", "shadow_timeout", "canary_min_duration",
              "canary_timeout", "training_timeout")
_AS_OF = ("data-end", "now")


@dataclass(frozen=True)
class ControllerConfig:
    """How ``freshrank run`` drives one cycle: check, features, train, gate, shadow, canary,
    promote.

    Attributes:
        every: The schedule trigger: retrain when the champion's data is this old.
        check_every: How often ``freshrank run`` checks its triggers between cycles.
        poll_every: How often a running step (training, shadow, canary) is looked at.
        as_of: Training time of a cycle: "data-end" (the hour after the newest logged
            event: replays and logs that ended in the past) or "now" (this UTC hour: stale
            data blocks at the data gates).
        target: gRPC ``host:port`` of the running app (``$FRESHRANK_SERVE_TARGET`` and
            ``--target`` win).
        app_name: Serve application name sent as metadata.
        token_file: File holding the ingress token (``$FRESHRANK_INGRESS_TOKEN`` wins).
        rpc_timeout_seconds: Deadline of each admin call.
        job_address: Ray job API (``http://head:8265``): training is submitted there as a
            Ray job. Empty: a subprocess of ``python -m base_model.train`` on this machine.
        train_backend: One of ``TRAIN_BACKENDS``.
        training_timeout: A training not done after this long is stopped and abandoned.
        shadow_min_requests: Shadowed requests the report must count before it is judged.
        shadow_timeout: No verdict this long after staging: the shadow is aborted.
        shadow_min_top_k_overlap: Lowest mean share of the champion's top-k in the
            candidate's.
        shadow_min_rank_correlation: Lowest mean Spearman correlation of the two orders.
        shadow_min_ctr_ratio, shadow_max_ctr_ratio: Bounds of the candidate's mean
            predicted CTR over the champion's, on the same items.
        shadow_max_latency_ratio: Highest candidate/champion ratio of p50 base scoring time.
        shadow_max_latency_ratio_p99: The same for p99.
        canary_share: Share of users (stable hash) the candidate serves, in (0, 0.5].
        canary_min_events: Labelled event-log rows each group (candidate, champion) needs
            before the canary is judged (the judgement is made once, at that point).
        canary_min_duration: The canary runs at least this long before it is judged.
        canary_timeout: No verdict this long after staging: the canary is aborted.
        canary_margin: Non-inferiority margin: the candidate's log loss may exceed the
            champion's by at most this fraction (0.03: 3 %). Size it with
            ``canary_min_events``: the groups are different users, so the bound's width is
            label noise, about ``z * sqrt(2) * (sd / mean of the per-row log loss) /
            sqrt(rows)``; at a 10 % click rate (sd/mean about 1.6) an equal candidate passes
            a 3 % margin with 80 % power from about 36,000 rows per group.
        canary_confidence: One-sided confidence of the bound on the difference.
        canary_bootstrap_samples: Bootstrap replicates (users resampled) of that bound.
        interleave_min_users: Users with a preference (a non-tied interleaving outcome)
            before the interleaving verdict is made (``verdicts.judge_interleaving``, once);
            the canary then needs it too. 0 (default): no interleaving verdict. The app
            interleaves only with ``[serving] interleave_share`` > 0.
        interleave_alpha: Level of its two-sided sign test.
        seed: Seed of the bootstrap.
        actor: Who the controller says it is in the audit log.
        metrics_host, metrics_port: Where ``freshrank run`` exports its Prometheus
            metrics (``serving.controller.metrics``); port 0 (default): not exported.
    """

    every: str = "7d"
    check_every: str = "1h"
    poll_every: str = "10s"
    as_of: str = "data-end"
    target: str = "127.0.0.1:9000"
    app_name: str = "freshrank"
    token_file: str = ""
    rpc_timeout_seconds: float = 30.0
    job_address: str = ""
    train_backend: str = "ray"
    training_timeout: str = "6h"
    shadow_min_requests: int = 500
    shadow_timeout: str = "6h"
    shadow_min_top_k_overlap: float = 0.5
    shadow_min_rank_correlation: float = 0.3
    shadow_min_ctr_ratio: float = 0.5
    shadow_max_ctr_ratio: float = 2.0
    shadow_max_latency_ratio: float = 2.0
    shadow_max_latency_ratio_p99: float = 3.0
    canary_share: float = 0.1
    canary_min_events: int = 40_000
    canary_min_duration: str = "1h"
    canary_timeout: str = "2d"
    canary_margin: float = 0.03
    canary_confidence: float = 0.95
    canary_bootstrap_samples: int = 1_000
    interleave_min_users: int = 0
    interleave_alpha: float = 0.05
    seed: int = 0
    actor: str = "freshrank-controller"
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 0

    def __post_init__(self) -> None:
        for name in _DURATIONS:
            parse_duration(getattr(self, name))  # a TimeParseError names the bad value
        if self.as_of not in _AS_OF:
            raise ValueError(f"controller.as_of must be one of {', '.join(_AS_OF)}, got {self.as_of!r}")
        if self.train_backend not in TRAIN_BACKENDS:
            raise ValueError(
                f"controller.train_backend must be one of {', '.join(TRAIN_BACKENDS)}, "
                f"got {self.train_backend!r}"
            )
        if not isinstance(self.target, str) or ":" not in self.target:
            raise ValueError(f"controller.target must be host:port, got {self.target!r}")
        if not 0.0 < self.canary_share <= 0.5:
            raise ValueError(f"controller.canary_share must be in (0, 0.5], got {self.canary_share}")
        if not 0.5 < self.canary_confidence < 1.0:
            raise ValueError("controller.canary_confidence must be in (0.5, 1)")
        if not (math.isfinite(self.canary_margin) and self.canary_margin >= 0):
            raise ValueError("controller.canary_margin must be a finite number >= 0")
        if not 0.0 < self.interleave_alpha < 0.5:
            raise ValueError(f"controller.interleave_alpha must be in (0, 0.5), got {self.interleave_alpha}")
        check_bounds(
            "controller", self,
            at_least={"shadow_min_requests": 1, "canary_min_events": 1, "canary_bootstrap_samples": 1,
                      "interleave_min_users": 0,
                      "shadow_max_latency_ratio": 1, "shadow_max_latency_ratio_p99": 1},
            above={"rpc_timeout_seconds": 0},
            ports=("metrics_port",),
        )
        for name in ("shadow_min_top_k_overlap", "shadow_min_rank_correlation"):
            if not -1.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"controller.{name} must be in [-1, 1]")
        if not 0 < self.shadow_min_ctr_ratio <= 1.0 <= self.shadow_max_ctr_ratio:
            raise ValueError("controller: need 0 < shadow_min_ctr_ratio <= 1 <= shadow_max_ctr_ratio")

    def duration(self, name: str) -> timedelta:
        """A duration field (``every``, ``check_every``, ...) as a ``timedelta``."""
        if name not in _DURATIONS:
            raise KeyError(name)
        return parse_duration(getattr(self, name))

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> ControllerConfig:
        """Build from the ``[controller]`` TOML section; unknown keys are errors."""
        return from_section(cls, values, "controller")
