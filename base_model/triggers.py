"""When to retrain the base ranker, and why: schedule, performance drop, drift, new data.

Each check is judged against the current champion's manifest (its data window, training
rows, validation log loss, feature histograms and vocabularies), so it needs only recent
rows of the training-set shape. The decision keeps every check, fired or not; the fired ones
become the ``trigger`` of the new version's lineage.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pyarrow as pa

from base_model.artifact import BaseScorer
from base_model.config import BaseModelConfig
from base_model.data import TimeWindows, encode, feature_names, split_by_time
from base_model.drift import psi
from protos.metrics import log_loss
from protos.registry import ModelRegistry

logger = logging.getLogger(__name__)

__all__ = ["TriggerCheck", "TriggerDecision", "check_triggers", "manual_trigger"]

KINDS = ("manual", "no_champion", "schedule", "performance_drop", "drift", "new_data")


@dataclass(frozen=True)
class TriggerCheck:
    """One reason to retrain, fired or not, with the number and the threshold behind it."""

    kind: str
    fired: bool
    detail: str
    value: float | None = None
    threshold: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class TriggerDecision:
    """All checks of one evaluation; ``train`` if any fired."""

    at: str
    checks: tuple[TriggerCheck, ...]

    @property
    def train(self) -> bool:
        return any(c.fired for c in self.checks)

    @property
    def reasons(self) -> tuple[TriggerCheck, ...]:
        return tuple(c for c in self.checks if c.fired)

    def summary(self) -> str:
        fired = self.reasons
        return "; ".join(f"{c.kind}: {c.detail}" for c in fired) if fired else "no trigger fired"

    def to_dict(self) -> dict[str, Any]:
        return {
            "at": self.at,
            "train": self.train,
            "reasons": [c.kind for c in self.reasons],
            "summary": self.summary(),
            "checks": [c.to_dict() for c in self.checks],
        }


def manual_trigger(now: datetime, detail: str = "requested by hand") -> TriggerDecision:
    """The decision recorded for a one-off ``freshrank train``."""
    return TriggerDecision(now.astimezone(UTC).isoformat(), (TriggerCheck("manual", True, detail),))


def check_triggers(
    cfg: BaseModelConfig,
    registry: ModelRegistry,
    recent: pa.Table,
    now: datetime,
    every: timedelta | None = None,
) -> TriggerDecision:
    """Judge every trigger for ``now`` from validated rows (``data.validate_training_set``)."""
    at = now.astimezone(UTC).isoformat()
    champion = registry.champion("base")
    if champion is None:
        return TriggerDecision(at, (TriggerCheck("no_champion", True, "no base champion yet"),))
    scorer = BaseScorer.load(champion.path)
    manifest = scorer.manifest
    every = every or timedelta(days=cfg.retrain_every_days)
    window = manifest["data_window"]
    trained_until = datetime.fromisoformat(window["valid_end"])
    checks = [_schedule(champion.version, trained_until, now, every)]
    checks.append(_new_data(recent, trained_until, now, int(manifest["train_rows"]), cfg))
    last_day, _ = split_by_time(recent, TimeWindows(now - timedelta(days=1), now, now))
    checks.append(_performance(scorer, last_day, manifest, cfg))
    checks.extend(_drift(scorer, last_day, manifest, cfg))
    decision = TriggerDecision(at, tuple(checks))
    logger.info("trigger check at %s: %s", at, decision.summary())
    return decision


def _schedule(
    version: str, trained_until: datetime, now: datetime, every: timedelta
) -> TriggerCheck:
    age = now - trained_until
    days = age / timedelta(days=1)
    return TriggerCheck(
        "schedule",
        age >= every,
        f"{version}'s data ends {trained_until.isoformat()}, {days:.2f} days before now "
        f"(every {every / timedelta(days=1):g} days)",
        round(days, 4),
        every / timedelta(days=1),
    )


def _new_data(
    recent: pa.Table, since: datetime, now: datetime, train_rows: int, cfg: BaseModelConfig
) -> TriggerCheck:
    new, _ = split_by_time(recent, TimeWindows(since, now, now))
    threshold = cfg.new_data_fraction * train_rows
    return TriggerCheck(
        "new_data",
        new.num_rows >= threshold,
        f"{new.num_rows} rows since {since.isoformat()}, the champion trained on {train_rows} "
        f"(fires at {cfg.new_data_fraction:g}x)",
        float(new.num_rows),
        float(threshold),
    )


def _performance(
    scorer: BaseScorer, rows: pa.Table, manifest: dict, cfg: BaseModelConfig
) -> TriggerCheck:
    base = (manifest.get("metrics") or {}).get("val_logloss")
    if rows.num_rows == 0 or base is None:
        return TriggerCheck("performance_drop", False, "no labelled rows in the last day to judge")
    enc = encode(rows, scorer.users, scorer.items, category_buckets=scorer.category_buckets)
    p = scorer.predict_proba_rows(enc.user, enc.item, enc.dense, enc.category)
    recent = log_loss(enc.label, p)
    rise = (recent - base) / max(base, 1e-9)
    return TriggerCheck(
        "performance_drop",
        rise > cfg.perf_drop_threshold,
        f"champion log loss {recent:.4f} over the last day vs {base:.4f} at validation "
        f"({rise:+.1%}, fires above {cfg.perf_drop_threshold:+.0%})",
        round(rise, 6),
        cfg.perf_drop_threshold,
    )


def _drift(
    scorer: BaseScorer, rows: pa.Table, manifest: dict, cfg: BaseModelConfig
) -> list[TriggerCheck]:
    if rows.num_rows == 0:
        return [TriggerCheck("drift", False, "no rows in the last day to judge")]
    names = [n for n in feature_names() if n not in cfg.drift_exclude]
    dense = np.column_stack([rows.column(n).to_numpy(zero_copy_only=False) for n in names])
    scores = psi(manifest.get("reference", {}), dense, names)
    worst = max(scores, key=lambda name: scores[name]) if scores else None
    checks = []
    if worst is not None:
        checks.append(
            TriggerCheck(
                "drift",
                scores[worst] > cfg.drift_psi_threshold,
                f"largest feature PSI {scores[worst]:.3f} ({worst}) over the last day "
                f"(fires above {cfg.drift_psi_threshold:g})",
                round(scores[worst], 6),
                cfg.drift_psi_threshold,
            )
        )
    users = rows.column("user_id").to_pylist()
    items = rows.column("item_id").to_pylist()
    unseen = np.fromiter(
        (
            (u not in scorer.users) or (i not in scorer.items)
            for u, i in zip(users, items, strict=True)
        ),
        dtype=bool,
        count=len(users),
    )
    rate = float(unseen.mean())
    checks.append(
        TriggerCheck(
            "drift",
            rate > cfg.oov_rate_threshold,
            f"{rate:.1%} of the last day's events have a user or item the champion "
            f"never saw (fires above {cfg.oov_rate_threshold:.0%})",
            round(rate, 6),
            cfg.oov_rate_threshold,
        )
    )
    return checks
