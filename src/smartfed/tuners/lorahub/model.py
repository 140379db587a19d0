"""Inject LoRAHub layers into a Hugging Face causal LM: a learned weighting of whole pool modules.

The composition baseline: one scalar w_n per pool module (N in total, shared by every matrix),
ΔW_ℓ = Σ_n w_n s_n B_n A_n. The N weights are the only trainable, communicated state; they are
trained by gradient here (the LoRAHub paper searches them gradient-free, the update is the same).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from smartfed.pool import LoraPool
from smartfed.tuners.base import PoolTuner
from smartfed.tuners.experts import group_experts_by_module
from smartfed.tuners.lorahub.config import LoraHubConfig
from smartfed.tuners.lorahub.layer import LoraHubLinear, LoraHubWeights

WEIGHTS_NAME = "lorahub_weights.safetensors"
LORAHUB_CONFIG_NAME = "lorahub_config.json"
WEIGHTS_KEY = "lorahub.weights"


class LoraHubModel(PoolTuner):
    """A causal LM whose pool-adapted linear layers add Σ_n w_n ΔW_n with trainable w."""

    config_class = LoraHubConfig
    config_key = "lorahub_config"
    weights_name = WEIGHTS_NAME
    config_name = LORAHUB_CONFIG_NAME
    what = "LoRAHub weights"

    config: LoraHubConfig

    def __init__(self, model: nn.Module, pool: LoraPool, config: LoraHubConfig | None = None):
        super().__init__(model, pool, config)

    def build_shared(self) -> None:
        device = next(self.model.parameters()).device
        # Registered here, so its one parameter is named "lorahub.weights" (WEIGHTS_KEY).
        self.lorahub = LoraHubWeights(self.pool.names, self.config.init, device=device)

    def make_layer(self, name: str, base_layer: nn.Module) -> LoraHubLinear:
        return LoraHubLinear(base_layer, group_experts_by_module(self.pool, name), self.lorahub)

    # ------------------------------------------------------------------ access
    def tuner_layers(self) -> dict[str, LoraHubLinear]:
        return super().tuner_layers()  # type: ignore[return-value]

    @property
    def module_names(self) -> list[str]:
        return self.lorahub.module_names

    def module_weights(self) -> dict[str, float]:
        """The current w_n per pool module, for logs and reports."""
        values = self.lorahub.weights.detach().cpu().tolist()
        return dict(zip(self.module_names, values, strict=True))

    def save_extras(self) -> dict[str, Any]:
        return {"weights": self.module_weights()}  # readable copy; the tensor file is loaded

    # ------------------------------------------------------------------ merge
    @torch.no_grad()
    def merge_and_unload(self) -> nn.Module:
        """Bake the current update into the base weights and return the plain base model."""
        for layer in self.tuner_layers().values():
            weight = layer.base_layer.weight
            weight += layer.delta_weight().to(weight.dtype)
        return self.unload()
