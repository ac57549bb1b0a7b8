"""Serving configuration: one frozen dataclass, passed explicitly to every serving part."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from protos.settings_io import check_bounds, from_section


@dataclass(frozen=True)
class ServingConfig:
    """How the Ray Serve application listens, validates and decides to fall back.

    Attributes:
        grpc_port: Port of Serve's gRPC proxy. Ray 2.60 binds it on all interfaces
            (``[::]:port``, hard-coded in ``ray.serve._private.grpc_util``); the ingress
            therefore refuses callers from other hosts itself while ``host`` is a loopback
            address (see ``serving.auth.PeerPolicy``). 0 means "pick a free port".
        http_port: Port of Serve's HTTP proxy (kept on ``host``); 0 picks a free port.
        host: Address for the HTTP proxy and for clients to dial. A loopback address
            (default 127.0.0.1) also means: freshrank rpcs from a non-loopback peer are
            refused with PERMISSION_DENIED. Set "0.0.0.0" to serve other hosts.
        app_name: Serve application name (clients pass it as ``application`` metadata when
            several applications run).
        max_candidates: Largest candidate list a Rank call may send.
        online_ttl_seconds: Online weights older than this are stale: serving falls back to
            the base alone rather than apply a correction learned from old traffic.
        weight_poll_seconds: How often each Ranker replica asks the learner for newer weights.
        online_enabled: Operator switch; False serves the base alone.
        ranker_replicas: Replicas of the Rank ingress.
        max_ongoing_requests: Concurrency per Rank replica.
        max_feedback_events: Largest Feedback batch accepted in one call.
        fresh_push_seconds: Accepted feedback updates the live item counters in the
            feature store at most this often (coalesced, off the request path).
        access_log: Serve's per-request access log lines (proxies and replicas). Off by
            default: at hundreds of calls a second they cost CPU on the request path and, on
            a local cluster, every line is echoed to the driver's console (a demo replay
            printed 24,000 of them over its report). Replica warnings and errors are logged
            either way.
        token_file: File whose first line is the ingress token (when
            ``$FRESHRANK_INGRESS_TOKEN`` is unset). Feedback and the admin rpcs need it.
        open_rpcs: rpcs callable without the token (default Rank and Status: they change
            nothing; Status is what probes call). Feedback and the admin rpcs
            (SetOnlineEnabled, RollbackOnline) should never be listed here.
        max_id_bytes: Longest request_id / user_id / item id (UTF-8 bytes).
        max_attributes: Most ``context.attributes`` entries in a Rank call.
        max_attribute_bytes: Longest attribute key or value (UTF-8 bytes).
        max_clock_skew_seconds: A request_time or event_time more than this ahead of the
            server clock is refused (a future time would move the learner's watermark).
        max_event_age_seconds: A request_time or event_time older than this is refused;
            0 (default) allows any age after 1970-01-01 (replays of logged data).
        metrics_port: Port of the Prometheus endpoint (``/metrics``), served by the Learner
            replica on ``host`` (loopback by default); 0 picks a free port (logged, and
            returned by ``serving.app.start``). A port that is taken is retried for a minute
            (a redeployed Learner waits for the old one), then logged; serving never stops
            for it. Names: ``serving.observability.METRICS``.
        compact_seconds: How often the Learner turns the served write-ahead logs into the
            workspace's hourly Parquet event log (impressions whose join window closed).
        shadow_share: Share of the champion's requests a staged candidate base also scores
            (shadow comparison; never served), off the reply path.
        interleave_share: Share of the champion's requests (a stable hash of the request
            id) that, during a canary, are served as the team-draft interleaving of the
            champion's and the candidate's rankings (``serving.interleaving``; the team of
            each shown item is in the served log). Each is ranked by both bases. 0: never.
        base_cache: Base versions each Ranker replica keeps loaded (champion, candidate, and
            the previous champion, so a rollback is a switch, not a load).
        explore_enabled, explore_share, explore_slots, explore_scale, explore_samples,
            explore_focus, explore_propensity_draws: The exploration policy a replica starts
            with (``serving.exploration``: off by default; the ``SetExploration`` rpc /
            ``freshrank explore on|off`` change it in place): the share of requests that rank
            by a Thompson sample of the online posterior, how many of the last top-k slots it
            fills (0: all), the posterior standard deviation's multiplier, the Monte Carlo
            draws for the propensity (used only when ``explore_propensity_draws`` is 0), which
            weights a sample draws ("all", or "item": the item-id weight only), and the draws
            of the Rao-Blackwellised propensity (0: the Monte Carlo estimator instead; the
            rpc and the CLI leave it as configured).
        log_level: Level of the deployments' logs (Serve's JSON logs in the replica log
            files under the Ray session's ``logs/serve/``); DEBUG adds a line per Rank.
    """

    grpc_port: int = 9000
    http_port: int = 8000
    host: str = "127.0.0.1"
    app_name: str = "freshrank"
    max_candidates: int = 1000
    online_ttl_seconds: float = 900.0
    weight_poll_seconds: float = 1.0
    online_enabled: bool = True
    ranker_replicas: int = 1
    max_ongoing_requests: int = 64
    max_feedback_events: int = 10_000
    fresh_push_seconds: float = 0.5
    access_log: bool = False
    token_file: str = ""
    open_rpcs: tuple[str, ...] = ("Rank", "Status")
    max_id_bytes: int = 256
    max_attributes: int = 32
    max_attribute_bytes: int = 256
    max_clock_skew_seconds: float = 300.0
    max_event_age_seconds: float = 0.0
    metrics_port: int = 9464
    log_level: str = "INFO"
    compact_seconds: float = 60.0
    shadow_share: float = 1.0
    base_cache: int = 3
    interleave_share: float = 0.0
    explore_enabled: bool = False
    explore_share: float = 0.05
    explore_slots: int = 0
    explore_scale: float = 1.0
    explore_samples: int = 64
    explore_focus: str = "all"
    explore_propensity_draws: int = 8

    def __post_init__(self) -> None:
        check_bounds(
            "serving", self,
            at_least={"max_candidates": 1, "ranker_replicas": 1, "max_ongoing_requests": 1,
                      "max_feedback_events": 1, "max_id_bytes": 1, "max_attributes": 1,
                      "max_attribute_bytes": 1, "max_clock_skew_seconds": 0,
                      "max_event_age_seconds": 0},  # max_event_age_seconds 0: no limit
            above={"compact_seconds": 0, "online_ttl_seconds": 0, "weight_poll_seconds": 0,
                   "fresh_push_seconds": 0},
            ports=("grpc_port", "http_port", "metrics_port"),
        )
        if not 0.0 <= self.shadow_share <= 1.0:
            raise ValueError(f"serving.shadow_share must be in [0, 1], got {self.shadow_share}")
        if not 0.0 <= self.interleave_share <= 1.0:
            raise ValueError(f"serving.interleave_share must be in [0, 1], got {self.interleave_share}")
        from serving.exploration import ExplorationPolicy

        try:
            ExplorationPolicy.of(self)
        except ValueError as error:
            raise ValueError(str(error).replace("exploration.", "serving.explore_")) from None
        if self.base_cache < 2:
            raise ValueError("serving.base_cache must be >= 2 (champion and candidate)")
        if not isinstance(self.open_rpcs, tuple) or not all(
            isinstance(name, str) for name in self.open_rpcs
        ):
            raise ValueError("serving.open_rpcs must be a list of rpc names")
        if self.log_level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ValueError(
                f"serving.log_level must be DEBUG, INFO, WARNING or ERROR, got {self.log_level!r}"
            )

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> ServingConfig:
        """Build from a mapping (a TOML section); unknown keys are an error, not ignored."""
        return from_section(cls, values, "serving")
