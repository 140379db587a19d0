"""Inject MoLE layers into a Hugging Face causal LM: module-wise routing over a frozen LoRA pool.

The baseline to MoRE's rank-wise routing: the experts of a matrix are the N_ℓ pool modules that
adapt it (each with its full update), not their rank-1 pieces. Only the per-matrix routers
(N_ℓ × d_in each) are trainable and exchanged; base model and pool stay frozen.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from smartfed.pool import LoraPool
from smartfed.tuners.base import PoolTuner
from smartfed.tuners.experts import group_experts_by_module
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


class MoleModel(PoolTuner):
    """A causal LM whose pool-adapted linear layers route among whole frozen pool modules."""

    config_class = MoleConfig
    config_key = "mole_config"
    weights_name = ROUTER_WEIGHTS_NAME
    config_name = MOLE_CONFIG_NAME
    what = "MoLE routers"
    state_fields = ("router", "output_scale")

    config: MoleConfig

    def __init__(self, model: nn.Module, pool: LoraPool, config: MoleConfig | None = None):
        super().__init__(model, pool, config)

    def make_layer(self, name: str, base_layer: nn.Module) -> MoleLinear:
        return MoleLinear(
            base_layer,
            group_experts_by_module(self.pool, name),  # module-wise: a whole module per choice
            top_k=self.config.top_k,
            output_scale=self.config.output_scale,
            router_init_std=self.config.router_init_std,
            router=self.config.router,
        )

    # ------------------------------------------------------------------ access
    def tuner_layers(self) -> dict[str, MoleLinear]:
        return super().tuner_layers()  # type: ignore[return-value]

    @property
    def matrix_modules(self) -> dict[str, tuple[str, ...]]:
        """Per matrix, the pool modules adapting it (the router's choices, in pool order)."""
        return {name: layer.module_names for name, layer in self.tuner_layers().items()}

    def router_state_dict(self) -> dict[str, torch.Tensor]:
        """The communicated state: ``<matrix>.router.weight`` of shape (N_ℓ, d_in)."""
        return self.trainable_state_dict()

    def load_router_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.load_trainable_state_dict(state)

    # ------------------------------------------------------------------ usage
    def track_usage(self, enabled: bool = True) -> None:
        for layer in self.tuner_layers().values():
            layer.track_usage = enabled

    def module_usage(self, reset: bool = True) -> ModuleUsage:
        """Per matrix, how often each module was selected and its mean gate (needs track_usage)."""
        rates: dict[str, dict[str, float]] = {}
        gates: dict[str, dict[str, float]] = {}
        tokens = 0
        for name, layer in self.tuner_layers().items():
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
    def save_extras(self) -> dict[str, Any]:
        return {"matrix_modules": {k: list(v) for k, v in self.matrix_modules.items()}}
