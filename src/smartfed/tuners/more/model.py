"""Inject MoRE layers into a Hugging Face causal LM and manage routers, quotas and importance.

Only router weights (and, with ``output_scale="learnable"``, one scalar per matrix) are
trainable; they are what clients exchange. Their shapes depend only on the pool, never on the
quotas, so every client always sends tensors of one fixed shape. With ``residual_rank`` > 0 each
layer's residual LoRA (``<matrix>.residual_A`` / ``.residual_B``) trains and travels with them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from smartfed.importance.scores import get_score
from smartfed.pool import LoraPool
from smartfed.tuners.base import PoolTuner
from smartfed.tuners.more.config import MoreConfig
from smartfed.tuners.more.layer import MoreLinear

ROUTER_WEIGHTS_NAME = "routers.safetensors"
MORE_CONFIG_NAME = "more_config.json"


@dataclass
class ImportanceStats:
    """Importance measured since the last reset, one entry per matrix (``matrix_names`` order)."""

    matrix: np.ndarray  # (P,) per matrix: mean per-token score, or share of the sum (scorer)
    mean_gate: list[np.ndarray]  # P arrays (M_ℓ,) mean renormalised gate ĝ_j (0 if not selected)
    tokens: int  # real (non-padding) tokens seen per matrix


class MoreModel(PoolTuner):
    """A causal LM whose pool-adapted linear layers route among frozen rank-1 experts."""

    config_class = MoreConfig
    config_key = "more_config"
    weights_name = ROUTER_WEIGHTS_NAME
    config_name = MORE_CONFIG_NAME
    what = "MoRE routers"
    state_fields = ("router", "router_rank", "output_scale")

    config: MoreConfig

    def __init__(self, model: nn.Module, pool: LoraPool, config: MoreConfig | None = None):
        super().__init__(model, pool, config)
        # After every router is drawn, so a residual LoRA never shifts the routers' init; with
        # residual_rank 0 nothing is created and no random number is drawn.
        if self.config.residual_rank:
            for layer in self.tuner_layers().values():
                layer.add_residual_lora(self.config.residual_rank)

    def make_layer(self, name: str, base_layer: nn.Module) -> MoreLinear:
        experts = self.pool.experts(name)  # rank-wise: every rank-1 piece is an expert
        return MoreLinear(
            base_layer,
            experts.expert_A,
            experts.expert_B,
            top_k=self.config.top_k,
            output_scale=self.config.output_scale,
            router_init_std=self.config.router_init_std,
            scorer=get_score(self.config.importance_score),
            router=self.config.router,
            router_rank=self.config.router_rank,
            owners=experts.owners,
            expert_path=self.config.expert_path,
        )

    # ------------------------------------------------------------------ access
    def tuner_layers(self) -> dict[str, MoreLinear]:
        return super().tuner_layers()  # type: ignore[return-value]

    @property
    def expert_owners(self) -> dict[str, tuple[tuple[str, int], ...]]:
        """Per matrix, expert j -> (pool module name, rank index)."""
        return {name: layer.owners for name, layer in self.tuner_layers().items()}

    @property
    def capacities(self) -> np.ndarray:
        """M_ℓ per matrix."""
        return np.array(
            [layer.num_experts for layer in self.tuner_layers().values()], dtype=np.int64
        )

    def router_state_dict(self) -> dict[str, torch.Tensor]:
        """The communicated state: ``<matrix>.router.weight`` (+ ``<matrix>.output_scale``)."""
        return self.trainable_state_dict()

    def load_router_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.load_trainable_state_dict(state)

    def set_expert_path(self, path: str) -> None:
        """Sum the selected experts densely or sparsely in every layer (same function)."""
        for layer in self.tuner_layers().values():
            layer.set_expert_path(path)
        self.config.expert_path = path

    # ------------------------------------------------------------------ quotas
    def get_quotas(self) -> np.ndarray:
        return np.array([layer.k for layer in self.tuner_layers().values()], dtype=np.int64)

    def set_quotas(self, quotas: np.ndarray | list[int]) -> None:
        quotas = np.asarray(quotas)
        if quotas.shape != (len(self.matrix_names),):
            raise ValueError(f"expected {len(self.matrix_names)} quotas, got shape {quotas.shape}")
        for layer, k in zip(self.tuner_layers().values(), quotas, strict=True):
            layer.set_quota(int(k))

    # ------------------------------------------------------------------ importance
    def track_importance(self, enabled: bool = True) -> None:
        for layer in self.tuner_layers().values():
            layer.track_importance = enabled

    def read_importance(self, reset: bool = True) -> ImportanceStats:
        """Importance per matrix and mean gate per expert since the last reset.

        Per matrix: the mean per-token score, or, for a scorer with ``reduction="share"``, the
        matrix's summed score over the sum of all matrices (shares summing to 1; all zeros when
        nothing was recorded). The one host sync of the bookkeeping happens here, once per read."""
        layers = list(self.tuner_layers().values())
        seen = [int(layer.importance_tokens) for layer in layers]
        denom = [max(s, 1) for s in seen]
        if get_score(self.config.importance_score).reduction == "share":
            sums = np.array([layer.importance_sum.item() for layer in layers])
            total = float(sums.sum())
            matrix = sums / total if total > 0 else np.zeros_like(sums)
        else:
            matrix = np.array(
                [(layer.importance_sum / d).item() for layer, d in zip(layers, denom, strict=True)]
            )
        stats = ImportanceStats(
            matrix=matrix,
            mean_gate=[
                (layer.expert_gate_sum / d).cpu().numpy()
                for layer, d in zip(layers, denom, strict=True)
            ],
            tokens=max(seen),
        )
        if reset:
            for layer in layers:
                layer.reset_importance()
        return stats

    # ------------------------------------------------------------------ persistence
    def save_extras(self) -> dict[str, Any]:
        return {"capacities": self.capacities.tolist(), "quotas": self.get_quotas().tolist()}

    def load_extras(self, saved: dict[str, Any]) -> None:
        self.set_quotas(saved["quotas"])
