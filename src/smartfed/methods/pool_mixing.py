"""Knowledge-reuse baselines that combine whole pool modules: static merging and LoRAHub.

``merge`` averages the pool modules' updates once, Σ_n (1/N) s_n B_n A_n, and never trains: the
run evaluates it and writes its result with zero rounds and zero bytes. ``lorahub`` learns one
weight per pool module federatedly (FedAvg of the N weights), merged exactly as
Σ_n w_n s_n B_n A_n with no cross terms; see :mod:`smartfed.tuners.lorahub`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn

from smartfed.engine.method import FederatedMethod
from smartfed.engine.settings import MethodSettings, setting
from smartfed.methods.registry import register_method
from smartfed.pool import LoraPool
from smartfed.tuners.lorahub import LoraHubConfig, LoraHubModel

if TYPE_CHECKING:
    from smartfed.engine.config import RunConfig


@dataclass
class LoraHubSettings(MethodSettings):
    # N scalars of order 1 (the paper searches [-1.5, 1.5]); at the routers' 5e-4 they move from
    # 0.5 to 0.508 in a whole cn_math demo run (docs/methods-benchmarks.md).
    learning_rate: float = setting(5e-2, "AdamW learning rate of the module weights", above=0)

    @classmethod
    def from_format_1(cls, flat: dict[str, Any]) -> dict[str, Any]:
        # SmartFed 0.1 kept LoRAHub's rate in its own field, lorahub_learning_rate.
        rate = flat.get("lorahub_learning_rate")
        return {} if rate is None else {"learning_rate": rate}


class _ModuleWeighting(FederatedMethod):
    reuses_pool = True

    def build(self, base_model: nn.Module, pool: LoraPool, config: RunConfig) -> nn.Module:
        hub = LoraHubModel(base_model, pool, LoraHubConfig(init="uniform"))
        hub.lorahub.weights.requires_grad = self.trains
        return hub

    def save_final(self, directory: Path) -> None:
        self.model.save_pretrained(directory)

    def load_final(self, directory: Path) -> None:
        self.model.load_pretrained_state(directory)

    def describe_final(self) -> dict[str, Any]:
        return {"module_weights": self.model.module_weights()}


@register_method
class Merge(_ModuleWeighting):
    name = "merge"
    summary = "static average of the pool modules: no training, no communication"
    trains = False


@register_method
class LoraHub(_ModuleWeighting):
    name = "lorahub"
    summary = "one weight per pool module, learned federatedly (Σ w_n B_n A_n)"
    settings_class = LoraHubSettings
