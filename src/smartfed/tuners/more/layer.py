"""The MoRE layer: a frozen linear layer plus routed rank-1 experts (DESIGN §1.2).

Per token x (all experts of the matrix in one batched matmul, no Python loop over experts):

    p = softmax(router(x, A·x));  S = top-K(p);  ĝ_j = p_j / Σ_{k∈S} p_k
    h' = W0 x + c · Σ_{j∈S} ĝ_j E_j(x)

The sparse sum is written densely as ``((x Aᵀ) ⊙ G) Bᵀ`` where G holds ĝ at the selected experts
and zeros elsewhere. With M experts this costs the same as a rank-M LoRA; for the pool sizes we
target (M ≤ a few hundred) a dense matmul beats gathering per-token expert columns on CPU and GPU.
"""

from __future__ import annotations

import torch
from torch import nn

from smartfed.importance.scores import ScoreInputs, Scorer
from smartfed.tuners.routing import RoutedLinear


class MoreLinear(RoutedLinear):
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
        router: str = "linear",
        owners: tuple[tuple[str, int], ...] = (),
    ):
        super().__init__(
            base_layer,
            expert_A,
            expert_B,
            num_choices=int(expert_A.shape[0]),
            top_k=top_k,
            output_scale=output_scale,
            router=router,
            router_init_std=router_init_std,
            route_on_experts=True,
        )
        self.owners = owners  # expert j -> (pool module name, rank index)
        device = self.device
        self.register_buffer("quota", torch.tensor(self._k, dtype=torch.long), persistent=False)
        # The Python mirror self._k is what the forward reads: reading a device tensor per
        # forward would force a host/device sync on GPU. set_quota keeps the two equal.
        self.scorer = scorer
        self.track_importance = False
        # Importance sums stay on the layer's device: accumulating them never syncs the host.
        self.register_buffer(
            "importance_sum", torch.zeros((), dtype=torch.float64, device=device), persistent=False
        )
        self.register_buffer(
            "expert_gate_sum",
            torch.zeros(self.num_experts, dtype=torch.float64, device=device),
            persistent=False,
        )
        self.register_buffer(
            "importance_tokens", torch.zeros((), dtype=torch.long, device=device), persistent=False
        )

    # ----------------------------------------------------------------- quotas
    def set_quota(self, k: int) -> None:
        if not 1 <= k <= self.num_experts:
            raise ValueError(f"quota {k} outside [1, {self.num_experts}]")
        self.quota.fill_(int(k))
        self._k = int(k)

    # ----------------------------------------------------------------- forward
    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        base_out = self.base_layer(x, *args, **kwargs)
        flat_x = x.reshape(-1, self.in_features)
        projections = self.project(flat_x)  # (N, M): A[j, :] x for every expert
        gates = self.gates(flat_x, projections).to(x.dtype)
        delta = ((projections * gates) @ self.expert_B.T) * self.scale()
        if self.track_importance:
            self._accumulate(base_out.reshape(-1, self.out_features), delta, gates, projections)
        return base_out + delta.reshape(base_out.shape).to(base_out.dtype)

    # ----------------------------------------------------------------- importance
    def reset_importance(self) -> None:
        self.importance_sum.zero_()
        self.expert_gate_sum.zero_()
        self.importance_tokens.zero_()

    @torch.no_grad()
    def _accumulate(
        self,
        base_out: torch.Tensor,
        delta: torch.Tensor,
        gates: torch.Tensor,
        projections: torch.Tensor,
    ) -> None:
        inputs = ScoreInputs(
            base_out=base_out.float(),
            delta=delta.float(),
            gates=gates.float(),
            expert_norms=(projections.abs() * self.expert_B_norm).float(),
        )
        matrix_score, _ = self.scorer(inputs)  # per-token; the per-expert score is not kept
        matrix_score, gate_mass = matrix_score.double(), gates.double()
        keep = self.kept_tokens(base_out.shape[0], base_out.device)
        if keep is None:
            tokens = base_out.shape[0]
        else:  # padding is masked out, not indexed out: no host sync
            matrix_score = torch.where(keep, matrix_score, 0.0)
            gate_mass = torch.where(keep[:, None], gate_mass, 0.0)
            tokens = keep.sum()
        self.importance_sum += matrix_score.sum()
        self.expert_gate_sum += gate_mass.sum(dim=0)
        self.importance_tokens += tokens

    def extra_repr(self) -> str:
        return (
            f"in={self.in_features}, out={self.out_features}, experts={self.num_experts}, "
            f"quota={self._k}, output_scale={self.output_scale_mode}, router={self.router_name}"
        )
