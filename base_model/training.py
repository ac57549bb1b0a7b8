"""One base version: data gates, start point, fit, artifact, evaluation gate, registry.

``train_base_model(cfg, training_set, registry, ...)`` is the library entry point:
``freshrank train``, the demo and the backtest call it in-process. Where the fit starts is
``base_model.warm``, what the version records is ``base_model.lineage``, and the Ray job
entry point (``python -m base_model.train``) is ``base_model/train.py``.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pyarrow as pa

from base_model import gates
from base_model.artifact import BaseScorer, write_artifact
from base_model.config import BaseModelConfig
from base_model.data import (
    Encoded,
    TimeWindows,
    encode,
    load_training_set,
    split_by_time,
    validate_training_set,
    windows_for,
)
from base_model.errors import DataGateError
from base_model.lineage import lineage_record, manifest_record, trigger_record
from protos.registry import ModelRegistry, ModelVersion
from base_model.triggers import TriggerDecision
from base_model.warm import StartPoint, start_point
from feature_store.catalog import FEATURE_SERVICE_NAME
from protos.timeparse import floor_hour

if TYPE_CHECKING:
    from base_model.fit_types import FitOutcome

logger = logging.getLogger(__name__)

__all__ = ["TrainResult", "current_hour", "train_base_model"]

TIER = "base"
Parent = str | None | Literal["champion"]


@dataclass(frozen=True)
class TrainResult:
    """What one training produced and what the gates decided."""

    version: str
    status: str  # "approved", "rejected", or "registered" (not evaluated: no validation rows)
    promoted: bool
    path: Path
    parent: str | None
    champion_before: str | None
    windows: TimeWindows
    metrics: Mapping[str, Any]
    gate_results: Mapping[str, Any]
    curve: tuple[Mapping[str, float], ...]
    warm_start: Mapping[str, Any]
    trigger: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "status": self.status,
            "promoted": self.promoted,
            "path": str(self.path),
            "parent": self.parent,
            "champion_before": self.champion_before,
            "data_window": self.windows.to_dict(),
            "metrics": dict(self.metrics),
            "gates": {
                k: {"passed": v["passed"], "reason": v["reason"]}
                for k, v in self.gate_results.items()
            },
            "warm_start": dict(self.warm_start),
            "trigger": dict(self.trigger),
        }


def train_base_model(
    cfg: BaseModelConfig,
    training_set: pa.Table | str | Path,
    registry: ModelRegistry | str | Path,
    *,
    parent: Parent = "champion",
    as_of: datetime | None = None,
    trigger: TriggerDecision | Mapping[str, Any] | None = None,
    promote: bool = True,
    address: str | None = None,
    backend: Literal["ray", "local"] = "ray",
    feature_service: str = FEATURE_SERVICE_NAME,
    history: np.ndarray | None = None,
) -> TrainResult:
    """Train, gate, register and (if the gates pass) promote one base version.

    Parameters
    ----------
    training_set
        A table or Parquet path in the training-set shape (``base_model.data``).
    registry
        Where versions go (tier ``"base"``).
    parent
        ``"champion"`` (default): warm-start from the current champion if there is one;
        a version name: from that version; None: cold start.
    as_of
        Training time ("now"): the day before it validates, the ``cfg.train_days`` before
        that train, and freshness is judged against it. Default: the start of the current
        UTC hour (the hour still being written is left out).
    trigger
        Why this training runs (recorded in the lineage); default "manual".
    backend
        ``"ray"``: a Ray Train ``TorchTrainer`` fit (joins ``address``/``$RAY_ADDRESS`` or
        starts a loopback cluster). ``"local"``: the same loop in this process, no Ray.
    history
        Event times (datetime64[us], UTC) from before the training set's rows, known to the
        caller (its event log): the completeness gates' reference for what a day and an hour
        of this log usually hold (``base_model.seasonal``). Never trained on. Without it the
        gates have only the training set's own days.

    Raises
    ------
    DataGateError
        A data gate failed; nothing is registered.
    """
    if backend not in ("ray", "local"):
        raise ValueError(f"backend must be 'ray' or 'local', got {backend!r}")
    reg = registry if isinstance(registry, ModelRegistry) else ModelRegistry(registry)
    as_of = (as_of or current_hour()).astimezone(UTC)
    trigger_info = trigger_record(trigger, as_of)
    table = validate_training_set(load_training_set(training_set))
    windows = windows_for(as_of, cfg.train_days)
    event_ts = _ts(table)
    if history is not None and len(history):
        event_ts = np.concatenate([np.asarray(history, dtype="datetime64[us]"), event_ts])
    data_results = gates.check_data(event_ts, windows, as_of, cfg)
    failed = [r for r in data_results if not r.passed]
    if failed:
        reasons = "; ".join(f"{r.name}: {r.reason}" for r in failed)
        raise DataGateError(
            f"training blocked by data gates: {reasons}", gates.summarize(data_results)
        )
    train_t, valid_t = split_by_time(table, windows)
    champion = reg.champion(TIER)
    start = start_point(cfg, _resolve_parent(reg, parent, cfg), train_t, feature_service)
    buckets = start.spec.category_buckets
    train_enc = encode(train_t, start.users, start.items, cfg.oov_dropout, cfg.seed, buckets)
    train_enc = train_enc.permuted(cfg.seed)
    valid_enc = encode(valid_t, start.users, start.items, category_buckets=buckets)
    init_state = start.init_state(train_enc)
    if len(valid_enc) == 0:
        logger.warning(
            "no validation rows: training all %d epochs with no early stopping and no best "
            "point (set epochs to what a validated fit stops at: 2-3 on drifting logs)",
            start.settings.epochs,
        )
    logger.info(
        "training (%s start) on %d rows, validating on %d, lr %g for %d epochs, backend %s",
        "warm" if start.warm_info["warm"] else "cold",
        len(train_enc),
        len(valid_enc),
        start.settings.learning_rate,
        start.settings.epochs,
        backend,
    )
    t0 = time.perf_counter()
    outcome = _fit(cfg, start, init_state, train_enc, valid_enc, backend, address, as_of)
    metrics = {
        **outcome.metrics(),
        "fit_seconds": round(time.perf_counter() - t0, 3),
        "train_rows": len(train_enc),
        "valid_rows": len(valid_enc),
        "label_rate": float(train_enc.label.mean()),
        "backend": backend,
    }
    if metrics["best"] is not None:
        logger.info(
            "exporting the best validation point: epoch %s, step %s, val log loss %.5f "
            "(last: %s)",
            metrics["best"]["epoch"],
            metrics["best"]["step"],
            metrics["best"]["val_logloss"],
            metrics["last_val_logloss"],
        )
    lineage = lineage_record(
        windows=windows,
        feature_service=feature_service,
        start=start,
        metrics=metrics,
        trigger=trigger_info,
        champion=champion.version if champion else None,
    )
    manifest = manifest_record(lineage, cfg=cfg, start=start, train=train_enc, curve=outcome.curve)
    with tempfile.TemporaryDirectory(prefix="freshrank-artifact-") as tmp:
        users, items = start.users.ids.tolist(), start.items.ids.tolist()
        write_artifact(tmp, manifest, outcome.state, users, items)
        eval_result = _evaluate(cfg, BaseScorer.load(tmp), champion, valid_t, metrics["label_rate"])
        version = reg.register(TIER, tmp, lineage)

    gate_results = {**gates.summarize(data_results), **gates.summarize([eval_result])}
    if eval_result.details.get("evaluated") is False:
        status = "registered"  # nothing to judge it on: neither approved nor rejected
    else:
        status = "approved" if eval_result.passed else "rejected"
    reg.set_status(TIER, version, status, gate_results, reason=eval_result.reason)
    promoted = False
    if status == "registered":
        logger.warning("%s not evaluated: %s", version, eval_result.reason)
    if status == "approved" and promote:
        summary = trigger_info.get("summary", "")
        reg.promote(TIER, version, reason=f"gates passed ({summary}); {eval_result.reason}")
        promoted = True
    elif status == "rejected":
        logger.warning("%s rejected: %s", version, eval_result.reason)
    return TrainResult(
        version=version,
        status=status,
        promoted=promoted,
        path=reg.get(TIER, version).path,
        parent=start.parent,
        champion_before=champion.version if champion else None,
        windows=windows,
        metrics=metrics,
        gate_results=gate_results,
        curve=tuple(outcome.curve),
        warm_start=start.warm_info,
        trigger=trigger_info,
    )


def current_hour() -> datetime:
    """The start of the current UTC hour: "now" for training, whole hours only."""
    return floor_hour(datetime.now(UTC))


def _fit(
    cfg: BaseModelConfig,
    start: StartPoint,
    init_state: dict[str, np.ndarray],
    train: Encoded,
    valid: Encoded,
    backend: str,
    address: str | None,
    as_of: datetime,
) -> FitOutcome:
    if backend == "local":
        from base_model.loop import bare_loop

        return bare_loop(
            start.spec,
            init_state,
            start.settings,
            train.arrays(),
            valid.arrays() if len(valid) else None,
        )
    from base_model.trainer import fit_with_ray

    name = f"freshrank-base-{as_of:%Y%m%dT%H%M%S}-{int(time.time())}"
    fit = fit_with_ray(cfg, start.spec, init_state, start.settings, train, valid, name, address)
    return fit.outcome


def _not_evaluated(valid_rows: int) -> gates.GateResult:
    return gates.GateResult(
        "offline_evaluation",
        False,
        f"not evaluated: the validation day holds {valid_rows} rows (min_valid_rows = 0 let "
        "the fit run without validation); registered, not approved: promote by hand if you "
        "trust it",
        {"evaluated": False, "rows": valid_rows},
    )


def _evaluate(
    cfg: BaseModelConfig,
    candidate: BaseScorer,
    champion: ModelVersion | None,
    valid: pa.Table,
    label_rate: float,
) -> gates.GateResult:
    if valid.num_rows == 0:
        return _not_evaluated(0)
    enc = encode(
        valid, candidate.users, candidate.items, category_buckets=candidate.category_buckets
    )
    p_cand = candidate.predict_proba_rows(enc.user, enc.item, enc.dense, enc.category)
    users = valid.column("user_id").to_numpy(zero_copy_only=False)
    if champion is None:
        p_ref = np.full_like(p_cand, min(max(label_rate, 1e-4), 1 - 1e-4))
        return gates.evaluation_gate(
            p_cand,
            p_ref,
            enc.label,
            users,
            cfg,
            "the training click rate (no champion yet)",
            cfg.min_gain_vs_constant,
        )
    ref = BaseScorer.load(champion.path)
    ref_enc = encode(valid, ref.users, ref.items, category_buckets=ref.category_buckets)
    p_ref = ref.predict_proba_rows(ref_enc.user, ref_enc.item, ref_enc.dense, ref_enc.category)
    return gates.evaluation_gate(
        p_cand,
        p_ref,
        enc.label,
        users,
        cfg,
        f"champion {champion.version}",
        cfg.min_gain_vs_champion,
    )


def _resolve_parent(
    reg: ModelRegistry, parent: Parent, cfg: BaseModelConfig
) -> ModelVersion | None:
    if not cfg.warm_start or parent is None:
        return None
    if parent == "champion":
        return reg.champion(TIER)
    return reg.get(TIER, parent)


def _ts(table: pa.Table) -> np.ndarray:
    return table.column("ts").cast(pa.timestamp("us")).to_numpy().astype("datetime64[us]")
