"""``freshrank train``: one training now, or a loop that retrains weekly and on triggers.

Registered into the ``freshrank`` command by ``serving.cli`` (``register(subparsers)``) and
reused by ``python -m base_model.train`` (the Ray job entry point), so both take the same
flags. Imports nothing heavy until a command runs.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

__all__ = ["add_train_arguments", "parse_duration", "register", "run_train"]

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
DEFAULT_WORKSPACE = Path(".freshrank")


def parse_duration(text: str) -> timedelta:
    """``"7d"``, ``"12h"``, ``"30m"``, ``"45s"``, ``"2w"`` -> timedelta (argparse type)."""
    match = _DURATION.match(text)
    if not match:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (use e.g. 7d, 12h, 30m)")
    value = timedelta(**{_UNITS[match.group(2)]: float(match.group(1))})
    if value <= timedelta(0):
        raise argparse.ArgumentTypeError(f"duration must be positive, got {text!r}")
    return value


def register(subparsers: Any) -> None:
    """Add ``train`` to the ``freshrank`` command."""
    parser = subparsers.add_parser(
        "train",
        help="train the base ranker now, or retrain on a schedule and on triggers (--every)",
        description=(
            "Train, gate, register and promote a base version (warm-started from the champion). "
            "With --every, check the triggers (schedule, performance drop, drift, new data) every "
            "--check-every and train when one fires."
        ),
    )
    add_train_arguments(parser)
    parser.set_defaults(func=run_train)


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``freshrank train`` and ``python -m base_model.train``."""
    data = parser.add_argument_group("data")
    data.add_argument(
        "--training-set",
        type=Path,
        help="Parquet file/dir in the training-set shape (default: build it from the "
        "workspace's event log with feature_store)",
    )
    data.add_argument(
        "--workspace",
        type=Path,
        default=DEFAULT_WORKSPACE,
        help="freshrank workspace (default .freshrank)",
    )
    data.add_argument(
        "--registry", type=Path, help="model registry root (default <workspace>/registry)"
    )
    data.add_argument(
        "--as-of",
        default="now",
        help="training time: ISO-8601, 'now' (default: the start of the current UTC hour) or "
        "'data-end' (the newest event, rounded up to the hour; for replays)",
    )
    model = parser.add_argument_group("model and cluster")
    model.add_argument(
        "--config", type=Path, help="TOML file; its [base_model] section is the config"
    )
    model.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a BaseModelConfig field over --config (JSON value), e.g. epochs=2; repeatable",
    )
    model.add_argument("--num-workers", type=int, help="Ray Train workers (config num_workers)")
    model.add_argument("--use-gpu", choices=("auto", "true", "false"), help="config use_gpu")
    model.add_argument(
        "--parent",
        default="champion",
        help="warm-start source: 'champion' (default), 'none' (cold) or a version",
    )
    model.add_argument(
        "--no-promote", action="store_true", help="register and gate, but do not promote"
    )
    model.add_argument(
        "--address", help="Ray cluster to join (default $RAY_ADDRESS, else a local one)"
    )
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


def run_train(args: argparse.Namespace) -> int:
    """Run ``freshrank train`` (or ``python -m base_model.train``); one JSON line per training."""
    from base_model.errors import BaseModelError, DataGateError
    from protos.registry import ModelRegistry

    try:
        cfg = _config(args)
        registry = ModelRegistry(args.registry or args.workspace / "registry")
    except (BaseModelError, ValueError, OSError) as exc:
        print(f"freshrank train: {exc}")
        return 2
    if args.every is None:
        try:
            result = _train_once(args, cfg, registry, trigger=None)
        except DataGateError as exc:
            print(
                json.dumps(
                    {"status": "blocked", "reason": str(exc), "gates": exc.report}, default=str
                )
            )
            return 3
        except (BaseModelError, ValueError) as exc:  # every input error is a ValueError
            print(f"freshrank train: {exc}")
            return 2
        print(json.dumps(result.to_dict(), default=str))
        return 0
    return _loop(args, cfg, registry)


def _loop(args: argparse.Namespace, cfg: Any, registry: Any) -> int:
    from base_model.data import validate_training_set
    from base_model.errors import BaseModelError, DataGateError
    from base_model.triggers import check_triggers

    log_path = Path(registry.root) / "base-train-log.jsonl"
    checks = 0
    while True:
        record: dict[str, Any] = {}
        try:
            table = validate_training_set(_training_set(args, cfg))
            now = _as_of(args.as_of, table)
            decision = check_triggers(cfg, registry, table, now, args.every)
            record = {
                "checked_at": datetime.now(UTC).isoformat(),
                "as_of": now.isoformat(),
                "decision": decision.to_dict(),
            }
            if decision.train:
                print(f"training: {decision.summary()}")
                result = _train_once(args, cfg, registry, trigger=decision, table=table, as_of=now)
                record["outcome"] = result.to_dict()
                print(json.dumps(record["outcome"], default=str))
            else:
                record["outcome"] = {"status": "not triggered"}
        except DataGateError as exc:
            record["outcome"] = {"status": "blocked", "reason": str(exc)}
            print(f"blocked: {exc}")
        except (BaseModelError, ValueError) as exc:
            record["outcome"] = {"status": "error", "reason": str(exc)}
            print(f"error: {exc}")
        _append(log_path, record)
        checks += 1
        if args.max_checks and checks >= args.max_checks:
            return 0
        time.sleep(args.check_every.total_seconds())


def _train_once(
    args: argparse.Namespace,
    cfg: Any,
    registry: Any,
    trigger: Any,
    table: Any = None,
    as_of: datetime | None = None,
) -> Any:
    from base_model.train import train_base_model

    table = table if table is not None else _training_set(args, cfg)
    parent = {"champion": "champion", "none": None}.get(args.parent, args.parent)
    return train_base_model(
        cfg,
        table,
        registry,
        parent=parent,
        as_of=as_of or _as_of(args.as_of, table),
        trigger=trigger,
        promote=not args.no_promote,
        address=args.address,
        backend=args.backend,
    )


def _config(args: argparse.Namespace) -> Any:
    import tomllib

    from base_model.config import BaseModelConfig
    from base_model.errors import ConfigError

    values: dict[str, Any] = {}
    if args.config:
        with open(args.config, "rb") as f:
            values = dict(tomllib.load(f).get("base_model", {}))
    for item in args.overrides:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ConfigError(f"--set needs KEY=VALUE, got {item!r}")
        try:
            values[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            values[key.strip()] = raw
    if args.num_workers is not None:
        values["num_workers"] = args.num_workers
    if args.use_gpu is not None:
        values["use_gpu"] = args.use_gpu if args.use_gpu == "auto" else args.use_gpu == "true"
    return BaseModelConfig.from_dict(values)


def _training_set(args: argparse.Namespace, cfg: Any) -> Any:
    from base_model.data import load_training_set

    if args.training_set is not None:
        return load_training_set(args.training_set)
    return _from_workspace(args.workspace, args.as_of, cfg)


def _from_workspace(workspace: Path, as_of: str, cfg: Any) -> Any:
    """The training set built from the workspace's event log through feature_store: the
    events of the last ``train_days + 2`` days before ``as_of`` with point-in-time features."""
    from base_model.errors import TrainingDataError

    try:
        from feature_store.config import FeatureStoreConfig
        from feature_store.event_log import list_event_hours, read_event_log
        from feature_store.training_set import build_training_set
    except ImportError as exc:
        raise TrainingDataError(
            f"cannot build a training set from {workspace} ({exc}); "
            "pass --training-set PATH.parquet"
        ) from exc
    fs = FeatureStoreConfig(workspace=workspace)
    hours = list_event_hours(fs.events_dir) if fs.events_dir.is_dir() else []
    if not hours:
        raise TrainingDataError(
            f"{fs.events_dir} has no event log; import events first or pass --training-set"
        )
    end = hours[-1] + timedelta(hours=1) if as_of == "data-end" else _parse_time(as_of)
    start = end - timedelta(days=cfg.train_days + 2)
    return build_training_set(fs, read_event_log(fs.events_dir, start=start, end=end))


def _as_of(value: str, table: Any) -> datetime:
    from base_model.errors import TrainingDataError

    if value == "data-end":
        import pyarrow.compute as pc

        newest = pc.max(table.column("ts")).as_py()
        if newest is None:
            raise TrainingDataError("the training set is empty: no data-end")
        newest = newest if newest.tzinfo else newest.replace(tzinfo=UTC)
        floor = newest.replace(minute=0, second=0, microsecond=0)
        return floor + timedelta(hours=1)
    return _parse_time(value)


def _parse_time(value: str) -> datetime:
    """``now`` (the start of the current UTC hour) or an ISO-8601 time (naive = UTC)."""
    from base_model.errors import TrainingDataError

    if value == "now":
        from base_model.train import current_hour

        return current_hour()
    try:
        moment = datetime.fromisoformat(value)
    except ValueError as exc:
        raise TrainingDataError(
            f"--as-of must be ISO-8601, 'now' or 'data-end', got {value!r}"
        ) from exc
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _append(path: Path, record: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record, default=str) + "\n")
