"""Mixture of Rank-Wise Experts (MoRE): routers over frozen rank-1 experts of a LoRA pool."""

from smartfed.tuners.more.config import MoreConfig
from smartfed.tuners.more.layer import EXPERT_PATHS, MoreLinear
from smartfed.tuners.more.model import ImportanceStats, MoreModel
from smartfed.tuners.routing import OUTPUT_SCALES

__all__ = [
    "EXPERT_PATHS",
    "OUTPUT_SCALES",
    "ImportanceStats",
    "MoreConfig",
    "MoreLinear",
    "MoreModel",
]
