"""The ``freshrank`` console command: one entry point, subcommands owned by each package.

Each tier contributes its subcommands through ``<package>.cli.register(subparsers)``; this
module (the composition root) assembles them, adds the ones that need every tier
(``serve``, ``status``, ``demo``) and owns what every subcommand shares:

- **Settings.** ``--config`` (else ``$FRESHRANK_CONFIG``) and ``--workspace`` (else
  ``$FRESHRANK_WORKSPACE``, else the file's, else ``./.freshrank``) are read here, once, into
  one frozen ``serving.settings.Settings`` that every command gets as ``args.settings``. Both
  flags are accepted before or after the subcommand.
- **Errors.** A user error (``protos.errors.FreshrankError``, ``ValueError``, ``OSError``) is
  one line on stderr and exit status 2, never a traceback.
- **Quiet.** Library noise a normal run does not need is turned down (``quiet_libraries``);
  ``-v`` shows freshrank's progress, ``-vv`` everything.
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
from pathlib import Path
from typing import NoReturn

from protos.errors import FreshrankError

__all__ = [
    "OneLineParser",
    "build_parser",
    "feast_metrics_directory",
    "main",
    "one_line",
    "quiet_libraries",
]

EXIT_USAGE = 2
SETTINGS_RULE = (
    "Settings: one freshrank.toml ([freshrank], [feature_store], [base_model], [online_layer], "
    "[serving], [controller]) read once by this command and honoured by every subcommand; "
    "--config/--workspace may also follow the subcommand."
)


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line that points at ``--help``
    (argparse's default is the whole usage block, then the error). Its subcommands' parsers
    are of this class too (``add_subparsers`` uses the parent's class)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def _add_shared_options(parser: argparse.ArgumentParser, *, root: bool) -> None:
    """``--config``, ``--workspace`` and ``-v``: real defaults on the root parser; on a
    subcommand they default to nothing, so the root's value stays unless given there."""
    kwargs = {} if root else {"default": argparse.SUPPRESS}
    parser.add_argument(
        "--config",
        type=Path,
        help="settings file, freshrank.toml (default: $FRESHRANK_CONFIG, else none: defaults)",
        **({"default": None} if root else kwargs),
    )
    parser.add_argument(
        "--workspace",
        type=Path,
        help="runtime state directory: event log, features, Feast, registry (default: "
        "$FRESHRANK_WORKSPACE, else the settings file's workspace, else ./.freshrank)",
        **({"default": None} if root else kwargs),
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="count",
        help="more logging (-v: progress, -vv: debug and library logs)",
        **({"default": 0} if root else kwargs),
    )


def _leaves(subparsers: argparse._SubParsersAction) -> Iterator[argparse.ArgumentParser]:
    """Every parser that runs a command (nested ``data``/``features`` actions included)."""
    seen: set[int] = set()
    for parser in subparsers.choices.values():
        if id(parser) in seen:
            continue
        seen.add(id(parser))
        nested = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if nested:
            for action in nested:
                yield from _leaves(action)
        else:
            yield parser


def build_parser(prog: str = "freshrank") -> argparse.ArgumentParser:
    from serving import train_command as base_model_cli
    from feature_store import cli as feature_store_cli
    from serving import commands, operator_commands
    from serving.controller import command as controller_cli
    from serving.backtest import cli as backtest_cli
    from serving.offpolicy import cli as evaluate_cli

    parser = OneLineParser(
        prog=prog,
        description="A ranking system that stays fresh: base ranker + online correction.",
        epilog=SETTINGS_RULE,
    )
    _add_shared_options(parser, root=True)
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    feature_store_cli.register(subparsers)
    base_model_cli.register(subparsers)
    commands.register(subparsers)
    operator_commands.register(subparsers)
    controller_cli.register(subparsers)
    backtest_cli.register(subparsers)
    evaluate_cli.register(subparsers)
    for leaf in _leaves(subparsers):
        _add_shared_options(leaf, root=False)
        leaf.set_defaults(command_prog=leaf.prog)
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


#: Libraries whose INFO chatter ``-v`` should not show (``-v`` is freshrank's progress).
#: Ray's loggers are set up when Ray is imported and started, so the command that starts
#: Ray quiets them there (``base_model.trainer.connect(quiet=True)``), including Ray Train's
#: placement-group cleaner, which warns once a second in a worker on the loopback cluster.
NOISY_LOGGERS = ("feast", "filelock")


def quiet_libraries(verbose: int) -> None:
    """Below ``-vv``, the ``NOISY_LOGGERS`` log warnings and errors only."""
    if verbose >= 2:
        return
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def one_line(error: BaseException) -> str:
    """``error`` as the one line the user reads: an OSError names its file."""
    if isinstance(error, OSError) and error.filename and error.strerror:
        text = f"{error.filename}: {error.strerror}"
    else:
        text = str(error) or type(error).__name__
    return " ".join(text.split())


def _command_parser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) and name in action.choices:
            return action.choices[name]
    raise KeyError(name)


def main(
    argv: Sequence[str] | None = None,
    *,
    prog: str = "freshrank",
    command: str | None = None,
) -> int:
    """Run one ``freshrank`` command; returns its exit status (2: a user error).

    ``command``: run that subcommand under the name ``prog`` (``python -m base_model.train``
    is ``freshrank train``): ``argv`` holds its flags only.
    """
    from serving.settings import load_settings

    with feast_metrics_directory():
        parser = build_parser(prog)
        if command is not None:
            leaf = _command_parser(parser, command)
            leaf.prog = prog
            leaf.set_defaults(command_prog=prog)
            argv = [command, *(sys.argv[1:] if argv is None else argv)]
        try:
            args = parser.parse_args(argv)
        except SystemExit as done:  # --help (0) or a usage error (2, one line on stderr)
            return done.code if isinstance(done.code, int) else EXIT_USAGE
        level = logging.WARNING - 10 * min(args.verbose, 2)
        logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        quiet_libraries(args.verbose)
        try:
            args.settings = load_settings(args.config, workspace=args.workspace)
            result = args.func(args)
        except KeyboardInterrupt:
            return 130
        except (FreshrankError, ValueError, OSError) as error:
            logging.getLogger(__name__).debug("%s failed", args.command_prog, exc_info=True)
            print(f"{args.command_prog}: error: {one_line(error)}", file=sys.stderr)
            return EXIT_USAGE
        return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
