"""The ``freshrank`` console command: one entry point, subcommands owned by each package.

Each tier contributes its subcommands through ``<package>.cli.register(subparsers)``; this
module (the composition root) only assembles them and adds the ones that need every tier:
``serve``, ``status``, ``demo``.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager


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


@contextmanager
def feast_metrics_directory() -> Iterator[None]:
    """One prometheus multiprocess directory for this command and every process it starts.

    Feast's metrics module makes a ``feast_metrics_*`` directory in /tmp per importing
    process and removes it at exit; Ray workers leave by ``os._exit`` and never do, so a
    demo or backtest would leave one per worker. Set before anything imports Feast (local
    Ray workers inherit the environment), removed when the command ends. A directory the
    user set is left alone.
    """
    if "PROMETHEUS_MULTIPROCESS_DIR" in os.environ:
        yield
        return
    path = tempfile.mkdtemp(prefix="freshrank-metrics-")
    os.environ["PROMETHEUS_MULTIPROCESS_DIR"] = os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    try:
        yield
    finally:
        os.environ.pop("PROMETHEUS_MULTIPROCESS_DIR", None)
        os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
        shutil.rmtree(path, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    with feast_metrics_directory():
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
