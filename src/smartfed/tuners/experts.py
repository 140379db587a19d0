"""Frozen pool experts as the tuner layers hold them, and their grouping by owner module.

Every tuner layer wraps a frozen base linear layer and the stacked rank-1 experts of the pool at
that matrix (``expert_A`` (M, d_in), ``expert_B`` (d_out, M), LoRA scaling folded into B). MoRE
routes among the rank-1 experts themselves; MoLE and LoRAHub treat a whole pool module as the
unit of choice and need the experts grouped by the module that owns them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from smartfed.pool import LoraPool


@dataclass(frozen=True)
class ModuleGroups:
    """The rank-1 experts of one matrix, each tagged with the pool module that owns it.

    Summing expert columns j of one module n gives back that module's full update:
    ``Σ_{j: owner(j)=n} expert_B[:, j] expert_A[j] = s_n B_n A_n``.
    """

    matrix_name: str
    expert_A: torch.Tensor  # (M, d_in)
    expert_B: torch.Tensor  # (d_out, M), LoRA scaling folded in
    modules: tuple[str, ...]  # the N_ℓ pool modules adapting this matrix, in pool order
    pool_index: tuple[int, ...]  # position of each of those modules in the pool (0..N-1)
    expert_module: torch.Tensor  # (M,) long: local module index (0..N_ℓ-1) of expert j

    @property
    def num_modules(self) -> int:
        return len(self.modules)

    @property
    def num_experts(self) -> int:
        return int(self.expert_A.shape[0])

    @property
    def expert_pool_index(self) -> torch.Tensor:
        """(M,) long: pool position (0..N-1) of the module owning expert j."""
        return torch.tensor(self.pool_index, dtype=torch.long)[self.expert_module]

    def ranks(self) -> tuple[int, ...]:
        """Rank of each local module at this matrix."""
        counts = torch.bincount(self.expert_module, minlength=self.num_modules)
        return tuple(int(c) for c in counts)


def group_experts_by_module(pool: LoraPool, matrix_name: str) -> ModuleGroups:
    """Stack the pool's experts of ``matrix_name`` (as ``pool.experts``) and tag their owners."""
    experts = pool.experts(matrix_name)
    position = {name: i for i, name in enumerate(pool.names)}
    local: dict[str, int] = {}  # insertion order = pool order, since experts are pool-ordered
    expert_module = [local.setdefault(owner, len(local)) for owner, _ in experts.owners]
    return ModuleGroups(
        matrix_name=matrix_name,
        expert_A=experts.expert_A,
        expert_B=experts.expert_B,
        modules=tuple(local),
        pool_index=tuple(position[name] for name in local),
        expert_module=torch.tensor(expert_module, dtype=torch.long),
    )


def compute_dtype(base_layer: nn.Module) -> torch.dtype:
    """The dtype a base linear layer computes in: its weights', or for a quantized layer
    (bitsandbytes 4-bit stores packed integers) the float dtype it de-quantizes to."""
    dtype = base_layer.weight.dtype
    if dtype.is_floating_point:
        return dtype
    return getattr(base_layer, "compute_dtype", None) or torch.float32


class ExpertLinear(nn.Module):
    """A frozen linear layer plus the frozen stacked rank-1 experts of its matrix.

    The experts are non-persistent buffers in the base layer's dtype and device: never trained,
    never saved, never communicated. ``token_mask`` is set per batch by the tuner (padding =
    False) so statistics count real tokens only.
    """

    def __init__(self, base_layer: nn.Linear, expert_A: torch.Tensor, expert_B: torch.Tensor):
        super().__init__()
        num_experts, in_features = expert_A.shape
        if expert_B.shape != (base_layer.out_features, num_experts):
            raise ValueError(f"expert_B shape {tuple(expert_B.shape)} does not match expert_A")
        self.base_layer = base_layer
        self.in_features = in_features
        self.out_features = base_layer.out_features
        self.num_experts = num_experts
        dtype, device = compute_dtype(base_layer), base_layer.weight.device
        self.register_buffer("expert_A", expert_A.to(device, dtype), persistent=False)
        self.register_buffer("expert_B", expert_B.to(device, dtype), persistent=False)
        self.token_mask: torch.Tensor | None = None

    @property
    def device(self) -> torch.device:
        return self.base_layer.weight.device

    def kept_tokens(self, num_tokens: int, device: torch.device) -> torch.Tensor | None:
        """(N,) bool: which of the N flattened tokens are real, or None when all count.

        A mask of another size (e.g. one cached generation step) is ignored. Used as a mask in
        ``torch.where`` rather than as an index, so statistics never force a host sync.
        """
        mask = self.token_mask
        if mask is None or mask.numel() != num_tokens:
            return None
        return mask.reshape(-1).to(device)
