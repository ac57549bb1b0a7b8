"""The PyTorch ranker: named parts (sparse, dense, interaction, over), as in TorchRec's DLRM.

::

    user id ──▶ user_emb (U+B, D) ──────────────▶ u ─┐             ┌─▶ <u, i>            ─┐
    item id ──▶ item_emb (I+B, D) ─┐                 ├─▶ u, i, u*i ┤                      ├─▶ logit
    category ─▶ cat_emb  (C+1, D) ─┴─(+)─────────▶ i ─┘             ├─▶ MLP([u,i,u*i,x]) ─┤
    raw features (F,) ─▶ transform ─▶ standardise ─▶ x ─────────────┘                      │
    user_bias, item_bias, cat_bias (per row) ──────────────────────────────────────────────┘

The item vector ``i`` is the item's row plus its category's row: a brand-new item (its id
unseen, scored through a hashed row) still carries its category, so a user's long-term taste
for a category (``<u, c>``) reaches items born after training. ``i`` is also the item
embedding the online layer receives.

The dense transform lives inside the model (and the artifact) so serving passes raw counts,
CTRs and ages: counts and ages go through ``log1p``, click rates through a clipped logit
(``logit(ctr)`` is on the scale the model's output lives on); then each column is
standardised with the training window's mean and std (inherited, not recomputed, on a warm
start, so the MLP's inputs keep their meaning) and clipped to ``±DENSE_CLIP`` standard
deviations (a value far outside the training range, e.g. a viral burst, cannot drive the
ReLU MLP to an absurd logit). A missing value (NaN, inf) becomes the training mean (0 after
standardising), not a raw 0, which for a click rate would mean "never clicked".
``artifact.BaseScorer`` re-implements ``forward`` in NumPy for serving; a test keeps the two
equal.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from protos.settings_io import from_section

__all__ = [
    "DENSE_CLIP",
    "ModelSpec",
    "Ranker",
    "cold_state",
    "dense_kinds",
    "dense_stats",
    "state_from_numpy",
    "state_to_numpy",
    "transform_dense_numpy",
]

LOG1P, RATE, LOGIT = 0, 1, 2
DENSE_CLIP = 8.0
RATE_EPS = 1e-4  # logit(ctr) is taken of ctr clipped to [RATE_EPS, 1 - RATE_EPS]
# A feature (nearly) constant over the training window gets at least this std, so a value
# that moves at serving time is not divided by ~0. Per transform: log-counts, rates, logits.
MIN_STD = {LOG1P: 0.05, RATE: 0.005, LOGIT: 0.05}


def dense_kinds(feature_names: Sequence[str]) -> tuple[int, ...]:
    """Transform per feature: ``LOGIT`` for click rates (``*_ctr_*``), ``LOG1P`` otherwise."""
    return tuple(LOGIT if "_ctr" in name else LOG1P for name in feature_names)


def transform_dense_numpy(raw: np.ndarray, kinds: np.ndarray) -> np.ndarray:
    """The fixed part of the dense transform, (N, F) float32 -> (N, F) float32 (NumPy).

    Missing values (NaN, inf) stay NaN here; standardising maps them to 0 (the mean).
    """
    x = raw.astype(np.float32, copy=True)
    x[~np.isfinite(x)] = np.nan
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.log1p(np.maximum(x, 0.0))
        rate = kinds == RATE
        out[:, rate] = np.clip(x[:, rate], 0.0, 1.0)
        logit = kinds == LOGIT
        p = np.clip(x[:, logit], RATE_EPS, 1.0 - RATE_EPS)
        out[:, logit] = np.log(p) - np.log1p(-p)
    return out.astype(np.float32, copy=False)


def dense_stats(raw: np.ndarray, kinds: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std (floored by ``MIN_STD``) of the transformed features, missing values left
    out: the standardisation a cold start trains with."""
    kinds_a = np.asarray(kinds, dtype=np.int64)
    x = transform_dense_numpy(raw, kinds_a).astype(np.float64)
    with np.errstate(invalid="ignore"):
        present = np.isfinite(x)
        count = present.sum(axis=0)
        filled = np.where(present, x, 0.0)
        mean = filled.sum(axis=0) / np.maximum(count, 1)
        var = (np.where(present, x - mean, 0.0) ** 2).sum(axis=0) / np.maximum(count, 1)
    floor = np.asarray([MIN_STD[int(k)] for k in kinds_a], dtype=np.float64)
    return mean.astype(np.float32), np.maximum(np.sqrt(var), floor).astype(np.float32)


@dataclass(frozen=True)
class ModelSpec:
    """Shapes of one model: what the manifest records and what rebuilds it.

    ``category_buckets`` hashed category rows plus row 0 (unknown category); 0 for artifacts
    written before categories existed (their category table is one zero row).
    """

    user_rows: int
    item_rows: int
    n_user_features: int
    n_item_features: int
    embedding_dim: int
    hidden_layers: tuple[int, ...]
    dense_kinds: tuple[int, ...]
    category_buckets: int = 0

    @property
    def n_dense(self) -> int:
        return self.n_user_features + self.n_item_features

    @property
    def category_rows(self) -> int:
        return self.category_buckets + 1

    def to_dict(self) -> dict:
        out = asdict(self)
        out["hidden_layers"] = list(self.hidden_layers)
        out["dense_kinds"] = list(self.dense_kinds)
        return out

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> ModelSpec:
        """Rebuild from ``to_dict`` (an artifact's manifest ``spec``); unknown keys are errors."""
        return from_section(cls, values, "spec")


class Ranker(nn.Module):
    """Scores (user, item, category, features) rows; see the module docstring for the picture."""

    # Buffers (registered in ``__init__``), declared for the type checker.
    dense_kind: torch.Tensor
    dense_mean: torch.Tensor
    dense_std: torch.Tensor

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        if len(spec.dense_kinds) != spec.n_dense:
            raise ValueError(
                f"dense_kinds has {len(spec.dense_kinds)} entries, expected {spec.n_dense}"
            )
        self.spec = spec
        d = spec.embedding_dim
        self.user_emb = nn.Embedding(spec.user_rows, d)
        self.item_emb = nn.Embedding(spec.item_rows, d)
        self.cat_emb = nn.Embedding(spec.category_rows, d)
        self.user_bias = nn.Embedding(spec.user_rows, 1)
        self.item_bias = nn.Embedding(spec.item_rows, 1)
        self.cat_bias = nn.Embedding(spec.category_rows, 1)
        self.register_buffer("dense_kind", torch.tensor(spec.dense_kinds, dtype=torch.int64))
        self.register_buffer("dense_mean", torch.zeros(spec.n_dense))
        self.register_buffer("dense_std", torch.ones(spec.n_dense))
        layers: list[nn.Module] = []
        width = 3 * d + spec.n_dense
        for hidden in spec.hidden_layers:
            layers += [nn.Linear(width, hidden), nn.ReLU()]
            width = hidden
        layers.append(nn.Linear(width, 1))
        self.mlp = nn.Sequential(*layers)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Small embeddings (scores start near the MLP's output), zero biases."""
        for table in (self.user_emb, self.item_emb, self.cat_emb):
            nn.init.normal_(table.weight, std=0.05)
        for table in (self.user_bias, self.item_bias, self.cat_bias):
            nn.init.zeros_(table.weight)

    def transform(self, raw: torch.Tensor) -> torch.Tensor:
        """(B, F) raw features -> (B, F) model inputs (see the module docstring)."""
        missing = ~torch.isfinite(raw)
        x = torch.where(missing, torch.zeros_like(raw), raw)
        logit_p = x.clamp(RATE_EPS, 1.0 - RATE_EPS)
        kind = self.dense_kind
        x = torch.where(
            kind == LOGIT,
            torch.log(logit_p) - torch.log1p(-logit_p),
            torch.where(kind == RATE, x.clamp(0.0, 1.0), torch.log1p(x.clamp_min(0.0))),
        )
        z = ((x - self.dense_mean) / self.dense_std).clamp(-DENSE_CLIP, DENSE_CLIP)
        return torch.where(missing, torch.zeros_like(z), z)

    def forward(
        self,
        user: torch.Tensor,
        item: torch.Tensor,
        dense: torch.Tensor,
        category: torch.Tensor | None = None,
        with_penalty: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """(B,) user rows, (B,) item rows, (B, F) raw features, (B,) category rows (None: all
        unknown) -> (B,) logits; with ``with_penalty`` also the mean over the batch of the
        squared norms of the embedding and bias rows it used (the L2 term of the loss)."""
        if category is None:
            category = torch.zeros_like(item)
        u = self.user_emb(user)  # (B, D)
        i_id = self.item_emb(item)  # (B, D)
        c = self.cat_emb(category)  # (B, D)
        i = i_id + c  # (B, D)
        x = self.transform(dense)  # (B, F)
        ui = u * i  # (B, D)
        over = self.mlp(torch.cat([u, i, ui, x], dim=1)).squeeze(1)  # (B,)
        bu, bi, bc = (
            self.user_bias(user).squeeze(1),
            self.item_bias(item).squeeze(1),
            self.cat_bias(category).squeeze(1),
        )
        logits = over + bu + bi + bc + ui.sum(dim=1)
        if not with_penalty:
            return logits
        penalty = (
            u.pow(2).sum(1) + i_id.pow(2).sum(1) + c.pow(2).sum(1) + bu**2 + bi**2 + bc**2
        ).mean()
        return logits, penalty

    def item_vectors(
        self, item: torch.Tensor, category: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(B,) item rows (and category rows) -> (B, D): the item embedding serving hands on."""
        if category is None:
            category = torch.zeros_like(item)
        return self.item_emb(item) + self.cat_emb(category)

    def set_dense_stats(self, mean: np.ndarray, std: np.ndarray) -> None:
        """Standardisation of the transformed features (from the training window)."""
        self.dense_mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
        self.dense_std.copy_(torch.as_tensor(np.maximum(std, 1e-3), dtype=torch.float32))

    def set_output_bias(self, label_rate: float) -> None:
        """Start the output at ``logit(label_rate)``: the first prediction is the click rate,
        not 0.5, so early steps learn structure instead of calibration (and rare-click data
        does not start a factor of 100 off)."""
        p = min(max(float(label_rate), 1e-6), 1.0 - 1e-6)
        with torch.no_grad():
            cast(nn.Linear, self.mlp[-1]).bias.fill_(math.log(p) - math.log1p(-p))


def state_to_numpy(model: nn.Module) -> dict[str, np.ndarray]:
    """A model's state as NumPy arrays on the CPU (what the artifact and Ray carry)."""
    return {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}


def state_from_numpy(model: nn.Module, state: Mapping[str, np.ndarray]) -> None:
    """Load NumPy arrays into ``model`` (strict: names and shapes must match)."""
    model.load_state_dict(
        {k: torch.from_numpy(np.array(v, copy=True)) for k, v in state.items()}, strict=True
    )


def cold_state(
    spec: ModelSpec,
    seed: int,
    mean: np.ndarray,
    std: np.ndarray,
    label_rate: float | None = None,
) -> dict[str, np.ndarray]:
    """Freshly initialised weights, the same for the same seed on any machine; the output
    bias starts at ``logit(label_rate)`` when it is given."""
    generator_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = Ranker(spec)
    finally:
        torch.random.set_rng_state(generator_state)
    model.set_dense_stats(mean, std)
    if label_rate is not None:
        model.set_output_bias(label_rate)
    return state_to_numpy(model)
