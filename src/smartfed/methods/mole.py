"""MoLE-style routing: per matrix, a router picks top-k whole pool modules per token.

The module-wise counterpart of SmartFed's rank-wise experts, trained the same way (routers only,
FedAvg). ``--mole_top_k`` modules are kept per token (default 2: with a two-module pool, a
learned soft mix of both); gates are renormalised over the kept modules (output scale 1).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from smartfed.engine.method import FederatedMethod
from smartfed.engine.settings import MethodSettings, setting
from smartfed.errors import ConfigError
from smartfed.methods.registry import register_method
from smartfed.models import model_autocast, model_device, to_device
from smartfed.pool import LoraPool
from smartfed.tuners.mole import MoleConfig, MoleModel
from smartfed.tuners.routing import get_router

if TYPE_CHECKING:
    from smartfed.engine.config import RunConfig


@dataclass
class MoleSettings(MethodSettings):
    # Chosen on validation data (benchmarks/results/routers/README.md): 5e-2 won the grid
    # 1e-2, 5e-2, 2e-1 on cn_math (the paper's 5e-4 barely moved the gates).
    learning_rate: float = setting(5e-2, "AdamW learning rate of the routers", above=0)
    mole_top_k: int = setting(2, "pool modules kept per token and matrix", minimum=1)
    router: str = setting("linear", "router design over whole modules (reads x only)")
    router_init_std: float = setting(0.02, "std of the routers' normal init", minimum=0)

    def check(self) -> None:
        design = get_router(self.router)
        if design.needs_experts:
            raise ConfigError(
                f"--router {self.router} reads rank-1 experts' projections; MoLE routes whole "
                "modules from x only (use a design without needs_experts, e.g. linear)"
            )


@register_method
class Mole(FederatedMethod):
    name = "mole"
    summary = "module-wise routing: one gate per pool module per matrix, top-k modules"
    reuses_pool = True
    settings_class = MoleSettings

    def build(self, base_model: nn.Module, pool: LoraPool, config: RunConfig) -> nn.Module:
        return MoleModel(
            base_model,
            pool,
            MoleConfig(
                top_k=config.settings.mole_top_k,
                router_init_std=config.settings.router_init_std,
                router=config.settings.router,
            ),
        )

    @property
    def state_module(self) -> nn.Module:
        return self.model.model  # names as in MoleModel.router_state_dict

    def save_final(self, directory: Path) -> None:
        self.model.save_pretrained(directory)

    def load_final(self, directory: Path) -> None:
        self.model.load_pretrained_state(directory)

    @torch.no_grad()
    def routing_usage(self, batches: Iterable[dict[str, torch.Tensor]]) -> dict:
        self.model.eval()
        self.model.module_usage(reset=True)
        self.model.track_usage(True)
        device = model_device(self.model)
        try:
            for batch in batches:
                batch = to_device(batch, device)
                with model_autocast(self.model):
                    self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        finally:
            self.model.track_usage(False)
        usage = self.model.module_usage(reset=True)
        # Gate mass, not selection counts: with top_k >= N every module is always selected.
        return {matrix: _shares(gates) for matrix, gates in usage.mean_gate.items()}


def _shares(values: dict[str, float]) -> dict[str, float]:
    total = sum(values.values())
    return {k: (v / total if total > 0 else 0.0) for k, v in values.items()}
