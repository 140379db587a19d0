"""The LoRAHub layer: a frozen linear layer plus a weighted sum of whole pool-module updates.

    h' = W0 x + Σ_n w_n s_n B_n A_n x

with one scalar w_n per pool module, shared by every matrix. Each rank-1 expert carries its
owner's weight, so the sum is one product ``((x Aᵀ) ⊙ w[owner]) Bᵀ`` over the stacked experts.
That is exactly Σ_n w_n ΔW_n: unlike merging ``(Σ w_n B_n)(Σ w_n A_n)`` it has no cross terms
B_m A_n, and it needs no equal ranks.
"""

from __future__ import annotations

import torch
from torch import nn

from smartfed.tuners.experts import ExpertLinear, ModuleGroups


class LoraHubWeights(nn.Module):
    """The N trainable module weights (float32), one per pool module in pool order."""

    def __init__(self, module_names: list[str], init: str, device: torch.device | None = None):
        super().__init__()
        self.module_names = list(module_names)
        n = len(self.module_names)
        value = 1.0 / n if init == "uniform" else 0.0
        self.weights = nn.Parameter(torch.full((n,), value, dtype=torch.float32, device=device))

    def extra_repr(self) -> str:
        return f"modules={len(self.module_names)}"


class LoraHubLinear(ExpertLinear):
    def __init__(self, base_layer: nn.Linear, groups: ModuleGroups, hub: LoraHubWeights):
        super().__init__(base_layer, groups.expert_A, groups.expert_B)
        self.module_names = groups.modules
        self.register_buffer(
            "expert_pool_index", groups.expert_pool_index.to(self.device), persistent=False
        )
        # The weights are owned by LoraHubModel and shared by all layers; a tuple keeps
        # nn.Module from registering them again under every layer (one tensor, one name).
        self._hub = (hub,)

    def expert_weights(self) -> torch.Tensor:
        """(M,) the weight w_n of the module owning each rank-1 expert."""
        return self._hub[0].weights.index_select(0, self.expert_pool_index)

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        base_out = self.base_layer(x, *args, **kwargs)
        flat_x = x.reshape(-1, self.in_features)
        weights = self.expert_weights().to(x.dtype)
        delta = ((flat_x @ self.expert_A.T) * weights) @ self.expert_B.T
        return base_out + delta.reshape(base_out.shape).to(base_out.dtype)

    def delta_weight(self) -> torch.Tensor:
        """(d_out, d_in) the effective update Σ_n w_n s_n B_n A_n at the current weights."""
        weights = self.expert_weights().to(self.expert_B.dtype)
        return (self.expert_B * weights) @ self.expert_A

    def extra_repr(self) -> str:
        return (
            f"in={self.in_features}, out={self.out_features}, "
            f"modules={len(self.module_names)}, experts={self.num_experts}"
        )
