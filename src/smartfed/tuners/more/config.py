"""Configuration of the Mixture of Rank-Wise Experts (MoRE) tuner, validated on construction."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from smartfed.errors import ConfigError
from smartfed.importance.scores import IMPORTANCE_SCORES
from smartfed.tuners.base import TunerConfig
from smartfed.tuners.more.layer import EXPERT_PATHS
from smartfed.tuners.routing import OUTPUT_SCALES, check_output_scale, get_router, router_rank_for


@dataclass
class MoreConfig(TunerConfig):
    """How the routers pick and weight rank-1 experts.

    top_k: the average expert budget K per matrix; each matrix starts with min(K, M_ℓ) and EEQA
        may move budget between matrices later. A runtime quota, never a tensor shape.
    output_scale: c_ℓ in h' = W0 x + c_ℓ Σ ĝ_j E_j(x).
        "k" (default): c = current K_ℓ, so uniform gates give the plain sum of the K chosen
        rank-1 pieces (LoRA strength). "one": c = 1, a convex mix of experts.
        "learnable": one trainable scalar per matrix, initialised at the starting K_ℓ.
        "k0": c = the starting K_ℓ = min(top_k, M_ℓ), fixed for the run: an EEQA quota move
        changes which experts a token may use, not the scale of the matrix's update.
    router_init_std: std of the normal init of router weights. 0 gives uniform gates (then
        torch.topk breaks the top-K ties the same way for every token: all start on the same
        experts).
    importance_score: name of a registered scorer (smartfed.importance.scores): "cosine"
        (default), "cosine_share", "relative_norm", or the gradient-based "taylor".
    router: name of a registered router design (smartfed.tuners.routing); "linear" is the
        paper's W ∈ R^{M×d_in} on the matrix input.
    router_rank: the rank of designs that have one (lowrank, diag_lowrank); None: the design's
        default (stored resolved). Refused for designs without a rank.
    residual_rank: rank r of a fresh LoRA trained next to the routers in every MoRE layer
        (float32 A Kaiming-uniform from the run seed, B = 0, scaling alpha / r with alpha = 2r,
        i.e. 2), independent of the quotas and gates; 0 (default): none, and no parameter or
        random draw is made.
    expert_path: how the selected experts are summed, "dense" (default: ((A x) ⊙ G) Bᵀ, the cost
        of a rank-M LoRA whatever K) or "sparse" (only the K selected columns of B per token);
        the same function, a different cost (see :mod:`smartfed.tuners.more.layer`).
    target_modules: restrict MoRE to these short module names (e.g. ["q_proj"]); None = every
        matrix some pool module adapts.
    """

    kind: ClassVar[str] = "MoRE"
    # k_min was a MoRE field until EEQA's floor became a method setting (RunConfig.k_min);
    # more_config.json files of runs from before still carry it.
    retired_fields: ClassVar[tuple[str, ...]] = ("k_min",)

    top_k: int = 32
    output_scale: str = "k"
    router_init_std: float = 0.02
    importance_score: str = "cosine"
    router: str = "linear"
    router_rank: int | None = None
    residual_rank: int = 0
    expert_path: str = "dense"

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 1:
            raise ConfigError(f"top_k (--topk_experts) must be an integer >= 1, got {self.top_k!r}")
        check_output_scale(self.output_scale, OUTPUT_SCALES)
        if not self.router_init_std >= 0:
            raise ConfigError(f"router_init_std must be >= 0, got {self.router_init_std!r}")
        if self.importance_score not in IMPORTANCE_SCORES:
            known = ", ".join(sorted(IMPORTANCE_SCORES))
            raise ConfigError(
                f"importance_score must be one of {known}, got {self.importance_score!r}"
            )
        get_router(self.router)
        self.router_rank = router_rank_for(self.router, self.router_rank)
        rank = self.residual_rank
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 0:
            raise ConfigError(f"residual_rank must be an integer >= 0, got {rank!r}")
        if self.expert_path not in EXPERT_PATHS:
            raise ConfigError(
                f"expert_path must be one of {', '.join(EXPERT_PATHS)}, got {self.expert_path!r}"
            )
