"""``pool_bridge``: the pool's own B and A with a trained low-rank mixing R between them.

A reuse method in Fed-SB's form: every adapted matrix gets ``B R A`` over its stacked rank-1
pool experts, with ``R = D + U V^T``: ``D`` is merge's weighting (so round 0 is the static merge of
the pool), ``U`` and ``V`` (M x k, k <= 8) are trained and averaged. The mixing is the same for
every token, unlike SmartFed's routers: it separates "reuse the pool's directions" from "route per
token". See :mod:`smartfed.tuners.bridge`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from smartfed.engine.method import FederatedMethod
from smartfed.engine.settings import MethodSettings, setting
from smartfed.methods.registry import register_method
from smartfed.pool import LoraPool
from smartfed.tuners.bridge import BridgeConfig, BridgeModel
from smartfed.tuners.bridge.model import MAX_RANK

if TYPE_CHECKING:
    from smartfed.engine.config import RunConfig


@dataclass
class PoolBridgeSettings(MethodSettings):
    learning_rate: float = setting(5e-2, "AdamW learning rate of U and V", above=0)
    bridge_rank: int = setting(
        4, f"rank k of the trained mixing U V^T per matrix (at most {MAX_RANK})",
        minimum=1, maximum=MAX_RANK,
    )  # fmt: skip


@register_method
class PoolBridge(FederatedMethod):
    name = "pool_bridge"
    summary = "pool experts mixed by a trained low-rank R = merge + U V^T (Fed-SB form, reuse)"
    reuses_pool = True
    settings_class = PoolBridgeSettings

    def build(self, base_model: nn.Module, pool: LoraPool, config: RunConfig) -> nn.Module:
        return BridgeModel(base_model, pool, BridgeConfig(rank=config.settings.bridge_rank))

    def save_final(self, directory: Path) -> None:
        self.model.save_pretrained(directory)

    def load_final(self, directory: Path) -> None:
        self.model.load_pretrained_state(directory)

    def plain_lora(self) -> tuple[Any, dict[str, torch.Tensor]]:
        """``B R`` and ``A`` per matrix as one LoRA of rank M (scaling 1): exact, since the
        mixing does not depend on the token."""
        from peft import LoraConfig

        tensors: dict[str, torch.Tensor] = {}
        ranks: dict[str, int] = {}
        for name, layer in self.model.tuner_layers().items():
            with torch.no_grad():
                b = layer.expert_B.float() @ layer.mixing().float()
            tensors[f"base_model.model.{name}.lora_A.weight"] = layer.expert_A.float().contiguous()
            tensors[f"base_model.model.{name}.lora_B.weight"] = b.cpu().contiguous()
            ranks[name] = layer.num_experts
        rank = max(ranks.values())
        pattern = {name: r for name, r in ranks.items() if r != rank}
        config = LoraConfig(
            r=rank, lora_alpha=rank, target_modules=list(ranks), rank_pattern=pattern,
            alpha_pattern=dict(pattern), lora_dropout=0.0, bias="none", task_type="CAUSAL_LM",
        )  # fmt: skip
        return config, tensors
