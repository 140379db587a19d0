"""Inject bridge layers into a Hugging Face causal LM (see :mod:`.layer`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import nn

from smartfed.errors import ConfigError
from smartfed.tuners.base import PoolTuner, TunerConfig
from smartfed.tuners.bridge.layer import BridgeLinear
from smartfed.tuners.experts import group_experts_by_module

MAX_RANK = 8  # keeps a round under 1/30 of a rank-32 fresh LoRA's traffic on q/v matrices


@dataclass
class BridgeConfig(TunerConfig):
    """rank: k of the trained U, V (M x k each) per matrix, at most :data:`MAX_RANK`."""

    kind: ClassVar[str] = "pool bridge"

    rank: int = 4

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 1 <= self.rank <= MAX_RANK:
            raise ConfigError(f"bridge rank must be between 1 and {MAX_RANK}, got {self.rank}")


class BridgeModel(PoolTuner):
    """A causal LM whose pool-adapted linear layers add B (D + U V^T) A x."""

    config_class = BridgeConfig
    config_key = "bridge_config"
    weights_name = "bridge.safetensors"
    config_name = "bridge_config.json"
    what = "pool-bridge mixing"
    state_fields = ("rank",)

    config: BridgeConfig

    def make_layer(self, name: str, base_layer: nn.Module) -> BridgeLinear:
        return BridgeLinear(base_layer, group_experts_by_module(self.pool, name), self.config.rank)
