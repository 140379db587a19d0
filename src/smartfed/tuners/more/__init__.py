"""Mixture of Rank-Wise Experts (MoRE): routers over frozen rank-1 experts of a LoRA pool."""

from smartfed.tuners.more.config import OUTPUT_SCALES, MoreConfig
from smartfed.tuners.more.layer import MoreLinear
from smartfed.tuners.more.model import ImportanceStats, MoreModel

__all__ = ["OUTPUT_SCALES", "ImportanceStats", "MoreConfig", "MoreLinear", "MoreModel"]
