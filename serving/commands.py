"""Subcommands that need every tier: ``serve``, ``status``, ``demo``."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path
from typing import Any


def _settings(args: argparse.Namespace, **overrides: dict[str, Any]) -> Any:
    from serving.settings import load_settings

    return load_settings(args.config, workspace=args.workspace, overrides=overrides or None)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="freshrank.toml (default: $FRESHRANK_CONFIG)")
    parser.add_argument("--workspace", type=Path, help="runtime state directory")


def register(subparsers: argparse._SubParsersAction) -> None:
    serve_cmd = subparsers.add_parser(
        "serve", help="run the Ray Serve gRPC application until interrupted"
    )
    _common(serve_cmd)
    serve_cmd.add_argument("--grpc-port", type=int, help="override [serving] grpc_port")
    serve_cmd.set_defaults(func=cmd_serve)

    status_cmd = subparsers.add_parser("status", help="ask a running server what it serves")
    status_cmd.add_argument("--address", default="127.0.0.1:9000", help="gRPC host:port")
    status_cmd.add_argument("--app", default="freshrank", help="Serve application name")
    status_cmd.set_defaults(func=cmd_status)

    demo_cmd = subparsers.add_parser(
        "demo",
        help="simulate (or load) events, train, serve, replay with online learning, report",
    )
    _common(demo_cmd)
    demo_cmd.add_argument("--events", type=Path, help="events file (Parquet/CSV) instead of the simulator")
    demo_cmd.add_argument("--replay-days", type=float, default=2.0, help="days replayed through gRPC")
    demo_cmd.add_argument("--simulate-days", type=float, default=16.0, help="days simulated")
    demo_cmd.add_argument("--seed", type=int, default=7)
    demo_cmd.add_argument("--max-requests", type=int, help="stop the replay after N requests")
    demo_cmd.add_argument(
        "--worker-logs", action="store_true", help="echo Ray workers' logs (training, replicas) to the console"
    )
    demo_cmd.set_defaults(func=cmd_demo)


def cmd_serve(args: argparse.Namespace) -> int:
    from serving import app

    overrides = {"serving": {"grpc_port": args.grpc_port}} if args.grpc_port is not None else {}
    settings = _settings(args, **overrides)
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


def cmd_status(args: argparse.Namespace) -> int:
    from google.protobuf import json_format

    from serving.client import RankerClient

    with RankerClient(args.address, args.app) as client:
        reply = client.status()
    print(json_format.MessageToJson(reply, always_print_fields_with_no_presence=True))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from serving.demo import DemoOptions, prepare_workspace, run_demo

    workspace = prepare_workspace(args.workspace or Path(".freshrank/demo"))
    # The demo picks free ports so it never collides with a server already running.
    settings = _settings(
        argparse.Namespace(config=args.config, workspace=workspace),
        serving={"grpc_port": 0, "http_port": 0},
    )
    options = DemoOptions(
        workspace=workspace,
        events=args.events,
        replay_days=args.replay_days,
        simulate_days=args.simulate_days,
        seed=args.seed,
        max_requests=args.max_requests,
        worker_logs=args.worker_logs,
    )

    def progress(message: str) -> None:
        print(f"[demo] {message}", file=sys.stderr, flush=True)

    report = run_demo(settings, options, progress)
    print(report.format())
    return 0
