"""One base version: data gates, warm start, Ray Train fit, artifact, evaluation gate, registry.

Library entry point: ``train_base_model(cfg, training_set, registry, ...)`` (the demo and the
backtest call it in-process). Ray job entry point::

    ray job submit --working-dir . -- python -m base_model.train \
        --training-set /abs/path/train.parquet --registry /abs/path/registry --as-of data-end

(``python -m base_model.train --help`` lists every flag; it joins the job's cluster through
``$RAY_ADDRESS``, or starts a loopback one when run by hand.)
"""

from __future__ import annotations

import hashlib
import logging
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa

from base_model import gates
from base_model.artifact import BaseScorer, read_weights, write_artifact
from base_model.config import BaseModelConfig
from base_model.data import (
    Encoded,
    TimeWindows,
    encode,
    feature_names,
    load_training_set,
    split_by_time,
    validate_training_set,
    windows_for,
)
from base_model.drift import reference_histograms
from base_model.errors import DataGateError
from protos.registry import ModelRegistry, ModelVersion
from base_model.triggers import TriggerDecision, manual_trigger
from base_model.vocab import Vocabulary, build_vocabulary
from base_model.warm import describe, incompatibility, warm_state
from feature_store.catalog import FEATURE_SERVICE_NAME, ITEM_FEATURES, USER_FEATURES

logger = logging.getLogger(__name__)

__all__ = ["TrainResult", "code_version", "current_hour", "main", "train_base_model"]

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

    Raises
    ------
    DataGateError
        A data gate failed; nothing is registered.
    """
    if backend not in ("ray", "local"):
        raise ValueError(f"backend must be 'ray' or 'local', got {backend!r}")
    reg = registry if isinstance(registry, ModelRegistry) else ModelRegistry(registry)
    as_of = (as_of or current_hour()).astimezone(UTC)
    trigger_record = _trigger_dict(trigger, as_of)
    table = validate_training_set(load_training_set(training_set))
    windows = windows_for(as_of, cfg.train_days)
    data_results = gates.check_data(_ts(table), windows, as_of, cfg)
    failed = [r for r in data_results if not r.passed]
    if failed:
        reasons = "; ".join(f"{r.name}: {r.reason}" for r in failed)
        raise DataGateError(
            f"training blocked by data gates: {reasons}", gates.summarize(data_results)
        )
    train_t, valid_t = split_by_time(table, windows)
    champion = reg.champion(TIER)
    start = _start_point(cfg, _resolve_parent(reg, parent, cfg), train_t, feature_service)
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
    lineage = {
        "data_window": windows.to_dict(),
        "feature_service": feature_service,
        "parent": start.parent,
        "code_version": code_version(),
        "metrics": metrics,
        "warm_start": start.warm_info,
        "trigger": trigger_record,
        "champion_at_training": champion.version if champion else None,
    }
    manifest = {
        **lineage,
        "user_features": list(USER_FEATURES),
        "item_features": list(ITEM_FEATURES),
        "spec": start.spec.to_dict(),
        "oov_buckets": cfg.oov_buckets,
        "category_buckets": buckets,
        "vocab_sizes": {"user": len(start.users), "item": len(start.items)},
        "train_rows": len(train_enc),
        "curve": outcome.curve,
        "config": cfg.to_dict(),
        "reference": reference_histograms(train_enc.dense, feature_names()),
    }
    with tempfile.TemporaryDirectory(prefix="freshrank-artifact-") as tmp:
        write_artifact(tmp, manifest, outcome.state, start.users.ids, start.items.ids)
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
        summary = trigger_record.get("summary", "")
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
        trigger=trigger_record,
    )


@dataclass(frozen=True)
class _StartPoint:
    """Where a fit starts: vocabularies, shapes, learning rate and epochs, and the weights
    (the parent's, grown for new ids, or fresh ones seeded by ``cfg.seed``)."""

    cfg: BaseModelConfig
    users: Vocabulary
    items: Vocabulary
    spec: Any  # model.ModelSpec (torch-free modules must not import model at import time)
    settings: Any  # loop.LoopSettings
    warm_info: dict[str, Any]
    parent: str | None
    parent_state: dict[str, np.ndarray] | None

    def init_state(self, train: Encoded) -> dict[str, np.ndarray]:
        """The parent's weights (warm), or fresh ones (cold): standardisation from the
        training window, output bias at the logit of its click rate."""
        if self.parent_state is not None:
            return self.parent_state
        from base_model.model import cold_state, dense_stats

        mean, std = dense_stats(train.dense, self.spec.dense_kinds)
        rate = float(train.label.mean()) if len(train) else 0.5
        return cold_state(self.spec, self.cfg.seed, mean, std, label_rate=rate)


def _start_point(
    cfg: BaseModelConfig, parent: ModelVersion | None, train: pa.Table, feature_service: str
) -> _StartPoint:
    from base_model.loop import LoopSettings

    scorer = BaseScorer.load(parent.path) if parent is not None else None
    skipped = None
    if scorer is not None:
        skipped = incompatibility(scorer, _spec(cfg, 0, 0), cfg.oov_buckets, feature_service)
        if skipped:
            logger.warning("cold start instead of warm from %s: %s", parent.version, skipped)
    warm = scorer is not None and skipped is None
    keep_u = scorer.users.ids.tolist() if warm else []
    keep_i = scorer.items.ids.tolist() if warm else []
    users = Vocabulary(
        build_vocabulary(train.column("user_id"), cfg.min_id_count, keep_u), cfg.oov_buckets
    )
    items = Vocabulary(
        build_vocabulary(train.column("item_id"), cfg.min_id_count, keep_i), cfg.oov_buckets
    )
    if warm:
        grown = warm_state(scorer, read_weights(parent.path), users, items)
        lr, epochs, state = cfg.learning_rate * cfg.warm_lr_factor, cfg.warm_epochs, grown.state
        patience = cfg.warm_early_stopping_patience
        info = describe(parent.version, lr, epochs, grown, None, patience)
    else:
        lr, epochs, state = cfg.learning_rate, cfg.epochs, None
        patience = cfg.early_stopping_patience
        why = skipped or ("no parent" if parent is None else None)
        info = describe(parent.version if parent else None, lr, epochs, None, why, patience)
    settings = LoopSettings(
        learning_rate=lr,
        epochs=epochs,
        batch_size=cfg.batch_size,
        weight_decay=cfg.weight_decay,
        eval_every_steps=cfg.eval_every_steps,
        seed=cfg.seed,
        prefetch_batches=cfg.prefetch_batches,
        shuffle_buffer_rows=cfg.shuffle_buffer_rows,
        cache_max_rows=cfg.cache_max_rows,
        chunk_batches=cfg.chunk_batches,
        embedding_l2=cfg.embedding_l2,
        keep_best=cfg.keep_best,
        early_stopping_patience=patience,
        threads=max(1, int(cfg.cpus_per_worker)),
    )
    return _StartPoint(
        cfg=cfg,
        users=users,
        items=items,
        spec=_spec(cfg, users.rows, items.rows),
        settings=settings,
        warm_info=info,
        parent=parent.version if warm and parent is not None else None,
        parent_state=state,
    )


def current_hour() -> datetime:
    """The start of the current UTC hour: "now" for training, whole hours only."""
    return datetime.now(UTC).replace(minute=0, second=0, microsecond=0)


def _fit(
    cfg: BaseModelConfig,
    start: _StartPoint,
    init_state: dict[str, np.ndarray],
    train: Encoded,
    valid: Encoded,
    backend: str,
    address: str | None,
    as_of: datetime,
) -> Any:
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


def _spec(cfg: BaseModelConfig, user_rows: int, item_rows: int) -> Any:
    from base_model.model import ModelSpec, dense_kinds

    return ModelSpec(
        user_rows=user_rows,
        item_rows=item_rows,
        n_user_features=len(USER_FEATURES),
        n_item_features=len(ITEM_FEATURES),
        embedding_dim=cfg.embedding_dim,
        hidden_layers=cfg.hidden_layers,
        dense_kinds=dense_kinds(feature_names()),
        category_buckets=cfg.category_buckets,
    )


def _ts(table: pa.Table) -> np.ndarray:
    return table.column("ts").cast(pa.timestamp("us")).to_numpy().astype("datetime64[us]")


def _trigger_dict(
    trigger: TriggerDecision | Mapping[str, Any] | None, as_of: datetime
) -> dict[str, Any]:
    if trigger is None:
        return manual_trigger(as_of).to_dict()
    if isinstance(trigger, TriggerDecision):
        return trigger.to_dict()
    return dict(trigger)


def code_version() -> str:
    """``git:<sha>[+dirty]`` where the source is a git checkout, plus a hash of this package's
    source (always available, also inside a Ray job's uploaded working directory)."""
    root = Path(__file__).resolve().parent
    digest = hashlib.sha256()
    for path in sorted(root.glob("*.py")):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    src = f"src:{digest.hexdigest()[:12]}"
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", str(root)],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        return f"git:{sha}{'+dirty' if dirty else ''} {src}"
    except (OSError, subprocess.SubprocessError):
        return src


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m base_model.train``: the flags of ``freshrank train`` (``base_model.cli``)."""
    import argparse

    from base_model import cli

    parser = argparse.ArgumentParser(
        prog="python -m base_model.train", description=__doc__.splitlines()[0]
    )
    parser.add_argument("-v", "--verbose", action="count", default=1, help="more logging")
    cli.add_train_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING - 10 * min(args.verbose, 2),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    return cli.run_train(args)


if __name__ == "__main__":
    sys.exit(main())
