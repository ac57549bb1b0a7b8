"""On-call commands against a running app: ``freshrank online enable|disable``,
``freshrank rollback online|base [--to VERSION]``, ``freshrank canary abort`` and
``freshrank explore on|off [--share F] [--slots N] [--scale F] [--samples N]
[--propensity-draws N]``.

Why over gRPC and not Ray: on-call reaches the serving port, with the ingress token
(``$FRESHRANK_INGRESS_TOKEN`` or ``--token-file``), from wherever they are; the ingress
checks the credential, the learner records the action in the workspace's audit log (who,
when, why, from what to what) and every replica applies it in place on its next poll. Each
command prints the ingress's one-line answer as JSON and exits 0, or one line on stderr
and a non-zero status.

``rollback base`` restores the previous champion base (or ``--to`` a registered base) and
re-binds the online layer trained for it; ``canary abort`` stops a staged shadow or canary
(the champion serves every user again). ``explore on`` ranks a share of requests by a
Thompson sample of the online layer's posterior (``serving.exploration``), ``explore off``
stops it; ``--propensity-draws N`` picks the logged propensity's estimator (N draws of the
Rao-Blackwellised one; 0: Monte Carlo with ``--samples``); an option left out keeps its
current value. A controller (``freshrank run``) that had staged the
candidate sees it gone at its next look and ends its cycle ``aborted``.
"""

from __future__ import annotations

import argparse
import getpass
from typing import TYPE_CHECKING

from protos.errors import Unauthenticated, Unavailable

if TYPE_CHECKING:
    from protos.freshrank.v1 import ranking_pb2

__all__ = ["register"]

DEFAULT_TARGET = "127.0.0.1:9000"


def _connection_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--target", default=DEFAULT_TARGET, help=f"gRPC host:port (default {DEFAULT_TARGET})")
    parser.add_argument("--app", default="freshrank", help="Serve application name")
    parser.add_argument(
        "--token-file", help="file holding the ingress token (default: $FRESHRANK_INGRESS_TOKEN)"
    )
    parser.add_argument("--reason", required=True, help="why (recorded in the audit log)")
    parser.add_argument(
        "--actor", default=None, help="who (recorded in the audit log; default: your login name)"
    )
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds to wait (default 10)")


def _count(text: str) -> int:
    """An integer >= 0 (``--slots``, ``--samples``, ``--propensity-draws``; the server checks
    the upper bounds)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative")
    return value


def register(subparsers: argparse._SubParsersAction) -> None:
    online = subparsers.add_parser("online", help="switch the online correction off or on, in place")
    online.add_argument("state", choices=("enable", "disable"))
    _connection_flags(online)
    online.set_defaults(func=cmd_online)

    rollback = subparsers.add_parser("rollback", help="roll a tier back in place")
    rollback.add_argument("tier", choices=("online", "base"), help="the tier to roll back")
    rollback.add_argument(
        "--to", dest="to_version", default="",
        help="online: an online version of the serving base (default: the last good snapshot); "
        "base: a registered base version (default: the champion before the current one)",
    )
    _connection_flags(rollback)
    rollback.set_defaults(func=cmd_rollback)

    canary = subparsers.add_parser("canary", help="stop the staged candidate base (shadow or canary)")
    canary.add_argument("action", choices=("abort",))
    _connection_flags(canary)
    canary.set_defaults(func=cmd_canary)

    explore = subparsers.add_parser(
        "explore", help="Thompson-sampling exploration of new items on or off, in place"
    )
    explore.add_argument("state", choices=("on", "off"))
    explore.add_argument("--share", type=float, default=None, help="share of requests that explore, in [0, 1]")
    explore.add_argument("--slots", type=_count, default=None, help="last top-k slots the sample fills (0: all)")
    explore.add_argument("--scale", type=float, default=None, help="posterior sd multiplier, in (0, 10]")
    explore.add_argument("--samples", type=_count, default=None,
                         help="Monte Carlo draws for the propensity (when the propensity draws are 0)")
    explore.add_argument("--propensity-draws", type=_count, default=None,
                         help="draws of the Rao-Blackwellised propensity, in [0, 1024]; 0: Monte Carlo "
                         "with --samples (default: the running value, first [serving] explore_propensity_draws)")
    _connection_flags(explore)
    explore.set_defaults(func=cmd_explore)


def _call(args: argparse.Namespace, action: str) -> ranking_pb2.AdminReply:
    import grpc

    from serving.auth import load_token
    from serving.client import RankerClient

    token = load_token(args.token_file or "")
    actor = args.actor or getpass.getuser()
    try:
        with RankerClient(args.target, args.app, timeout_s=args.timeout, token=token or "") as client:
            if action == "online":
                return client.set_online_enabled(args.state == "enable", args.reason, actor)
            if action == "rollback_base":
                return client.rollback_base(args.reason, actor, args.to_version)
            if action == "canary_abort":
                return client.abort_candidate(args.reason, actor)
            if action == "explore":
                return client.set_exploration(
                    args.state == "on", args.reason, actor,
                    share=args.share, slots=args.slots, scale=args.scale, samples=args.samples,
                    propensity_draws=args.propensity_draws,
                )
            return client.rollback_online(args.reason, actor, args.to_version)
    except grpc.RpcError as error:
        code = error.code() if hasattr(error, "code") else None
        details = error.details() if hasattr(error, "details") else str(error)
        if code == grpc.StatusCode.UNAUTHENTICATED:
            raise Unauthenticated(
                f"{details}; set $FRESHRANK_INGRESS_TOKEN or pass --token-file"
            ) from None
        name = code.name if code is not None else "UNKNOWN"
        raise Unavailable(f"{args.target} answered {name}: {details}") from None


def _print(reply: ranking_pb2.AdminReply) -> int:
    from google.protobuf import json_format

    print(json_format.MessageToJson(reply, always_print_fields_with_no_presence=True, indent=None))
    return 0


def cmd_online(args: argparse.Namespace) -> int:
    return _print(_call(args, "online"))


def cmd_rollback(args: argparse.Namespace) -> int:
    return _print(_call(args, "rollback_base" if args.tier == "base" else "rollback"))


def cmd_canary(args: argparse.Namespace) -> int:
    return _print(_call(args, "canary_abort"))


def cmd_explore(args: argparse.Namespace) -> int:
    return _print(_call(args, "explore"))
