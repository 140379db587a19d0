"""The MoLE layer: a frozen linear layer plus a router over the whole pool modules adapting it.

Per token x, with N_ℓ modules at this matrix and module updates s_n B_n A_n:

    p = softmax(router(x));  S = top-k(p);  ĝ_n = p_n / Σ_{m∈S} p_m
    h' = W0 x + c · Σ_{n∈S} ĝ_n s_n B_n A_n x

Module n's update is the sum of its rank-1 experts, so giving every rank-1 expert its owner's gate
turns the module mixture into one dense low-rank product ``((x Aᵀ) ⊙ G[:, owner]) Bᵀ`` over the
stacked experts: the cost of one LoRA of rank Σ r_n, no loop over modules or tokens.
"""

from __future__ import annotations

import torch
from torch import nn

from smartfed.tuners.experts import ModuleGroups
from smartfed.tuners.routing import RoutedLinear


class MoleLinear(RoutedLinear):
    def __init__(
        self,
        base_layer: nn.Linear,
        groups: ModuleGroups,
        *,
        top_k: int,
        output_scale: str,
        router_init_std: float,
        router: str = "linear",
    ):
        super().__init__(
            base_layer,
            groups.expert_A,
            groups.expert_B,
            num_choices=groups.num_modules,
            top_k=top_k,
            output_scale=output_scale,
            router=router,
            router_init_std=router_init_std,
            route_on_experts=False,
        )
        self.module_names = groups.modules
        self.num_modules = groups.num_modules
        device = self.device
        self.register_buffer("expert_module", groups.expert_module.to(device), persistent=False)
        self.track_usage = False
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

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        base_out = self.base_layer(x, *args, **kwargs)
        flat_x = x.reshape(-1, self.in_features)
        gates = self.gates(flat_x)  # (T, N_ℓ) over modules
        expert_gates = gates.index_select(1, self.expert_module).to(x.dtype)  # (T, M)
        delta = (self.project(flat_x) * expert_gates) @ self.expert_B.T
        if self.track_usage:
            self._accumulate(gates)
        return base_out + (delta * self.scale()).reshape(base_out.shape).to(base_out.dtype)

    # ----------------------------------------------------------------- usage
    def reset_usage(self) -> None:
        self.usage_selections.zero_()
        self.usage_gate_sum.zero_()
        self.usage_tokens.zero_()

    @torch.no_grad()
    def _accumulate(self, gates: torch.Tensor) -> None:
        if self.k < self.num_modules:
            selected = gates > 0
        else:
            selected = torch.ones_like(gates, dtype=torch.bool)
        keep = self.kept_tokens(gates.shape[0], gates.device)
        if keep is None:
            tokens = gates.shape[0]
        else:  # padding is masked out, not indexed out: no host sync
            selected = selected & keep[:, None]
            gates = torch.where(keep[:, None], gates, 0.0)
            tokens = keep.sum()
        self.usage_selections += selected.sum(dim=0).to(self.usage_selections.dtype)
        self.usage_gate_sum += gates.sum(dim=0).to(self.usage_gate_sum.dtype)
        self.usage_tokens += tokens

    def extra_repr(self) -> str:
        return (
            f"in={self.in_features}, out={self.out_features}, modules={self.num_modules}, "
            f"top_k={self.k}, output_scale={self.output_scale_mode}, router={self.router_name}"
        )
