"""The ``freshrank`` console command: one entry point, subcommands owned by each package.

Each tier contributes its subcommands through ``<package>.cli.register(subparsers)``; this
module (the composition root) only assembles them and adds the ones that need every tier:
``serve``, ``status``, ``demo``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence


def build_parser() -> argparse.ArgumentParser:
    from base_model import cli as base_model_cli
    from feature_store import cli as feature_store_cli
    from serving import commands
    from serving.backtest import cli as backtest_cli

    parser = argparse.ArgumentParser(
        prog="freshrank",
        description="A ranking system that stays fresh: base ranker + online correction.",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    feature_store_cli.register(subparsers)
    base_model_cli.register(subparsers)
    commands.register(subparsers)
    backtest_cli.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        result = args.func(args)
    except KeyboardInterrupt:
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
