"""MoLE baseline: per-matrix routers choose among whole frozen pool modules (module-wise)."""

from smartfed.tuners.mole.config import OUTPUT_SCALES, MoleConfig
from smartfed.tuners.mole.layer import MoleLinear
from smartfed.tuners.mole.model import ModuleUsage, MoleModel

__all__ = ["OUTPUT_SCALES", "ModuleUsage", "MoleConfig", "MoleLinear", "MoleModel"]
