"""The MoLE layer: a frozen linear layer plus a router over the whole pool modules adapting it.

Per token x, with N_ℓ modules at this matrix and module updates s_n B_n A_n:

    p = softmax(W_r x);  S = top-k(p);  ĝ_n = p_n / Σ_{m∈S} p_m
    h' = W0 x + c · Σ_{n∈S} ĝ_n s_n B_n A_n x

Module n's update is the sum of its rank-1 experts, so giving every rank-1 expert its owner's gate
turns the module mixture into one dense low-rank product ``((x Aᵀ) ⊙ G[:, owner]) Bᵀ`` over the
stacked experts: the cost of one LoRA of rank Σ r_n, no loop over modules or tokens.
"""

from __future__ import annotations

import torch
from torch import nn

from smartfed.tuners.mole.common import ModuleGroups


class MoleLinear(nn.Module):
    def __init__(
        self,
        base_layer: nn.Linear,
        groups: ModuleGroups,
        *,
        top_k: int,
        output_scale: str,
        router_init_std: float,
    ):
        super().__init__()
        num_experts, in_features = groups.expert_A.shape
        if groups.expert_B.shape != (base_layer.out_features, num_experts):
            raise ValueError(f"expert_B shape {tuple(groups.expert_B.shape)} does not match A")
        self.base_layer = base_layer
        self.in_features = in_features
        self.out_features = base_layer.out_features
        self.module_names = groups.modules
        self.num_modules = groups.num_modules
        dtype, device = base_layer.weight.dtype, base_layer.weight.device
        # Frozen pool weights are buffers, not parameters: never trained, never saved.
        self.register_buffer("expert_A", groups.expert_A.to(device, dtype), persistent=False)
        self.register_buffer("expert_B", groups.expert_B.to(device, dtype), persistent=False)
        self.register_buffer("expert_module", groups.expert_module.to(device), persistent=False)
        # float32 whatever the base dtype: the softmax decides the routing.
        self.router = nn.Linear(
            in_features, self.num_modules, bias=False, device=device, dtype=torch.float32
        )
        if router_init_std > 0:
            nn.init.normal_(self.router.weight, std=router_init_std)
        else:
            nn.init.zeros_(self.router.weight)
        self.k = min(top_k, self.num_modules)
        self.output_scale_mode = output_scale
        self.track_usage = False
        self.token_mask: torch.Tensor | None = None  # set per batch by MoleModel (padding = False)
        # Usage counters stay on the layer's device so tracking never forces a host sync.
        self.register_buffer(
            "usage_selections", torch.zeros(self.num_modules, device=device), persistent=False
        )
        self.register_buffer(
            "usage_gate_sum", torch.zeros(self.num_modules, device=device), persistent=False
        )
        self.register_buffer(
            "usage_tokens", torch.zeros((), dtype=torch.long, device=device), persistent=False
        )

    def scale(self) -> float:
        return float(self.k) if self.output_scale_mode == "k" else 1.0

    def gates(self, flat_x: torch.Tensor) -> torch.Tensor:
        """(T, N_ℓ) renormalised top-k gates over modules, zero for unselected modules."""
        probs = torch.softmax(self.router(flat_x.to(self.router.weight.dtype)), dim=-1)
        if self.k >= self.num_modules:
            return probs
        top_vals, top_idx = probs.topk(self.k, dim=-1)
        top_vals = top_vals / top_vals.sum(dim=-1, keepdim=True)
        return torch.zeros_like(probs).scatter(-1, top_idx, top_vals)

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        base_out = self.base_layer(x, *args, **kwargs)
        flat_x = x.reshape(-1, self.in_features)
        gates = self.gates(flat_x)
        expert_gates = gates.index_select(1, self.expert_module).to(x.dtype)  # (T, M)
        delta = ((flat_x @ self.expert_A.T) * expert_gates) @ self.expert_B.T
        if self.track_usage:
            self._accumulate(gates)
        return base_out + (delta * self.scale()).reshape(base_out.shape).to(base_out.dtype)

    def delta_weights(self) -> torch.Tensor:
        """(N_ℓ, d_out, d_in): each module's full update s_n B_n A_n (for inspection and tests)."""
        out = torch.zeros(
            self.num_modules,
            self.out_features,
            self.in_features,
            dtype=self.expert_A.dtype,
            device=self.expert_A.device,
        )
        for n in range(self.num_modules):
            cols = self.expert_module == n
            out[n] = self.expert_B[:, cols] @ self.expert_A[cols]
        return out

    # ----------------------------------------------------------------- usage
    def reset_usage(self) -> None:
        self.usage_selections.zero_()
        self.usage_gate_sum.zero_()
        self.usage_tokens.zero_()

    @torch.no_grad()
    def _accumulate(self, gates: torch.Tensor) -> None:
        mask = self.token_mask
        if mask is not None and mask.numel() == gates.shape[0]:
            gates = gates[mask.reshape(-1).to(gates.device)]
        selected = gates > 0 if self.k < self.num_modules else torch.ones_like(gates, dtype=bool)
        self.usage_selections += selected.sum(dim=0).to(self.usage_selections.dtype)
        self.usage_gate_sum += gates.sum(dim=0).to(self.usage_gate_sum.dtype)
        self.usage_tokens += gates.shape[0]

    def extra_repr(self) -> str:
        return (
            f"in={self.in_features}, out={self.out_features}, modules={self.num_modules}, "
            f"top_k={self.k}, output_scale={self.output_scale_mode}"
        )
