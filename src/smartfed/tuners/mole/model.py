"""Inject MoLE layers into a Hugging Face causal LM: module-wise routing over a frozen LoRA pool.

The baseline to MoRE's rank-wise routing: the experts of a matrix are the N_ℓ pool modules that
adapt it (each with its full update), not their rank-1 pieces. Only the per-matrix routers
(N_ℓ × d_in each) are trainable and exchanged; base model and pool stay frozen.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from smartfed.errors import PoolError
from smartfed.pool import LoraPool
from smartfed.tuners.mole.common import (
    group_experts_by_module,
    load_state,
    save_state,
    select_matrices,
)
from smartfed.tuners.mole.config import MoleConfig
from smartfed.tuners.mole.layer import MoleLinear

ROUTER_WEIGHTS_NAME = "routers.safetensors"
MOLE_CONFIG_NAME = "mole_config.json"


@dataclass
class ModuleUsage:
    """Routing statistics since the last reset, per matrix and pool module (real tokens only)."""

    selection_rate: dict[str, dict[str, float]]  # matrix -> module -> share of tokens choosing it
    mean_gate: dict[str, dict[str, float]]  # matrix -> module -> mean renormalised gate
    tokens: int  # tokens seen per matrix


class MoleModel(nn.Module):
    """A causal LM whose pool-adapted linear layers route among whole frozen pool modules."""

    def __init__(self, model: nn.Module, pool: LoraPool, config: MoleConfig | None = None):
        super().__init__()
        self.config = config or MoleConfig()
        self.pool = pool
        self.model = model
        pool.validate_against(model)
        self.matrix_names: list[str] = select_matrices(pool, self.config.target_modules)
        self.matrix_modules: dict[str, tuple[str, ...]] = {}
        model.requires_grad_(False)
        for name in self.matrix_names:
            groups = group_experts_by_module(pool, name)
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name)
            layer = MoleLinear(
                getattr(parent, child),
                groups,
                top_k=self.config.top_k,
                output_scale=self.config.output_scale,
                router_init_std=self.config.router_init_std,
            )
            setattr(parent, child, layer)
            self.matrix_modules[name] = groups.modules

    # ------------------------------------------------------------------ access
    def mole_layers(self) -> dict[str, MoleLinear]:
        return {name: self.model.get_submodule(name) for name in self.matrix_names}

    def forward(self, *args, **kwargs):
        mask = kwargs.get("attention_mask")
        token_mask = mask.bool() if mask is not None else None
        layers = self.mole_layers().values()
        for layer in layers:
            layer.token_mask = token_mask
        try:
            return self.model(*args, **kwargs)
        finally:
            for layer in layers:
                layer.token_mask = None

    def generate(self, *args, **kwargs):
        return self.model.generate(*args, **kwargs)

    # ------------------------------------------------------------------ routers
    def router_state_dict(self) -> dict[str, torch.Tensor]:
        """The trainable, communicated state: ``<matrix>.router.weight`` of shape (N_ℓ, d_in)."""
        return {
            name: param.detach().clone()
            for name, param in self.model.named_parameters()
            if param.requires_grad
        }

    def load_router_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        params = {n: p for n, p in self.model.named_parameters() if p.requires_grad}
        missing, unexpected = sorted(set(params) - set(state)), sorted(set(state) - set(params))
        if missing or unexpected:
            raise PoolError(
                f"router state does not match this MoLE model: missing {missing[:3]}, "
                f"unexpected {unexpected[:3]} (built for another pool or config?)"
            )
        with torch.no_grad():
            for name, param in params.items():
                if tuple(state[name].shape) != tuple(param.shape):
                    raise PoolError(
                        f"router '{name}' has shape {tuple(state[name].shape)}, this model expects "
                        f"{tuple(param.shape)} (built for another pool?)"
                    )
                param.copy_(state[name].to(param.device, param.dtype))

    def num_trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters() if p.requires_grad)

    # ------------------------------------------------------------------ usage
    def track_usage(self, enabled: bool = True) -> None:
        for layer in self.mole_layers().values():
            layer.track_usage = enabled

    def module_usage(self, reset: bool = True) -> ModuleUsage:
        """Per matrix, how often each module was selected and its mean gate (needs track_usage)."""
        rates: dict[str, dict[str, float]] = {}
        gates: dict[str, dict[str, float]] = {}
        tokens = 0
        for name, layer in self.mole_layers().items():
            seen = int(layer.usage_tokens)
            tokens = max(tokens, seen)
            denom = max(seen, 1)
            sel = (layer.usage_selections / denom).tolist()
            mean = (layer.usage_gate_sum / denom).tolist()
            rates[name] = dict(zip(layer.module_names, sel, strict=True))
            gates[name] = dict(zip(layer.module_names, mean, strict=True))
            if reset:
                layer.reset_usage()
        return ModuleUsage(selection_rate=rates, mean_gate=gates, tokens=tokens)

    # ------------------------------------------------------------------ persistence
    def save_pretrained(self, directory: str | Path) -> Path:
        """Write ``routers.safetensors`` + ``mole_config.json`` (with the pool's fingerprint)."""
        return save_state(
            directory,
            weights_name=ROUTER_WEIGHTS_NAME,
            config_name=MOLE_CONFIG_NAME,
            state=self.router_state_dict(),
            pool=self.pool,
            record={
                "mole_config": self.config.to_dict(),
                "matrices": self.matrix_names,
                "matrix_modules": {k: list(v) for k, v in self.matrix_modules.items()},
            },
        )

    @classmethod
    def from_pretrained(cls, model: nn.Module, pool: LoraPool, directory: str | Path) -> MoleModel:
        """Rebuild MoLE on ``model`` + ``pool`` and load its routers from ``directory``."""
        saved, state = load_state(
            directory,
            weights_name=ROUTER_WEIGHTS_NAME,
            config_name=MOLE_CONFIG_NAME,
            pool=pool,
            what="MoLE router",
        )
        config_path = Path(directory) / MOLE_CONFIG_NAME
        config = MoleConfig.from_dict(saved["mole_config"], source=str(config_path))
        mole = cls(model, pool, config)
        if saved.get("matrices") != mole.matrix_names:
            raise PoolError(f"{config_path}: matrix list differs from the one this pool yields")
        mole.load_router_state_dict(state)
        return mole

    def unload(self) -> nn.Module:
        """Put the original linear layers back and return the plain base model."""
        for name in self.matrix_names:
            parent_name, _, child = name.rpartition(".")
            parent = self.model.get_submodule(parent_name)
            setattr(parent, child, getattr(parent, child).base_layer)
        return self.model
