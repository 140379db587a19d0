"""A toy router design, registered by this file alone (``SMARTFED_PLUGINS``): one learned
scale per rank-1 expert on its projection z = A·x (M values per matrix)."""

from __future__ import annotations

import torch
from torch import nn

from smartfed.tuners.routing import RouterDesign, register_router


@register_router
class ToyScaledProjection(RouterDesign):
    """Toy: logits = s ⊙ z, one scale per expert (M values per matrix)."""

    name = "toy_scaled"
    needs_experts = True

    def __init__(self, in_features: int, num_experts: int, **kwargs):
        super().__init__(in_features, num_experts, **kwargs)
        self.scale = nn.Parameter(torch.ones(num_experts, dtype=torch.float32))

    def forward(self, x: torch.Tensor, z: torch.Tensor | None) -> torch.Tensor:
        return z * self.scale

    @classmethod
    def communicated_values(cls, in_features: int, num_experts: int) -> int:
        return num_experts
