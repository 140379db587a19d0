"""Configuration of the Mixture of Rank-Wise Experts (MoRE) tuner, validated on construction."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from smartfed.errors import ConfigError
from smartfed.importance.scores import IMPORTANCE_SCORES

OUTPUT_SCALES = ("k", "one", "learnable")


@dataclass
class MoreConfig:
    """How the routers pick and weight rank-1 experts.

    top_k: the average expert budget K per matrix; each matrix starts with min(K, M_ℓ) and EEQA
        may move budget between matrices later. A runtime quota, never a tensor shape.
    output_scale: c_ℓ in h' = W0 x + c_ℓ Σ ĝ_j E_j(x).
        "k" (default): c = current K_ℓ, so uniform gates give the plain sum of the K chosen
        rank-1 pieces (LoRA strength). "one": c = 1, a convex mix of experts.
        "learnable": one trainable scalar per matrix, initialised at the starting K_ℓ.
    router_init_std: std of the normal init of router weights. 0 gives uniform gates (then
        top-K ties are broken by expert index, so every token starts on the same experts).
    importance_score: name of a registered scorer (smartfed.importance.scores).
    k_min: smallest quota EEQA may give a matrix.
    target_modules: restrict MoRE to these short module names (e.g. ["q_proj"]); None = every
        matrix some pool module adapts.
    """

    top_k: int = 32
    output_scale: str = "k"
    router_init_std: float = 0.02
    importance_score: str = "cosine"
    k_min: int = 1
    target_modules: list[str] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 1:
            raise ConfigError(f"top_k (--topk_experts) must be an integer >= 1, got {self.top_k!r}")
        if self.output_scale not in OUTPUT_SCALES:
            raise ConfigError(
                f"output_scale must be one of {', '.join(OUTPUT_SCALES)}, got {self.output_scale!r}"
            )
        if not self.router_init_std >= 0:
            raise ConfigError(f"router_init_std must be >= 0, got {self.router_init_std!r}")
        if self.importance_score not in IMPORTANCE_SCORES:
            known = ", ".join(sorted(IMPORTANCE_SCORES))
            raise ConfigError(
                f"importance_score must be one of {known}, got {self.importance_score!r}"
            )
        if isinstance(self.k_min, bool) or not isinstance(self.k_min, int) or self.k_min < 1:
            raise ConfigError(f"k_min must be an integer >= 1, got {self.k_min!r}")
        if self.k_min > self.top_k:
            raise ConfigError(f"k_min ({self.k_min}) must not exceed top_k ({self.top_k})")
        if self.target_modules is not None:
            if not self.target_modules or not all(isinstance(t, str) for t in self.target_modules):
                raise ConfigError("target_modules must be a non-empty list of module names or null")
            self.target_modules = list(self.target_modules)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "config") -> MoreConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(
                f"{source}: unknown MoRE config field(s) {', '.join(unknown)}; "
                f"expected {', '.join(sorted(known))}"
            )
        return cls(**data)
