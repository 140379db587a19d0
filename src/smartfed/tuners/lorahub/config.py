"""Configuration of the LoRAHub baseline (one trainable scalar weight per pool module)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from smartfed.errors import ConfigError
from smartfed.tuners.base import TunerConfig

INITS = ("uniform", "zeros")


@dataclass
class LoraHubConfig(TunerConfig):
    """How the N module weights w_n of ΔW_ℓ = Σ_n w_n s_n B_n A_n start and where they apply.

    init: "uniform" (default): w_n = 1/N, the average of the pool modules. "zeros": w = 0, the
        plain base model (gradients still reach every w_n through its module's update).
    target_modules: restrict LoRAHub to these short module names (e.g. ["q_proj"]); None = every
        matrix some pool module adapts. The weights stay shared by all wrapped matrices.
    """

    kind: ClassVar[str] = "LoRAHub"

    init: str = "uniform"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.init not in INITS:
            raise ConfigError(f"LoRAHub init must be one of {', '.join(INITS)}, got {self.init!r}")
