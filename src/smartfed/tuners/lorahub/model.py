"""Inject LoRAHub layers into a Hugging Face causal LM: a learned weighting of whole pool modules.

The composition baseline: one scalar w_n per pool module (N in total, shared by every matrix),
ΔW_ℓ = Σ_n w_n s_n B_n A_n. The N weights are the only trainable, communicated state; they are
trained by gradient here (the LoRAHub paper searches them gradient-free, the update is the same).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from smartfed.errors import PoolError
from smartfed.pool import LoraPool
from smartfed.tuners.lorahub.config import LoraHubConfig
from smartfed.tuners.lorahub.layer import LoraHubLinear, LoraHubWeights
from smartfed.tuners.mole.common import (
    group_experts_by_module,
    load_state,
    save_state,
    select_matrices,
)

WEIGHTS_NAME = "lorahub_weights.safetensors"
LORAHUB_CONFIG_NAME = "lorahub_config.json"
WEIGHTS_KEY = "lorahub.weights"


class LoraHubModel(nn.Module):
    """A causal LM whose pool-adapted linear layers add Σ_n w_n ΔW_n with trainable w."""

    def __init__(self, model: nn.Module, pool: LoraPool, config: LoraHubConfig | None = None):
        super().__init__()
        self.config = config or LoraHubConfig()
        self.pool = pool
        self.model = model
        pool.validate_against(model)
        self.matrix_names: list[str] = select_matrices(pool, self.config.target_modules)
        model.requires_grad_(False)
        device = next(model.parameters()).device
        # Registered here, so its one parameter is named "lorahub.weights" (WEIGHTS_KEY).
        self.lorahub = LoraHubWeights(pool.names, self.config.init, device=device)
        for name in self.matrix_names:
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name)
            groups = group_experts_by_module(pool, name)
            setattr(parent, child, LoraHubLinear(getattr(parent, child), groups, self.lorahub))

    # ------------------------------------------------------------------ access
    def lorahub_layers(self) -> dict[str, LoraHubLinear]:
        return {name: self.model.get_submodule(name) for name in self.matrix_names}

    @property
    def module_names(self) -> list[str]:
        return self.lorahub.module_names

    def module_weights(self) -> dict[str, float]:
        """The current w_n per pool module, for logs and reports."""
        values = self.lorahub.weights.detach().cpu().tolist()
        return dict(zip(self.module_names, values, strict=True))

    def forward(self, *args, **kwargs):
        return self.model(*args, **kwargs)

    def generate(self, *args, **kwargs):
        return self.model.generate(*args, **kwargs)

    # ------------------------------------------------------------------ weights
    def weights_state_dict(self) -> dict[str, torch.Tensor]:
        """The trainable, communicated state: ``{"lorahub.weights": (N,) float32}``."""
        return {WEIGHTS_KEY: self.lorahub.weights.detach().clone()}

    def load_weights_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if set(state) != {WEIGHTS_KEY}:
            raise PoolError(
                f"LoRAHub state must hold exactly '{WEIGHTS_KEY}', got {sorted(state)[:3]}"
            )
        value, param = state[WEIGHTS_KEY], self.lorahub.weights
        if tuple(value.shape) != tuple(param.shape):
            raise PoolError(
                f"'{WEIGHTS_KEY}' has shape {tuple(value.shape)}, this model expects "
                f"{tuple(param.shape)} (one weight per pool module: built for another pool?)"
            )
        with torch.no_grad():
            param.copy_(value.to(param.device, param.dtype))

    def num_trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    # ------------------------------------------------------------------ persistence
    def save_pretrained(self, directory: str | Path) -> Path:
        """Write ``lorahub_weights.safetensors`` + ``lorahub_config.json`` (pool fingerprint)."""
        return save_state(
            directory,
            weights_name=WEIGHTS_NAME,
            config_name=LORAHUB_CONFIG_NAME,
            state=self.weights_state_dict(),
            pool=self.pool,
            record={
                "lorahub_config": self.config.to_dict(),
                "matrices": self.matrix_names,
                "weights": self.module_weights(),  # readable copy; the tensor file is loaded
            },
        )

    @classmethod
    def from_pretrained(
        cls, model: nn.Module, pool: LoraPool, directory: str | Path
    ) -> LoraHubModel:
        """Rebuild LoRAHub on ``model`` + ``pool`` and load its weights from ``directory``."""
        saved, state = load_state(
            directory,
            weights_name=WEIGHTS_NAME,
            config_name=LORAHUB_CONFIG_NAME,
            pool=pool,
            what="LoRAHub weights",
        )
        config_path = Path(directory) / LORAHUB_CONFIG_NAME
        config = LoraHubConfig.from_dict(saved["lorahub_config"], source=str(config_path))
        hub = cls(model, pool, config)
        if saved.get("matrices") != hub.matrix_names:
            raise PoolError(f"{config_path}: matrix list differs from the one this pool yields")
        hub.load_weights_state_dict(state)
        return hub

    # ------------------------------------------------------------------ merge / unload
    @torch.no_grad()
    def delta_weights(self) -> dict[str, torch.Tensor]:
        """Per wrapped matrix, the effective update Σ_n w_n s_n B_n A_n at the current weights."""
        return {name: layer.delta_weight() for name, layer in self.lorahub_layers().items()}

    def unload(self) -> nn.Module:
        """Put the original linear layers back and return the plain base model (no update)."""
        for name in self.matrix_names:
            parent_name, _, child = name.rpartition(".")
            parent = self.model.get_submodule(parent_name)
            setattr(parent, child, getattr(parent, child).base_layer)
        return self.model

    @torch.no_grad()
    def merge_and_unload(self) -> nn.Module:
        """Bake the current update into the base weights and return the plain base model."""
        for layer in self.lorahub_layers().values():
            weight = layer.base_layer.weight
            weight += layer.delta_weight().to(weight.dtype)
        return self.unload()
