"""The MoRE layer: a frozen linear layer plus routed rank-1 experts (DESIGN §1.2).

Per token x (all experts of the matrix in one batched matmul, no Python loop over experts):

    p = softmax(W_r x);  S = top-K(p);  ĝ_j = p_j / Σ_{k∈S} p_k;  h' = W0 x + c · Σ_{j∈S} ĝ_j E_j(x)

The sparse sum is written densely as ``((x Aᵀ) ⊙ G) Bᵀ`` where G holds ĝ at the selected experts
and zeros elsewhere. With M experts this costs the same as a rank-M LoRA; for the pool sizes we
target (M ≤ a few hundred) a dense matmul beats gathering per-token expert columns on CPU and GPU.
"""

from __future__ import annotations

import torch
from torch import nn

from smartfed.importance.scores import ScoreInputs, Scorer


class MoreLinear(nn.Module):
    def __init__(
        self,
        base_layer: nn.Linear,
        expert_A: torch.Tensor,
        expert_B: torch.Tensor,
        *,
        top_k: int,
        output_scale: str,
        router_init_std: float,
        scorer: Scorer,
    ):
        super().__init__()
        num_experts, in_features = expert_A.shape
        if expert_B.shape != (base_layer.out_features, num_experts):
            raise ValueError(f"expert_B shape {tuple(expert_B.shape)} does not match expert_A")
        self.base_layer = base_layer
        self.in_features = in_features
        self.out_features = base_layer.out_features
        self.num_experts = num_experts
        dtype, device = base_layer.weight.dtype, base_layer.weight.device
        # Frozen experts are buffers, not parameters: never trained, never in the router file.
        self.register_buffer("expert_A", expert_A.to(device, dtype), persistent=False)
        self.register_buffer("expert_B", expert_B.to(device, dtype), persistent=False)
        self.register_buffer(
            "expert_B_norm", expert_B.norm(dim=0).to(device, dtype), persistent=False
        )
        # The router is kept in float32 whatever the base dtype: its softmax decides the routing.
        self.router = nn.Linear(
            in_features, num_experts, bias=False, device=device, dtype=torch.float32
        )
        if router_init_std > 0:
            nn.init.normal_(self.router.weight, std=router_init_std)
        else:
            nn.init.zeros_(self.router.weight)
        initial_k = min(top_k, num_experts)
        self.register_buffer("quota", torch.tensor(initial_k, dtype=torch.long), persistent=False)
        # Python mirror of the quota buffer: reading a device tensor per forward would force a
        # host/device sync on GPU. set_quota keeps the two equal.
        self._k = initial_k
        self.output_scale_mode = output_scale
        if output_scale == "learnable":
            self.output_scale = nn.Parameter(torch.tensor(float(initial_k), device=device))
        self.scorer = scorer
        self.track_importance = False
        self.token_mask: torch.Tensor | None = None  # set per batch by MoreModel (padding = False)
        self.reset_importance()

    # ----------------------------------------------------------------- quotas and scale
    @property
    def k(self) -> int:
        """The current quota K_ℓ (number of experts each token selects)."""
        return self._k

    def set_quota(self, k: int) -> None:
        if not 1 <= k <= self.num_experts:
            raise ValueError(f"quota {k} outside [1, {self.num_experts}]")
        self.quota.fill_(int(k))
        self._k = int(k)

    def scale(self) -> torch.Tensor | float:
        if self.output_scale_mode == "k":
            return float(self._k)
        if self.output_scale_mode == "one":
            return 1.0
        return self.output_scale

    # ----------------------------------------------------------------- routing
    def gates(self, flat_x: torch.Tensor) -> torch.Tensor:
        """(N, M) renormalised top-K gates, zero for unselected experts."""
        probs = torch.softmax(self.router(flat_x.to(self.router.weight.dtype)), dim=-1)
        k = self._k
        if k >= self.num_experts:
            return probs
        top_vals, top_idx = probs.topk(k, dim=-1)
        top_vals = top_vals / top_vals.sum(dim=-1, keepdim=True)
        return torch.zeros_like(probs).scatter(-1, top_idx, top_vals)

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        base_out = self.base_layer(x, *args, **kwargs)
        flat_x = x.reshape(-1, self.in_features)
        gates = self.gates(flat_x).to(x.dtype)
        projections = flat_x @ self.expert_A.T  # (N, M): A[j, :] x for every expert
        delta = ((projections * gates) @ self.expert_B.T) * self.scale()
        if self.track_importance:
            self._accumulate(base_out.reshape(-1, self.out_features), delta, gates, projections)
        return base_out + delta.reshape(base_out.shape).to(base_out.dtype)

    # ----------------------------------------------------------------- importance
    def reset_importance(self) -> None:
        self.importance_sum = 0.0
        self.expert_importance_sum = torch.zeros(self.num_experts, dtype=torch.float64)
        self.expert_selections = torch.zeros(self.num_experts, dtype=torch.float64)
        self.expert_gate_sum = torch.zeros(self.num_experts, dtype=torch.float64)
        self.importance_tokens = 0

    @torch.no_grad()
    def _accumulate(
        self,
        base_out: torch.Tensor,
        delta: torch.Tensor,
        gates: torch.Tensor,
        projections: torch.Tensor,
    ) -> None:
        mask = self.token_mask
        if mask is not None and mask.numel() == base_out.shape[0]:
            keep = mask.reshape(-1).to(base_out.device)
            base_out, delta, gates, projections = (
                base_out[keep],
                delta[keep],
                gates[keep],
                projections[keep],
            )
        if base_out.shape[0] == 0:
            return
        inputs = ScoreInputs(
            base_out=base_out.float(),
            delta=delta.float(),
            gates=gates.float(),
            expert_norms=(projections.abs() * self.expert_B_norm).float(),
        )
        matrix_score, expert_score = self.scorer(inputs)
        self.importance_sum += float(matrix_score.double().sum())
        self.expert_importance_sum += expert_score.double().sum(dim=0).cpu()
        self.expert_selections += (gates > 0).double().sum(dim=0).cpu()
        self.expert_gate_sum += gates.double().sum(dim=0).cpu()
        self.importance_tokens += int(base_out.shape[0])

    def extra_repr(self) -> str:
        return (
            f"in={self.in_features}, out={self.out_features}, experts={self.num_experts}, "
            f"quota={self._k}, output_scale={self.output_scale_mode}"
        )
