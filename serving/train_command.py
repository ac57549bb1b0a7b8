"""``freshrank train``: one training now, or a loop that retrains weekly and on triggers.

Registered into the ``freshrank`` command by ``serving.cli`` (``register(subparsers)``), which
owns ``--config``/``--workspace`` and hands this command the settings it loaded
(``args.settings``: ``[base_model]``, ``[feature_store]`` for the training set, ``[freshrank]``
for the Ray address). ``python -m base_model.train`` (the Ray job entry point) runs the same
command. Imports nothing heavy until a command runs.

Output: one JSON line per training on stdout (a data-gate block included, exit status 3);
progress and errors on stderr, one line each.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from protos.timeparse import TimeParseError, parse_duration, parse_time

if TYPE_CHECKING:
    import pyarrow as pa

    from base_model.config import BaseModelConfig
    from base_model.errors import DataGateError
    from protos.registry import ModelRegistry
    from base_model.training import TrainResult
    from base_model.triggers import TriggerDecision
    from serving.settings import Settings

logger = logging.getLogger(__name__)

__all__ = ["EXIT_BLOCKED", "add_train_arguments", "register", "run_train"]

EXIT_BLOCKED = 3
AS_OF_HELP = (
    "training time: 'data-end' (default: the end of the data, i.e. the hour after its newest "
    "event), 'now' (the start of the current UTC hour; for scheduled jobs, so stale data "
    "blocks), or a time (ISO 8601, naive = UTC, or unix seconds)"
)


def as_of_argument(text: str) -> str:
    """``--as-of``: ``data-end``, ``now`` or a time, checked when the flags are read."""
    if text in ("data-end", "now"):
        return text
    try:
        parse_time(text)
    except TimeParseError as exc:
        raise TimeParseError(f"{exc}, or 'data-end'") from exc
    return text


def register(subparsers: Any) -> None:
    """Add ``train`` to the ``freshrank`` command."""
    parser = subparsers.add_parser(
        "train",
        help="train the base ranker now, or retrain on a schedule and on triggers (--every)",
        description=(
            "Train, gate, register and promote a base version (warm-started from the champion) "
            "on the workspace's event log (or --training-set), as of the end of the data unless "
            "--as-of says otherwise. With --every, check the triggers (schedule, performance "
            "drop, drift, new data) every --check-every and train when one fires."
        ),
    )
    add_train_arguments(parser)
    parser.set_defaults(func=run_train)


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``freshrank train`` (and so of ``python -m base_model.train``)."""
    data = parser.add_argument_group("data")
    data.add_argument(
        "--training-set",
        type=Path,
        help="Parquet file/dir in the training-set shape (default: build it from the "
        "workspace's event log with feature_store)",
    )
    data.add_argument(
        "--registry", type=Path, help="model registry root (default <workspace>/registry)"
    )
    data.add_argument("--as-of", type=as_of_argument, default="data-end", help=AS_OF_HELP)
    model = parser.add_argument_group("model and cluster")
    model.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a [base_model] setting over the settings file (JSON value), e.g. epochs=2; "
        "repeatable",
    )
    model.add_argument("--num-workers", type=int, help="Ray Train workers ([base_model] num_workers)")
    model.add_argument(
        "--use-gpu", choices=("auto", "true", "false"), help="[base_model] use_gpu"
    )
    model.add_argument(
        "--parent",
        default="champion",
        help="warm-start source: 'champion' (default), 'none' (cold) or a version",
    )
    model.add_argument(
        "--no-promote", action="store_true", help="register and gate, but do not promote"
    )
    model.add_argument(
        "--trigger", type=_json_object, default=None, metavar="JSON",
        help="the decision that asked for this training, recorded in its lineage (a JSON "
        "object, as `freshrank run` passes it; default: manual)",
    )
    model.add_argument(
        "--ray-address",
        help="Ray cluster to join (default: [freshrank] ray_address, else $RAY_ADDRESS, else "
        "a local loopback cluster)",
    )
    model.add_argument("--address", dest="ray_address", help=argparse.SUPPRESS)  # old spelling
    model.add_argument(
        "--backend",
        choices=("ray", "local"),
        default="ray",
        help="'ray': Ray Train TorchTrainer (default); 'local': same loop, in-process",
    )
    loop = parser.add_argument_group("schedule (retrain loop)")
    loop.add_argument(
        "--every",
        type=parse_duration,
        help="run as a loop: retrain when the champion's data is this old (e.g. 7d), or "
        "when another trigger fires",
    )
    loop.add_argument(
        "--check-every",
        type=parse_duration,
        default=timedelta(hours=1),
        help="how often the loop checks its triggers (default 1h)",
    )
    loop.add_argument(
        "--max-checks", type=int, default=0, help="stop the loop after N checks (0: never)"
    )


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object")
    return value


def run_train(args: argparse.Namespace) -> int:
    """Run ``freshrank train``: one JSON line per training on stdout.

    Exit status: 0 trained (promoted, rejected or registered: see the JSON), 3 blocked by
    the data gates. Bad input raises (``freshrank`` prints it as one line, status 2).
    """
    from protos.registry import ModelRegistry

    settings: Settings = args.settings
    cfg = _config(settings, args)
    registry = ModelRegistry(args.registry or settings.registry_dir)
    if args.backend == "ray":
        from base_model.trainer import connect

        # Joined (or started) here, once, so a normal run stays quiet: -vv echoes Ray's logs.
        connect(args.ray_address or settings.ray_address, quiet=getattr(args, "verbose", 0) < 2)
    if args.every is None:
        return _train_once(args, settings, cfg, registry)
    return _loop(args, settings, cfg, registry)


def _train_once(
    args: argparse.Namespace, settings: Settings, cfg: BaseModelConfig, registry: ModelRegistry
) -> int:
    from base_model.errors import DataGateError

    table, as_of = _data(args, settings, cfg)
    try:
        result = _train(args, settings, cfg, registry, table, as_of, trigger=args.trigger)
    except DataGateError as exc:
        print(
            json.dumps({"status": "blocked", "reason": str(exc), "gates": exc.report}, default=str),
            flush=True,
        )
        _say(_blocked_hint(exc, args, settings, table, as_of))
        return EXIT_BLOCKED
    print(json.dumps(result.to_dict(), default=str), flush=True)
    return 0


def _loop(
    args: argparse.Namespace, settings: Settings, cfg: BaseModelConfig, registry: ModelRegistry
) -> int:
    from base_model.errors import BaseModelError, DataGateError
    from base_model.triggers import check_triggers

    log_path = Path(registry.root) / "base-train-log.jsonl"
    checks = 0
    while True:
        record: dict[str, Any] = {}
        try:
            table, now = _data(args, settings, cfg)
            decision = check_triggers(cfg, registry, table, now, args.every)
            record = {
                "checked_at": datetime.now(UTC).isoformat(),
                "as_of": now.isoformat(),
                "decision": decision.to_dict(),
            }
            if decision.train:
                _say(f"training: {decision.summary()}")
                result = _train(args, settings, cfg, registry, table, now, trigger=decision)
                record["outcome"] = result.to_dict()
                print(json.dumps(record["outcome"], default=str), flush=True)
            else:
                record["outcome"] = {"status": "not triggered"}
        except DataGateError as exc:
            record["outcome"] = {"status": "blocked", "reason": str(exc)}
            _say(f"blocked: {exc}")
        except (BaseModelError, ValueError, OSError) as exc:
            record["outcome"] = {"status": "error", "reason": str(exc)}
            _say(f"error: {exc}")
        _append(log_path, record)
        checks += 1
        if args.max_checks and checks >= args.max_checks:
            return 0
        time.sleep(args.check_every.total_seconds())


def _train(
    args: argparse.Namespace,
    settings: Settings,
    cfg: BaseModelConfig,
    registry: ModelRegistry,
    table: pa.Table,
    as_of: datetime,
    trigger: TriggerDecision | dict[str, Any] | None,
) -> TrainResult:
    from base_model.training import train_base_model
    from serving.training_sources import history_times

    parent = {"champion": "champion", "none": None}.get(args.parent, args.parent)
    history = (
        None if args.training_set is not None
        else history_times(settings.feature_store, as_of, cfg.train_days)
    )
    return train_base_model(
        cfg,
        table,
        registry,
        parent=parent,
        as_of=as_of,
        trigger=trigger,
        promote=not args.no_promote,
        address=args.ray_address or settings.ray_address,
        backend=args.backend,
        history=history,
    )


def _config(settings: Settings, args: argparse.Namespace) -> BaseModelConfig:
    """``[base_model]`` with ``--set``, ``--num-workers`` and ``--use-gpu`` on top."""
    from base_model.errors import ConfigError

    values: dict[str, Any] = {}
    for item in args.overrides:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ConfigError(f"--set needs KEY=VALUE (a [base_model] setting), got {item!r}")
        try:
            values[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            values[key.strip()] = raw
    if args.num_workers is not None:
        values["num_workers"] = args.num_workers
    if args.use_gpu is not None:
        values["use_gpu"] = args.use_gpu if args.use_gpu == "auto" else args.use_gpu == "true"
    return settings.with_overrides({"base_model": values}).base_model


def _data(
    args: argparse.Namespace, settings: Settings, cfg: BaseModelConfig
) -> tuple[pa.Table, datetime]:
    """The training set and the training time ``--as-of`` names."""
    from base_model.data import load_training_set, validate_training_set
    from serving.training_sources import as_of_for_table, training_set_from_log

    from feature_store.events_file import check_trainable

    # Rows of one label only cannot train (one line, before any work); no rows at all is the
    # rows gate's to explain, with where the log's events are.
    if args.training_set is not None:
        table = validate_training_set(load_training_set(args.training_set))
        if table.num_rows:
            check_trainable(table, source=f"training set {args.training_set}")
        return table, as_of_for_table(args.as_of, table)
    table, as_of = training_set_from_log(settings.feature_store, args.as_of, cfg.train_days)
    if table.num_rows:
        check_trainable(table, source=f"the event log's rows before {as_of.isoformat()}")
    return validate_training_set(table), as_of


def _blocked_hint(
    exc: DataGateError,
    args: argparse.Namespace,
    settings: Settings,
    table: pa.Table,
    as_of: datetime,
) -> str:
    """One line: what blocked, when the data really starts and ends, and what to try."""
    from serving.training_sources import log_span, table_span

    failed = {name: g for name, g in exc.report.items() if not g.get("passed", True)}
    span = table_span(table) if args.training_set is not None else log_span(settings.feature_store)
    if span is None:
        return f"blocked: {exc}"
    first, last = span
    where = "the training set" if args.training_set is not None else "the event log"
    reasons = "; ".join(f"{name}: {g.get('reason', '')}" for name, g in failed.items())
    end = last.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    if as_of != end:
        advice = f"train as of its end with --as-of data-end (= {end.isoformat()}) or a time inside it"
    else:
        advice = (
            "this is its end: load more events, or lower [base_model] min_train_rows / "
            "min_valid_rows"
        )
    return (
        f"blocked as of {as_of.isoformat()}: {reasons or exc}. {where} holds events from "
        f"{first.isoformat()} to {last.isoformat()}: {advice}"
    )


def _say(message: str) -> None:
    print(f"freshrank train: {' '.join(message.split())}", file=sys.stderr, flush=True)


def _append(path: Path, record: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record, default=str) + "\n")
