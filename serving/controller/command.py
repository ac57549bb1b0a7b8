"""``freshrank run``: the live-loop controller, until stopped (``--once``: one cycle).

Registered into the ``freshrank`` command by ``serving.cli``; ``python -m
serving.controller`` (a Ray job, a KubeRay Deployment) runs the same command. It takes the
workspace's one-controller lock first (a second controller exits at once with one line and
status 2), then runs cycles every ``[controller] check_every``, printing one JSON line per
finished cycle (its outcome, reason and figures) on stdout. Its record is in
``<registry>/controller/`` (``state.json``, ``history.jsonl``).

Where it reaches:
- the app: ``--target``, else ``$FRESHRANK_SERVE_TARGET``, else ``[controller] target``;
  the ingress token from ``$FRESHRANK_INGRESS_TOKEN``, else ``--token-file``, else
  ``[controller] token_file``, else ``[serving] token_file``;
- the Ray job API (training as a Ray job): ``--job-address``, else ``[controller]
  job_address``, else ``$RAY_ADDRESS`` when it is an ``http(s)://`` job API address; none:
  training runs as a subprocess here (``[controller] train_backend``).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
from types import FrameType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from serving.controller.training import Trainer
    from serving.settings import Settings

__all__ = ["TARGET_ENV", "cmd_run", "job_address", "make_trainer", "register", "serve_target"]

TARGET_ENV = "FRESHRANK_SERVE_TARGET"


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "run",
        help="the live loop: retrain on schedule and triggers, gate, shadow, canary, promote",
        description="Check the triggers every [controller] check_every; when one fires, refresh "
        "features from the event log, train a candidate base (--no-promote), read its gates, "
        "shadow it, canary it and promote it in place on the running app. Every step is "
        "recorded in <registry>/controller/; a restarted controller resumes or abandons the "
        "step it finds there.",
    )
    parser.add_argument("--once", action="store_true", help="run one check (and its cycle), then exit")
    parser.add_argument("--max-cycles", type=_count, default=0, help="stop after N checks (0: never)")
    parser.add_argument("--target", help=f"gRPC host:port of the app (default ${TARGET_ENV}, else [controller] target)")
    parser.add_argument("--app", help="Serve application name (default [controller] app_name)")
    parser.add_argument("--token-file", help="file holding the ingress token (default: $FRESHRANK_INGRESS_TOKEN)")
    parser.add_argument("--job-address", help="Ray job API for training (default [controller] job_address, else an http $RAY_ADDRESS)")
    parser.set_defaults(func=cmd_run)


def serve_target(settings: Settings, given: str | None = None) -> str:
    target = given or os.environ.get(TARGET_ENV) or settings.controller.target
    if ":" not in target:
        raise ValueError(f"--target must be host:port, got {target!r}")
    return target


def job_address(settings: Settings, given: str | None = None) -> str:
    env = os.environ.get("RAY_ADDRESS", "")
    from_env = env if env.startswith(("http://", "https://")) else ""
    return given or settings.controller.job_address or from_env


def make_trainer(settings: Settings, address: str = "") -> Trainer:
    """The training backend ``[controller] train_backend`` and the job address name."""
    from serving.controller.store import controller_dir
    from serving.controller.training import LocalTrainer, ProcessTrainer, RayJobTrainer

    backend = settings.controller.train_backend
    if backend == "local":
        return LocalTrainer(settings)
    directory = controller_dir(settings.registry_dir)
    if backend == "process":
        return ProcessTrainer(settings, directory, base_backend="local")
    if address:
        return RayJobTrainer(settings, address)
    return ProcessTrainer(settings, directory, base_backend="ray")


def _stop(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # SIGTERM (a pod stopping): the state on disk is already whole


def cmd_run(args: argparse.Namespace) -> int:
    from serving.auth import load_token
    from serving.client import RankerClient
    from serving.controller.machine import Controller
    from serving.controller.metrics import ControllerMetrics
    from serving.controller.store import ControllerLock, controller_dir

    settings: Settings = args.settings
    cfg = settings.controller
    target = serve_target(settings, args.target)
    token = load_token(args.token_file or cfg.token_file or settings.serving.token_file)
    trainer = make_trainer(settings, job_address(settings, args.job_address))
    with ControllerLock(controller_dir(settings.registry_dir)):
        if threading_main():
            signal.signal(signal.SIGTERM, _stop)
        client = RankerClient(target, args.app or cfg.app_name, timeout_s=cfg.rpc_timeout_seconds,
                              token=token or "")
        metrics = ControllerMetrics()
        if cfg.metrics_port:
            metrics.serve(cfg.metrics_host, cfg.metrics_port)

        def ended(summary: dict[str, Any]) -> None:
            metrics.observe(summary)
            print(json.dumps(summary, default=str, sort_keys=True), flush=True)

        with client:
            controller = Controller(settings, client, trainer)
            controller.run(once=args.once, max_cycles=args.max_cycles, on_end=ended)
    return 0


def threading_main() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()

