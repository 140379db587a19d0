"""LoRAHub baseline: Σ_n w_n ΔW_n over the frozen pool modules, one trainable w_n per module."""

from smartfed.tuners.lorahub.config import INITS, LoraHubConfig
from smartfed.tuners.lorahub.layer import LoraHubLinear, LoraHubWeights
from smartfed.tuners.lorahub.model import WEIGHTS_KEY, LoraHubModel

__all__ = [
    "INITS",
    "WEIGHTS_KEY",
    "LoraHubConfig",
    "LoraHubLinear",
    "LoraHubModel",
    "LoraHubWeights",
]
