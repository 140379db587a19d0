"""Configuration of the LoRAHub baseline (one trainable scalar weight per pool module)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from smartfed.errors import ConfigError

INITS = ("uniform", "zeros")


@dataclass
class LoraHubConfig:
    """How the N module weights w_n of ΔW_ℓ = Σ_n w_n s_n B_n A_n start and where they apply.

    init: "uniform" (default): w_n = 1/N, the average of the pool modules. "zeros": w = 0, the
        plain base model (gradients still reach every w_n through its module's update).
    target_modules: restrict LoRAHub to these short module names (e.g. ["q_proj"]); None = every
        matrix some pool module adapts. The weights stay shared by all wrapped matrices.
    """

    init: str = "uniform"
    target_modules: list[str] | None = None

    def __post_init__(self) -> None:
        if self.init not in INITS:
            raise ConfigError(f"LoRAHub init must be one of {', '.join(INITS)}, got {self.init!r}")
        if self.target_modules is not None:
            if not self.target_modules or not all(isinstance(t, str) for t in self.target_modules):
                raise ConfigError("target_modules must be a non-empty list of module names or null")
            self.target_modules = list(self.target_modules)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "config") -> LoraHubConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(
                f"{source}: unknown LoRAHub config field(s) {', '.join(unknown)}; "
                f"expected {', '.join(sorted(known))}"
            )
        return cls(**data)
