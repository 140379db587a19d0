"""Token routing shared by MoRE and MoLE: router designs, top-K gating and the output scale.

Per token x of a matrix with M choices (rank-1 experts for MoRE, whole pool modules for MoLE):

    p = softmax(router(x, z));  S = top-K(p);  ĝ_j = p_j / Σ_{k∈S} p_k  (j ∈ S, 0 elsewhere)
    h' = W0 x + c · Σ_j ĝ_j E_j(x)

A **router design** is one ``nn.Module`` class registered by name (``--router``-style settings
pick it through ``MoreConfig.router`` / ``MoleConfig.router``). Contract:

- class attribute ``name`` (the registry key) and ``needs_experts`` (True if it reads z);
- constructed as ``Design(in_features, num_experts, *, init_std, expert_A=None,
  expert_B_norm=None)`` inside a ``torch.device`` context of the layer's device, so tensors made
  without a ``device=`` argument land there; its parameters must be float32 (routers stay
  float32 whatever the base dtype: the softmax decides the routing); ``expert_B_norm`` is the
  (M,) float32 column norms ‖B_j‖ (LoRA scaling folded in);
- a design with a size hyper-parameter (the ``router_rank`` setting) sets the class attribute
  ``default_rank`` and also gets ``rank=`` (the user's value or that default); designs without
  one never get ``rank=`` and a given ``router_rank`` is refused (:func:`router_rank_for`);
- ``forward(x, z) -> logits (N, M)``: x the (N, d_in) float32 token inputs, z the (N, M) float32
  expert projections A·x (None for MoLE, whose experts are whole modules);
- classmethod ``communicated_values(in_features, num_experts) -> int`` (designs with a rank:
  ``communicated_values(in_features, num_experts, rank=None)``, None = ``default_rank``): the
  number of trained values it sends per matrix, the numel of its trainable parameters.

Subclass :class:`RouterDesign` and decorate with :func:`register_router`; that is all a new
design needs. Its parameters are saved and exchanged as ``<matrix>.router.<parameter>``. The
built-in designs besides ``linear`` live in :mod:`smartfed.tuners.routers`, loaded by the
registry functions on first use.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from smartfed.errors import ConfigError
from smartfed.tuners.experts import ExpertLinear

OUTPUT_SCALES = ("k", "one", "learnable", "k0")


# ---------------------------------------------------------------------- gating
def top_k_gates(probs: torch.Tensor, k: int) -> torch.Tensor:
    """(N, M) renormalised top-k gates from softmax probabilities, zero for unselected choices.

    With ``k >= M`` every choice is kept and the plain softmax is returned (it already sums to
    1). Ties are broken by ``torch.topk``: deterministically, not necessarily by lowest index,
    and the same way for every token (uniform gates put every token on the same k choices).
    """
    if k >= probs.shape[-1]:
        return probs
    top_vals, top_idx = probs.topk(k, dim=-1)
    top_vals = top_vals / top_vals.sum(dim=-1, keepdim=True)
    return torch.zeros_like(probs).scatter(-1, top_idx, top_vals)


def top_k_gates_with_indices(
    probs: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """:func:`top_k_gates` and the (N, k) indices of the kept choices (None when k >= M: every
    choice is kept). The sparse expert path gathers exactly these experts."""
    if k >= probs.shape[-1]:
        return probs, None
    top_vals, top_idx = probs.topk(k, dim=-1)
    top_vals = top_vals / top_vals.sum(dim=-1, keepdim=True)
    return torch.zeros_like(probs).scatter(-1, top_idx, top_vals), top_idx


def router_probs(router: nn.Module, x: torch.Tensor, z: torch.Tensor | None) -> torch.Tensor:
    """(N, M) float32 softmax over the router's logits (inputs cast to float32)."""
    x = x.to(torch.float32)
    if z is not None:
        z = z.to(torch.float32)
    return torch.softmax(router(x, z).to(torch.float32), dim=-1)


def route(router: nn.Module, x: torch.Tensor, z: torch.Tensor | None, k: int) -> torch.Tensor:
    """(N, M) float32 gates: softmax over the router's logits (float32), then top-k renormalised."""
    return top_k_gates(router_probs(router, x, z), k)


# ---------------------------------------------------------------------- output scale
def check_output_scale(mode: str, allowed: tuple[str, ...] = OUTPUT_SCALES) -> None:
    if mode not in allowed:
        raise ConfigError(f"output_scale must be one of {', '.join(allowed)}, got {mode!r}")


def scale_factor(
    mode: str, k: int, learned: torch.Tensor | None = None, initial_k: int | None = None
) -> torch.Tensor | float:
    """c_ℓ: ``"k"`` the current quota k, ``"one"`` 1, ``"learnable"`` the trained scalar,
    ``"k0"`` the matrix's initial quota, fixed for the run (a quota move then changes which
    experts a token may use, not the strength of the matrix's update)."""
    if mode == "k":
        return float(k)
    if mode == "k0":
        if initial_k is None:
            raise ValueError("output_scale 'k0' needs the matrix's initial quota")
        return float(initial_k)
    if mode == "one":
        return 1.0
    if learned is None:
        raise ValueError("output_scale 'learnable' needs its trained scalar")
    return learned


# ---------------------------------------------------------------------- router designs
def init_normal_(weight: torch.Tensor, std: float) -> None:
    """The routers' initialisation: N(0, std²), or zeros when std is 0 (uniform gates)."""
    if std > 0:
        nn.init.normal_(weight, std=std)
    else:
        nn.init.zeros_(weight)


class RouterDesign(nn.Module):
    """Base of the router designs: stores the sizes and checks it gets the experts it needs."""

    name: ClassVar[str] = ""
    needs_experts: ClassVar[bool] = False  # True: forward reads z = A·x (MoRE only)
    # Designs with a size hyper-parameter (``router_rank``) set its default here; None: none.
    default_rank: ClassVar[int | None] = None

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
        super().__init__()
        if self.needs_experts and expert_A is None:
            raise ConfigError(
                f"router '{self.name}' routes on the expert projections A·x and needs rank-1 "
                "experts; MoLE's experts are whole modules: use a router on x (e.g. 'linear')"
            )
        self.in_features = in_features
        self.num_experts = num_experts
        self.rank = check_rank(self.name, self.default_rank, rank)

    def forward(self, x: torch.Tensor, z: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError

    @classmethod
    def communicated_values(cls, in_features: int, num_experts: int) -> int:
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"in={self.in_features}, experts={self.num_experts}"


ROUTER_DESIGNS: dict[str, type[nn.Module]] = {}


def register_router(design: type[nn.Module]) -> type[nn.Module]:
    """Class decorator: make ``design`` selectable by its ``name``."""
    name = getattr(design, "name", None)
    if not (isinstance(design, type) and issubclass(design, nn.Module)):
        raise TypeError(f"a router design must be an nn.Module class, got {design!r}")
    if not isinstance(name, str) or not name:
        raise ValueError(f"router design {design.__name__} needs a non-empty string 'name'")
    if not callable(getattr(design, "communicated_values", None)):
        raise ValueError(f"router design '{name}' needs a classmethod communicated_values")
    _load_builtin_designs()  # a plugin may not take a built-in's name before it loads
    if name in ROUTER_DESIGNS:
        raise ValueError(f"router design '{name}' is registered twice")
    ROUTER_DESIGNS[name] = design
    return design


def _load_builtin_designs() -> None:
    """Register the built-in designs of :mod:`smartfed.tuners.routers` (imported on first use:
    that module imports this one, so a module-level import here would be a cycle)."""
    import smartfed.tuners.routers  # noqa: F401


def router_names() -> list[str]:
    _load_builtin_designs()
    return sorted(ROUTER_DESIGNS)


def get_router(name: str) -> type[nn.Module]:
    _load_builtin_designs()
    try:
        return ROUTER_DESIGNS[name]
    except (KeyError, TypeError):
        raise ConfigError(
            f"unknown router design {name!r}; known: {', '.join(router_names())}"
        ) from None


def check_rank(name: str, default_rank: int | None, rank: int | None) -> int | None:
    """The rank a design uses: ``rank``, or ``default_rank`` when None; None for designs
    without a rank (``default_rank`` None), which refuse a given one."""
    if default_rank is None:
        if rank is not None:
            raise ConfigError(
                f"router_rank does not apply to router '{name}' (it has no rank); leave it unset "
                "or pick a design with one (lowrank, diag_lowrank)"
            )
        return None
    if rank is None:
        return default_rank
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ConfigError(f"router_rank must be an integer >= 1, got {rank!r}")
    return rank


def router_rank_for(name: str, rank: int | None) -> int | None:
    """The rank router design ``name`` is built with (see :func:`check_rank`)."""
    return check_rank(name, getattr(get_router(name), "default_rank", None), rank)


@register_router
class LinearRouter(RouterDesign):
    """The paper's router: logits = W x, W ∈ R^{M×d_in}, no bias (M × d_in values per matrix)."""

    name = "linear"

    def __init__(
        self,
        in_features: int,
        num_experts: int,
        *,
        init_std: float,
        expert_A: torch.Tensor | None = None,
        expert_B_norm: torch.Tensor | None = None,
    ):
        super().__init__(in_features, num_experts, init_std=init_std)
        # Named "weight" directly on the design: saved and sent as "<matrix>.router.weight".
        self.weight = nn.Parameter(torch.empty(num_experts, in_features, dtype=torch.float32))
        # nn.Linear's default draw first, though overwritten below: routers used to be built as
        # nn.Linear, and keeping the same RNG draws keeps every seeded run's routers unchanged.
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        init_normal_(self.weight, init_std)

    def forward(self, x: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        return F.linear(x, self.weight)

    @classmethod
    def communicated_values(cls, in_features: int, num_experts: int) -> int:
        return num_experts * in_features


# ---------------------------------------------------------------------- routed layer
class RoutedLinear(ExpertLinear):
    """An expert layer with a float32 router over ``num_choices`` and top-k gating (MoRE, MoLE).

    ``expert_B`` is the pool's (float32) B before casting; with ``route_on_experts`` the router
    design gets the experts (``expert_A`` and the column norms ‖B_j‖) and the layer hands it
    z = A·x on every call.
    """

    def __init__(
        self,
        base_layer: nn.Linear,
        expert_A: torch.Tensor,
        expert_B: torch.Tensor,
        *,
        num_choices: int,
        top_k: int,
        output_scale: str,
        router: str,
        router_init_std: float,
        route_on_experts: bool,
        router_rank: int | None = None,
    ):
        super().__init__(base_layer, expert_A, expert_B)
        check_output_scale(output_scale)
        self.num_choices = num_choices
        self.route_on_experts = route_on_experts
        device = self.device
        if route_on_experts:
            self.register_buffer(
                "expert_B_norm",
                expert_B.norm(dim=0).to(device, self.expert_A.dtype),
                persistent=False,
            )
        design = get_router(router)
        # Only designs with a rank get rank= (plugins without one need not accept it).
        rank = router_rank_for(router, router_rank)
        options = {} if rank is None else {"rank": rank}
        with torch.device(device):
            self.router = design(
                self.in_features,
                num_choices,
                init_std=router_init_std,
                expert_A=self.expert_A if route_on_experts else None,
                # float32 from the pool's float32 B, not the base-dtype buffer above
                expert_B_norm=expert_B.norm(dim=0).to(device, torch.float32)
                if route_on_experts
                else None,
                **options,
            )
        wrong = [n for n, p in self.router.named_parameters() if p.dtype != torch.float32]
        if wrong:
            raise ConfigError(f"router '{router}' must keep float32 parameters, not {wrong}")
        self.router_name = router
        self._k = min(top_k, num_choices)
        self.initial_k = self._k  # c for output_scale "k0": later quota changes leave it
        self.output_scale_mode = output_scale
        if output_scale == "learnable":
            self.output_scale = nn.Parameter(torch.tensor(float(self._k), device=device))

    @property
    def k(self) -> int:
        """The number of choices each token keeps."""
        return self._k

    def scale(self) -> torch.Tensor | float:
        return scale_factor(
            self.output_scale_mode, self._k, getattr(self, "output_scale", None), self.initial_k
        )

    def project(self, flat_x: torch.Tensor) -> torch.Tensor:
        """(N, M) A_j·x for every rank-1 expert, in the base dtype."""
        return flat_x @ self.expert_A.T

    def gates(self, flat_x: torch.Tensor, projections: torch.Tensor | None = None) -> torch.Tensor:
        """(N, num_choices) float32 renormalised top-k gates, zero for unselected choices."""
        z = None
        if self.route_on_experts:
            z = self.project(flat_x) if projections is None else projections
        return route(self.router, flat_x, z, self._k)

    def gates_with_indices(
        self, flat_x: torch.Tensor, projections: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """:meth:`gates` and the (N, k) indices of each token's kept choices (None: all kept)."""
        z = None
        if self.route_on_experts:
            z = self.project(flat_x) if projections is None else projections
        return top_k_gates_with_indices(router_probs(self.router, flat_x, z), self._k)
