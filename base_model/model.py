"""The PyTorch ranker: named parts (sparse, dense, interaction, over), as in TorchRec's DLRM.

::

    user id ─▶ user_emb (U+B, D) ─┐                       ┌─▶ <u, i>            ─┐
    item id ─▶ item_emb (I+B, D) ─┼─▶ u, i ───────────────┤                      ├─▶ logit
    raw features (F,) ─▶ transform ─▶ standardise ─▶ x ───┴─▶ MLP([u, i, u*i, x]) ─┤
    user_bias, item_bias (per row) ──────────────────────────────────────────────┘

The dense transform lives inside the model (and the artifact) so serving passes raw counts,
CTRs and ages: counts and ages go through ``log1p``, rates are clipped to [0, 1], NaN is 0;
then each column is standardised with the training window's mean and std (inherited, not
recomputed, on a warm start, so the MLP's inputs keep their meaning).
``artifact.BaseScorer`` re-implements ``forward`` in NumPy for serving; a test keeps the two equal.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

__all__ = [
    "ModelSpec",
    "Ranker",
    "cold_state",
    "dense_kinds",
    "state_from_numpy",
    "state_to_numpy",
    "transform_dense_numpy",
]

LOG1P, RATE = 0, 1


def dense_kinds(feature_names: Sequence[str]) -> tuple[int, ...]:
    """Transform per feature: ``RATE`` for click rates (``*_ctr_*``), ``LOG1P`` otherwise."""
    return tuple(RATE if "_ctr" in name else LOG1P for name in feature_names)


def transform_dense_numpy(raw: np.ndarray, kinds: np.ndarray) -> np.ndarray:
    """The fixed part of the dense transform, (N, F) float32 -> (N, F) float32 (NumPy)."""
    x = np.nan_to_num(raw.astype(np.float32, copy=False), nan=0.0, posinf=0.0, neginf=0.0)
    rate = kinds == RATE
    out = np.log1p(np.maximum(x, 0.0))
    out[:, rate] = np.clip(x[:, rate], 0.0, 1.0)
    return out.astype(np.float32, copy=False)


@dataclass(frozen=True)
class ModelSpec:
    """Shapes of one model: what the manifest records and what rebuilds it."""

    user_rows: int
    item_rows: int
    n_user_features: int
    n_item_features: int
    embedding_dim: int
    hidden_layers: tuple[int, ...]
    dense_kinds: tuple[int, ...]

    @property
    def n_dense(self) -> int:
        return self.n_user_features + self.n_item_features

    def to_dict(self) -> dict:
        out = asdict(self)
        out["hidden_layers"] = list(self.hidden_layers)
        out["dense_kinds"] = list(self.dense_kinds)
        return out

    @classmethod
    def from_dict(cls, values: Mapping) -> ModelSpec:
        v = dict(values)
        v["hidden_layers"] = tuple(v["hidden_layers"])
        v["dense_kinds"] = tuple(v["dense_kinds"])
        return cls(**v)


class Ranker(nn.Module):
    """Scores (user, item, features) rows; see the module docstring for the picture."""

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
        self.user_bias = nn.Embedding(spec.user_rows, 1)
        self.item_bias = nn.Embedding(spec.item_rows, 1)
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
        nn.init.normal_(self.user_emb.weight, std=0.05)
        nn.init.normal_(self.item_emb.weight, std=0.05)
        nn.init.zeros_(self.user_bias.weight)
        nn.init.zeros_(self.item_bias.weight)

    def transform(self, raw: torch.Tensor) -> torch.Tensor:
        """(B, F) raw features -> (B, F) model inputs."""
        x = torch.nan_to_num(raw, nan=0.0, posinf=0.0, neginf=0.0)
        x = torch.where(self.dense_kind == RATE, x.clamp(0.0, 1.0), torch.log1p(x.clamp_min(0.0)))
        return (x - self.dense_mean) / self.dense_std

    def forward(self, user: torch.Tensor, item: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        """(B,) user rows, (B,) item rows, (B, F) raw features -> (B,) logits."""
        u = self.user_emb(user)  # (B, D)
        i = self.item_emb(item)  # (B, D)
        x = self.transform(dense)  # (B, F)
        over = self.mlp(torch.cat([u, i, u * i, x], dim=1)).squeeze(1)  # (B,)
        bias = self.user_bias(user).squeeze(1) + self.item_bias(item).squeeze(1)
        return over + bias + (u * i).sum(dim=1)

    def set_dense_stats(self, mean: np.ndarray, std: np.ndarray) -> None:
        """Standardisation of the transformed features (from the training window)."""
        self.dense_mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
        self.dense_std.copy_(torch.as_tensor(np.maximum(std, 1e-3), dtype=torch.float32))


def state_to_numpy(model: nn.Module) -> dict[str, np.ndarray]:
    """A model's state as NumPy arrays on the CPU (what the artifact and Ray carry)."""
    return {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}


def state_from_numpy(model: nn.Module, state: Mapping[str, np.ndarray]) -> None:
    """Load NumPy arrays into ``model`` (strict: names and shapes must match)."""
    model.load_state_dict(
        {k: torch.from_numpy(np.array(v, copy=True)) for k, v in state.items()}, strict=True
    )


def cold_state(
    spec: ModelSpec, seed: int, mean: np.ndarray, std: np.ndarray
) -> dict[str, np.ndarray]:
    """Freshly initialised weights, the same for the same seed on any machine."""
    generator_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = Ranker(spec)
    finally:
        torch.random.set_rng_state(generator_state)
    model.set_dense_stats(mean, std)
    return state_to_numpy(model)
