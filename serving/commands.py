"""Subcommands that need every tier: ``serve``, ``status``, ``scale``, ``demo``.

``scale --ranker-replicas N`` changes the Ranker's replica count of a running app in place
(``serving.app.scale_rankers``), over Ray (``--ray-address``), not the gRPC port.

Each gets the one ``Settings`` the ``freshrank`` command loaded (``args.settings``) and
applies its own flags on top (``Settings.with_overrides``).
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from protos.errors import Unavailable

if TYPE_CHECKING:
    from serving.settings import Settings

__all__ = ["register"]

DEFAULT_TARGET = "127.0.0.1:9000"


def add_ray_address(parser: argparse.ArgumentParser) -> None:
    """``--ray-address``: the Ray cluster to join (over ``[freshrank] ray_address``)."""
    parser.add_argument(
        "--ray-address",
        help="Ray cluster to join (default: [freshrank] ray_address, else $RAY_ADDRESS, else "
        "a local loopback cluster)",
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    serve_cmd = subparsers.add_parser(
        "serve", help="run the Ray Serve gRPC application until interrupted"
    )
    serve_cmd.add_argument("--grpc-port", type=int, help="override [serving] grpc_port")
    add_ray_address(serve_cmd)
    serve_cmd.set_defaults(func=cmd_serve)

    status_cmd = subparsers.add_parser("status", help="ask a running server what it serves")
    status_cmd.add_argument(
        "--target", default=DEFAULT_TARGET, help=f"gRPC host:port (default {DEFAULT_TARGET})"
    )
    status_cmd.add_argument("--address", dest="target", help=argparse.SUPPRESS)  # old spelling
    status_cmd.add_argument("--app", default="freshrank", help="Serve application name")
    status_cmd.add_argument(
        "--timeout", type=float, default=10.0, help="seconds to wait for the answer (default 10)"
    )
    status_cmd.set_defaults(func=cmd_status)

    scale_cmd = subparsers.add_parser(
        "scale", help="change the number of Ranker replicas of a running app, in place",
        description="The Learner and the replicas that stay keep running; new replicas start "
        "serving the online version the others serve, removed ones drain. Waits until Serve "
        "runs exactly N, then prints the result as JSON. Needs the app's Ray cluster.",
    )
    scale_cmd.add_argument("--ranker-replicas", type=_replica_count, required=True, metavar="N",
                           help="Ranker replicas to run (1 or more)")
    scale_cmd.add_argument("--app", help="Serve application name (default: [serving] app_name)")
    scale_cmd.add_argument("--timeout", type=float, default=120.0,
                           help="seconds to wait for the replicas to settle (default 120)")
    add_ray_address(scale_cmd)
    scale_cmd.set_defaults(func=cmd_scale)

    demo_cmd = subparsers.add_parser(
        "demo",
        help="simulate (or load) events, train, serve, replay with online learning, report",
        description="Runs in its own workspace: --workspace if given, else <workspace>/demo "
        "(./.freshrank/demo by default); the folder is wiped first.",
    )
    demo_cmd.add_argument("--events", type=Path, help="events file (Parquet/CSV) instead of the simulator")
    demo_cmd.add_argument("--replay-days", type=float, default=2.0, help="days replayed through gRPC")
    demo_cmd.add_argument("--simulate-days", type=float, default=12.0, help="days simulated")
    demo_cmd.add_argument("--seed", type=int, default=7)
    demo_cmd.add_argument("--base-age-days", type=float, default=3.0,
                          help="the first base's data ends this many days before the replay")
    demo_cmd.add_argument("--max-requests", type=int, help="stop the replay after N requests")
    demo_cmd.add_argument(
        "--worker-logs", action="store_true", help="echo Ray workers' logs (training, replicas) to the console"
    )
    demo_cmd.add_argument(
        "--no-live-loop", action="store_true",
        help="replay only: no controller cycle (shadow, canary, promotion) during the replay",
    )
    demo_cmd.add_argument(
        "--full-replay", action="store_true",
        help="replay every day, not only until shortly after the live loop's cycle ended",
    )
    add_ray_address(demo_cmd)
    demo_cmd.set_defaults(func=cmd_demo)


def _replica_count(text: str) -> int:
    """``--ranker-replicas``: the count as ``serving.scaling.check_replicas`` accepts it."""
    from serving.scaling import check_replicas

    try:
        return check_replicas(int(text))
    except ValueError as error:  # not an integer, or out of range (named in the message)
        raise argparse.ArgumentTypeError(str(error) if text.strip().lstrip("-").isdigit()
                                         else f"{text!r} is not a whole number") from None


def _with_ray_address(settings: Settings, args: argparse.Namespace) -> Settings:
    address = getattr(args, "ray_address", None)
    return settings.with_overrides({"freshrank": {"ray_address": address}}) if address else settings


def cmd_serve(args: argparse.Namespace) -> int:
    from serving import app

    settings = _with_ray_address(args.settings, args)
    if args.grpc_port is not None:
        settings = settings.with_overrides({"serving": {"grpc_port": args.grpc_port}})
    running = app.start(settings)
    print(f"freshrank serving on {running.grpc_address} (application {running.app_name!r}); Ctrl-C stops")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    finally:
        app.stop()
    return 0


def cmd_scale(args: argparse.Namespace) -> int:
    import json

    from serving import app

    settings = _with_ray_address(args.settings, args)
    if args.app:
        settings = settings.with_overrides({"serving": {"app_name": args.app}})
    result = app.scale_rankers(settings, args.ranker_replicas, timeout_s=args.timeout)
    print(json.dumps(result.to_dict()))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    import grpc
    from google.protobuf import json_format

    from serving.client import RankerClient

    try:
        with RankerClient(args.target, args.app, timeout_s=args.timeout) as client:
            reply = client.status()
    except grpc.RpcError as error:
        code = error.code() if hasattr(error, "code") else None
        name = code.name if code is not None else "UNKNOWN"
        details = error.details() if hasattr(error, "details") else str(error)
        raise Unavailable(
            f"no freshrank answer from {args.target} (application {args.app!r}): {name}"
            f"{': ' + details if details else ''}; start one with `freshrank serve` or point "
            "--target at a running server (HOST:PORT)"
        ) from None
    print(json_format.MessageToJson(reply, always_print_fields_with_no_presence=True))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from serving.demo import DemoOptions, prepare_workspace, run_demo

    given = args.workspace
    workspace = prepare_workspace(given if given is not None else args.settings.workspace / "demo")
    # The demo picks free ports so it never collides with a server already running.
    settings = _with_ray_address(args.settings, args).with_overrides(
        {"feature_store": {"workspace": workspace}, "serving": {"grpc_port": 0, "http_port": 0, "metrics_port": 0}}
    )
    options = DemoOptions(
        workspace=workspace,
        events=args.events,
        replay_days=args.replay_days,
        simulate_days=args.simulate_days,
        seed=args.seed,
        max_requests=args.max_requests,
        worker_logs=args.worker_logs,
        live_loop=not args.no_live_loop,
        stop_after_loop=not args.full_replay,
        base_age_days=args.base_age_days,
    )

    def progress(message: str) -> None:
        print(f"[demo] {message}", file=sys.stderr, flush=True)

    report = run_demo(settings, options, progress)
    print(report.format())
    return 0
