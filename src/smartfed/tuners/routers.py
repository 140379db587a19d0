"""Built-in router designs besides the paper's ``linear`` (docs/design.md §5): smaller routers.

Every design keeps per-token top-K over the rank-1 experts (gating stays in
:mod:`smartfed.tuners.routing`), fixed tensor shapes whatever K, float32 parameters whatever the
base dtype, and sends exactly its trainable parameters. Sizes per adapted matrix, M experts,
input width d_in, rank r (``router_rank``, default 4):

    =============  ==========================  ============================  ================
    design         logits                      communicated values           M=64, d_in=576
    =============  ==========================  ============================  ================
    linear         W x                         M·d_in                        36,864
    lowrank        U (V x)                     (d_in + M)·r                  2,560
    projection     W s                         M²                            4,096
    diag_lowrank   a ⊙ |s| + b + U (V s)       2M + 2·M·r                    640
    diagonal       a ⊙ |s| + b                 2M                            128
    =============  ==========================  ============================  ================

The designs on the experts (``needs_experts``; MoRE only) read the **normalised score**

    t = z ⊙ ‖B‖,   s = t / rms_token(t)          (z = A·x, which the layer computes anyway)

t_i is, up to sign, what expert i would add to the output (E_i(x) = B_i z_i, ‖E_i(x)‖ = |t_i|) and
the per-token normalisation makes s independent of the token's scale (a prototype M×M router did
clearly better on s than on raw z: docs/results.md). The diagonal designs put their per-expert scale
on |s|, not s: an expert (A_i, B_i) is the same expert as (−A_i, −B_i), which flips the sign of s_i
but not |s_i|, and |s_i| is the zero-shot preference for expert i. Starting with a = 1, b = 0 their
initial logits are |s|, so top-K starts on the experts that would add the most (|A_i·x|·‖B_i‖).
Learned maps of s (W s, U V s) can absorb the signs, so they read s itself.

Each design keeps its trained values in one float32 tensor ``weight`` (views name the parts):
every tensor sent costs Flower about 170 bytes besides its values (the .npy header and its key),
which would add 27 % to diag_lowrank's 2,560 bytes per matrix if its four parts went as four.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from smartfed.tuners.routing import RouterDesign, init_normal_, register_router

SCORE_EPS = 1e-8  # added to the token's mean square before the rsqrt (all-zero tokens stay 0)


def normalised_scores(z: torch.Tensor, b_norm: torch.Tensor) -> torch.Tensor:
    """(N, M) s = t / rms_token(t) with t = z ⊙ ‖B‖: each token's scores have unit RMS."""
    t = z * b_norm
    return t * torch.rsqrt(t.pow(2).mean(dim=-1, keepdim=True) + SCORE_EPS)


class ScoreRouter(RouterDesign):
    """Base of the designs on the normalised expert score s (keeps ‖B_j‖ as a float32 buffer)."""

    needs_experts = True

    def __init__(
        self,
        in_features: int,
        num_experts: int,
        *,
        init_std: float,
        expert_A: torch.Tensor | None = None,
        expert_B_norm: torch.Tensor | None = None,
        rank: int | None = None,
    ):
        super().__init__(
            in_features,
            num_experts,
            init_std=init_std,
            expert_A=expert_A,
            expert_B_norm=expert_B_norm,
            rank=rank,
        )
        if expert_B_norm is None or tuple(expert_B_norm.shape) != (num_experts,):
            raise ValueError(f"router '{self.name}' needs the ({num_experts},) norms ‖B_j‖")
        # Frozen, never saved nor sent: rebuilt from the pool on every client.
        self.register_buffer("b_norm", expert_B_norm.detach().float().clone(), persistent=False)

    def scores(self, z: torch.Tensor | None) -> torch.Tensor:
        """The normalised score s of the tokens (N, M)."""
        if z is None:
            raise ValueError(f"router '{self.name}' needs the expert projections z = A·x")
        return normalised_scores(z.float(), self.b_norm)


def _parameter(*shape: int) -> nn.Parameter:
    return nn.Parameter(torch.empty(*shape, dtype=torch.float32))


@register_router
class ProjectionRouter(ScoreRouter):
    """Logits W s, s = A x ⊙ ‖B‖ / rms per token, W ∈ R^{M×M} (M² values per matrix)."""

    name = "projection"

    def __init__(self, in_features: int, num_experts: int, *, init_std: float, **kwargs):
        super().__init__(in_features, num_experts, init_std=init_std, **kwargs)
        self.weight = _parameter(num_experts, num_experts)
        init_normal_(self.weight, init_std)  # like linear: N(0, init_std²), zeros for 0

    def forward(self, x: torch.Tensor, z: torch.Tensor | None) -> torch.Tensor:
        return F.linear(self.scores(z), self.weight)

    @classmethod
    def communicated_values(cls, in_features: int, num_experts: int) -> int:
        return num_experts * num_experts


@register_router
class LowRankRouter(RouterDesign):
    """Logits U V x, a rank-r linear on x, r = router_rank ((d_in + M)·r values per matrix)."""

    name = "lowrank"
    default_rank = 4

    def __init__(self, in_features: int, num_experts: int, *, init_std: float, **kwargs):
        super().__init__(in_features, num_experts, init_std=init_std, **kwargs)
        # One tensor [V | Uᵀ] of shape (r, d_in + M). V keeps each hidden unit at the scale of
        # one input coordinate (N(0, 1/d_in)); U is small (N(0, init_std²), zeros for 0) so the
        # start is near-uniform gates.
        self.weight = _parameter(self.rank, in_features + num_experts)
        with torch.no_grad():
            nn.init.normal_(self.weight[:, :in_features], std=in_features**-0.5)
            init_normal_(self.weight[:, in_features:], init_std)

    @property
    def down(self) -> torch.Tensor:
        """V (r, d_in)."""
        return self.weight[:, : self.in_features]

    @property
    def up(self) -> torch.Tensor:
        """U (M, r)."""
        return self.weight[:, self.in_features :].T

    def forward(self, x: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        return F.linear(F.linear(x, self.down), self.up)

    @classmethod
    def communicated_values(
        cls, in_features: int, num_experts: int, rank: int | None = None
    ) -> int:
        rank = cls.default_rank if rank is None else rank
        return (in_features + num_experts) * rank

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rank={self.rank}"


@register_router
class DiagonalRouter(ScoreRouter):
    """Logits a ⊙ |s| + b (s as for projection), from the zero-shot |s| (2M values per matrix)."""

    name = "diagonal"

    def __init__(self, in_features: int, num_experts: int, *, init_std: float, **kwargs):
        super().__init__(in_features, num_experts, init_std=init_std, **kwargs)
        # One tensor [a; b] (2, M), a = 1, b = 0: the initial logits are the prior |s| whatever
        # init_std. diag_lowrank appends [V; Uᵀ] (2r rows): V reads the signed s (unit RMS)
        # into r unit-scale features; U = 0 keeps the start at the prior |s| while still
        # getting gradients (through V s ≠ 0).
        rank = self.rank or 0
        self.weight = nn.Parameter(torch.zeros(2 + 2 * rank, num_experts, dtype=torch.float32))
        with torch.no_grad():
            self.weight[0] = 1.0
            if rank:
                nn.init.normal_(self.weight[2 : 2 + rank], std=num_experts**-0.5)

    @property
    def scale(self) -> torch.Tensor:
        """a (M,)."""
        return self.weight[0]

    @property
    def bias(self) -> torch.Tensor:
        """b (M,)."""
        return self.weight[1]

    def forward(self, x: torch.Tensor, z: torch.Tensor | None) -> torch.Tensor:
        return self.scores(z).abs() * self.scale + self.bias

    @classmethod
    def communicated_values(cls, in_features: int, num_experts: int) -> int:
        return 2 * num_experts


@register_router
class DiagLowRankRouter(DiagonalRouter):
    """Logits a ⊙ |s| + b + U V s, rank r = router_rank, from |s| (2M + 2·M·r values per matrix)."""

    name = "diag_lowrank"
    default_rank = 4  # the weight is [a; b; V; Uᵀ], (2 + 2r, M)

    @property
    def down(self) -> torch.Tensor:
        """V (r, M)."""
        return self.weight[2 : 2 + self.rank]

    @property
    def up(self) -> torch.Tensor:
        """U (M, r)."""
        return self.weight[2 + self.rank :].T

    def forward(self, x: torch.Tensor, z: torch.Tensor | None) -> torch.Tensor:
        s = self.scores(z)
        return s.abs() * self.scale + self.bias + F.linear(F.linear(s, self.down), self.up)

    @classmethod
    def communicated_values(
        cls, in_features: int, num_experts: int, rank: int | None = None
    ) -> int:
        rank = cls.default_rank if rank is None else rank
        return 2 * num_experts + 2 * num_experts * rank

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rank={self.rank}"
