"""The bridge layer: a frozen linear layer plus the pool's experts mixed by an M x M matrix.

    h' = W0 x + B R A x,    R = D + U V^T

``A`` (M x d_in) and ``B`` (d_out x M, scales folded in) are the matrix's rank-1 experts, stacked
over the pool modules; ``D`` is merge's weighting (1/N on every expert of each of the N modules,
frozen), and ``U``, ``V`` (M x k) are trained. ``U`` starts at zero, so the layer starts as the
static merge of the pool; ``V`` starts random from the run seed. Unlike SmartFed's routers the
mixing does not depend on the token: it is Fed-SB's form (frozen A and B, a trained R between
them) over the pool's knowledge.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from smartfed.tuners.experts import ExpertLinear, ModuleGroups


class BridgeLinear(ExpertLinear):
    def __init__(self, base_layer: nn.Linear, groups: ModuleGroups, rank: int):
        super().__init__(base_layer, groups.expert_A, groups.expert_B)
        m = self.num_experts
        modules = len(groups.modules)
        self.register_buffer(
            "merge_weights", torch.full((m,), 1.0 / modules, device=self.device), persistent=False
        )
        self.bridge_U = nn.Parameter(torch.zeros(m, rank, device=self.device))
        # Scaled so that U's first gradients do not depend on M.
        self.bridge_V = nn.Parameter(torch.randn(m, rank, device=self.device) / math.sqrt(m))

    def mixing(self) -> torch.Tensor:
        """(M, M) the effective R = D + U V^T."""
        return torch.diag(self.merge_weights) + self.bridge_U @ self.bridge_V.T

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        base_out = self.base_layer(x, *args, **kwargs)
        z = x.reshape(-1, self.in_features) @ self.expert_A.T.to(x.dtype)  # (tokens, M)
        mixed = z * self.merge_weights.to(z.dtype) + (z @ self.bridge_V.to(z.dtype)) @ (
            self.bridge_U.T.to(z.dtype)
        )
        delta = mixed @ self.expert_B.T.to(z.dtype)
        return base_out + delta.reshape(base_out.shape).to(base_out.dtype)

    def delta_weight(self) -> torch.Tensor:
        """(d_out, d_in) the effective update B R A."""
        mixing = self.mixing().to(self.expert_B.dtype)
        return self.expert_B @ mixing @ self.expert_A

    def extra_repr(self) -> str:
        return (
            f"in={self.in_features}, out={self.out_features}, experts={self.num_experts}, "
            f"rank={self.bridge_U.shape[1]}"
        )
