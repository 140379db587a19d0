"""Configuration of the MoLE baseline (module-wise routing over whole pool modules)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from smartfed.errors import ConfigError
from smartfed.tuners.base import TunerConfig
from smartfed.tuners.routing import get_router

OUTPUT_SCALES = ("one", "k")


@dataclass
class MoleConfig(TunerConfig):
    """How the per-matrix routers pick and weight whole pool modules.

    top_k: modules kept per token and matrix; clipped to N_ℓ, the number of pool modules
        adapting that matrix. The kept gates are renormalised to sum to 1 (so with top_k = 1
        the gate is the constant 1 and the router gets no gradient from the task loss).
    output_scale: c in h' = W0 x + c Σ_{n∈S} ĝ_n B_n A_n x.
        "one" (default): a convex mix of module updates; top_k = N with uniform gates is the
        average of the modules. "k": c = the (clipped) top_k, so uniform gates sum the modules.
    router_init_std: std of the normal init of router weights; 0 gives uniform gates (torch.topk
        then breaks the top-k ties the same way for every token).
    router: name of a registered router design (smartfed.tuners.routing) that reads only the
        token input x (MoLE has no rank-1 expert projections to offer).
    target_modules: restrict MoLE to these short module names (e.g. ["q_proj"]); None = every
        matrix some pool module adapts.
    """

    kind: ClassVar[str] = "MoLE"

    top_k: int = 2
    output_scale: str = "one"
    router_init_std: float = 0.02
    router: str = "linear"

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 1:
            raise ConfigError(f"MoLE top_k must be an integer >= 1, got {self.top_k!r}")
        if self.output_scale not in OUTPUT_SCALES:
            raise ConfigError(
                f"MoLE output_scale must be one of {', '.join(OUTPUT_SCALES)}, "
                f"got {self.output_scale!r}"
            )
        if (
            isinstance(self.router_init_std, bool)
            or not isinstance(self.router_init_std, int | float)
            or not math.isfinite(self.router_init_std)
            or self.router_init_std < 0
        ):
            raise ConfigError(
                f"MoLE router_init_std must be a finite number >= 0, got {self.router_init_std!r}"
            )
        get_router(self.router)
