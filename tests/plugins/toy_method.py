"""A toy method with one setting, registered by this file alone (``SMARTFED_PLUGINS``).

It is the architecture's worked example: a method is its settings class, its build, and how
its final model is saved. This one learns one weight per pool module (like LoRAHub), all
starting at ``--toy_start``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from smartfed.engine.method import FederatedMethod
from smartfed.engine.settings import MethodSettings, setting
from smartfed.methods.registry import register_method
from smartfed.tuners.lorahub import LoraHubConfig, LoraHubModel


@dataclass
class ToySettings(MethodSettings):
    learning_rate: float = setting(1e-2, "AdamW learning rate of the module weights", above=0)
    toy_start: float = setting(0.25, "initial weight of every pool module")


@register_method
class Toy(FederatedMethod):
    name = "toy"
    summary = "toy: one weight per pool module, all starting at --toy_start"
    reuses_pool = True
    settings_class = ToySettings
    in_default_bench = False

    def build(self, base_model: nn.Module, pool, config) -> nn.Module:
        hub = LoraHubModel(base_model, pool, LoraHubConfig())
        with torch.no_grad():
            hub.lorahub.weights.fill_(config.settings.toy_start)
        return hub

    def save_final(self, directory: Path) -> None:
        self.model.save_pretrained(directory)

    def load_final(self, directory: Path) -> None:
        self.model.load_pretrained_state(directory)

    def describe_final(self) -> dict:
        return {"module_weights": self.model.module_weights()}
