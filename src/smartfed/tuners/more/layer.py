"""The MoRE layer: a frozen linear layer plus routed rank-1 experts (docs/design.md §1.2).

Per token x (all experts of the matrix in one batched matmul, no Python loop over experts):

    p = softmax(router(x, A·x));  S = top-K(p);  ĝ_j = p_j / Σ_{k∈S} p_k
    h' = W0 x + c · Σ_{j∈S} ĝ_j E_j(x)

Two equivalent ways to sum the selected experts (``expert_path``):

- ``"dense"`` (default): ``((x Aᵀ) ⊙ G) Bᵀ`` where G holds ĝ at the selected experts and zeros
  elsewhere. With M experts this costs the same as a rank-M LoRA whatever K.
- ``"sparse"``: per token, only the K selected columns of B are read and summed, weighted by
  ĝ_j (A_j·x) (``F.embedding_bag`` over the rows of Bᵀ: no (N, K, d_out) tensor is made). The
  projections A·x of all M experts are still computed, since the router designs on the experts
  read them and the linear router's own W x costs as much; so K < M saves at most the B side.
  Which path is faster depends on the machine, K and M: ``benchmarks/step_cost.py --suite
  sparse`` measures it (results in ``benchmarks/results/README.md``). The gates a scorer sees
  are the same; a gradient scorer's ∂L/∂ĝ is zero off the selected experts on this path (the
  built-in scorers multiply it by ĝ = 0 there).

Importance (``track_importance``) accumulates on the layer's device: forward scorers in the
forward pass; gradient scorers (``needs_grad``, e.g. ``taylor``) through a hook on the gates that
the training step's own backward pass fires (no extra pass, no host sync per step).

Optional residual LoRA (:meth:`MoreLinear.add_residual_lora`, ``MoreConfig.residual_rank``): a
fresh float32 rank-r LoRA trained with the routers, added outside the routing,

    h'' = h' + s_r · B_r A_r x,   s_r = alpha / r with alpha = 2r (PEFT's scaling: s_r = 2)

independent of the quotas and gates, and not part of the importance scores (which measure the
experts). A Kaiming-uniform as PEFT's lora_A, B = 0: the layer starts as the same function.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from smartfed.importance.scores import GateGradInputs, ImportanceScore, ScoreInputs
from smartfed.tuners.routing import RoutedLinear

#: The residual LoRA's alpha per unit of rank: alpha = 2r, so its scaling alpha / r is 2.
RESIDUAL_ALPHA_PER_RANK = 2.0
#: How the selected experts are summed (module docstring): same function, different cost.
EXPERT_PATHS = ("dense", "sparse")


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
        scorer: ImportanceScore,
        router: str = "linear",
        owners: tuple[tuple[str, int], ...] = (),
        router_rank: int | None = None,
        expert_path: str = "dense",
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
            router_rank=router_rank,
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
        self.residual_rank = 0  # add_residual_lora sets it; 0: no residual parameters exist
        self.expert_path = "dense"
        self.set_expert_path(expert_path)

    # ----------------------------------------------------------------- expert path
    def set_expert_path(self, path: str) -> None:
        """Sum the selected experts densely or sparsely (module docstring); same function."""
        if path not in EXPERT_PATHS:
            raise ValueError(f"expert_path must be one of {', '.join(EXPERT_PATHS)}, got {path!r}")
        if path == "sparse" and "expert_B_rows" not in self._buffers:
            # Bᵀ as rows (M, d_out), contiguous (a transposed view is several times slower in
            # embedding_bag) and float32 (CUDA's embedding_bag has no bfloat16 backward for the
            # per-token weights). Frozen, never saved; M·d_out values, small beside the model.
            rows = self.expert_B.T.float().contiguous()
            self.register_buffer("expert_B_rows", rows, persistent=False)
        elif path == "dense" and "expert_B_rows" in self._buffers:
            del self._buffers["expert_B_rows"]
        self.expert_path = path

    def sparse_delta(
        self, projections: torch.Tensor, gates: torch.Tensor, indices: torch.Tensor
    ) -> torch.Tensor:
        """(N, d_out) Σ_{j∈S} ĝ_j (A_j·x) B_j, reading only the K selected columns of B.

        ``gates`` are the dense (N, M) gates (zero off S), so the gradient reaches them (and a
        gradient scorer's hook on them) exactly as on the dense path, at the selected experts."""
        rows = self.expert_B_rows.float()  # no-op unless the model was cast after set-up
        weights = projections.gather(1, indices).float() * gates.gather(1, indices).float()
        delta = nn.functional.embedding_bag(indices, rows, per_sample_weights=weights, mode="sum")
        return delta.to(projections.dtype)

    # ----------------------------------------------------------------- residual LoRA
    def add_residual_lora(self, rank: int) -> None:
        """Add a trainable float32 rank-``rank`` LoRA (``residual_A`` (r, d_in) Kaiming-uniform
        from the global RNG, as PEFT's lora_A; ``residual_B`` (d_out, r) zeros) next to the
        routed experts. Its output is scaled by alpha / r with alpha = 2r."""
        if self.residual_rank:
            raise ValueError("this layer already has a residual LoRA")
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
            raise ValueError(f"residual rank must be an integer >= 1, got {rank!r}")
        device = self.device
        weight_a = torch.empty(rank, self.in_features, dtype=torch.float32, device=device)
        nn.init.kaiming_uniform_(weight_a, a=math.sqrt(5))
        self.residual_A = nn.Parameter(weight_a)
        self.residual_B = nn.Parameter(
            torch.zeros(self.out_features, rank, dtype=torch.float32, device=device)
        )
        self.residual_rank = rank
        alpha = RESIDUAL_ALPHA_PER_RANK * rank
        self.residual_scale = alpha / rank  # PEFT's LoRA scaling

    def residual(self, flat_x: torch.Tensor) -> torch.Tensor:
        """(N, d_out) float32 s_r · B_r A_r x of the residual LoRA."""
        hidden = flat_x.to(torch.float32) @ self.residual_A.T
        return (hidden @ self.residual_B.T) * self.residual_scale

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
        indices = None
        if self.expert_path == "sparse":
            gates, indices = self.gates_with_indices(flat_x, projections)
            gates = gates.to(x.dtype)
        else:
            gates = self.gates(flat_x, projections).to(x.dtype)
        if indices is None:  # dense path, or K = M (every expert is selected: nothing to skip)
            delta = ((projections * gates) @ self.expert_B.T) * self.scale()
        else:
            delta = self.sparse_delta(projections, gates, indices) * self.scale()
        if self.track_importance:
            flat_out = base_out.reshape(-1, self.out_features)
            keep = self.kept_tokens(flat_out.shape[0], flat_out.device)
            self._accumulate(flat_out, delta, gates, projections, keep)
            if self.scorer.needs_grad and gates.requires_grad:
                # The mask is captured now: the tuner clears token_mask before backward runs.
                held = gates.detach()
                gates.register_hook(lambda grad: self._accumulate_grad(held, grad, keep))
        out = base_out + delta.reshape(base_out.shape).to(base_out.dtype)
        if self.residual_rank:
            out = out + self.residual(flat_x).reshape(base_out.shape).to(base_out.dtype)
        return out

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
        keep: torch.Tensor | None,
    ) -> None:
        gate_mass = gates.double()
        if keep is None:
            tokens = base_out.shape[0]
        else:  # padding is masked out, not indexed out: no host sync
            gate_mass = torch.where(keep[:, None], gate_mass, 0.0)
            tokens = keep.sum()
        if not self.scorer.needs_grad:
            inputs = ScoreInputs(
                base_out=base_out.float(),
                delta=delta.float(),
                gates=gates.float(),
                expert_norms=(projections.abs() * self.expert_B_norm).float(),
            )
            matrix_score, _ = self.scorer(inputs)  # per-token; the per-expert score is not kept
            matrix_score = matrix_score.double()
            if keep is not None:
                matrix_score = torch.where(keep, matrix_score, 0.0)
            self.importance_sum += matrix_score.sum()
        self.expert_gate_sum += gate_mass.sum(dim=0)
        self.importance_tokens += tokens

    @torch.no_grad()
    def _accumulate_grad(
        self, gates: torch.Tensor, grad: torch.Tensor, keep: torch.Tensor | None
    ) -> None:
        """Gate hook of a gradient scorer: add its score of this step's tokens (returns None,
        so the gradient itself flows on unchanged)."""
        inputs = GateGradInputs(gates=gates.float(), gate_grads=grad.float())
        matrix_score, _ = self.scorer(inputs)
        matrix_score = matrix_score.double()
        if keep is not None:
            matrix_score = torch.where(keep, matrix_score, 0.0)
        self.importance_sum += matrix_score.sum()

    def extra_repr(self) -> str:
        return (
            f"in={self.in_features}, out={self.out_features}, experts={self.num_experts}, "
            f"quota={self._k}, output_scale={self.output_scale_mode}, router={self.router_name}"
            + (", expert_path=sparse" if self.expert_path == "sparse" else "")
            + (f", residual_rank={self.residual_rank}" if self.residual_rank else "")
        )
