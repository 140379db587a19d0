"""The pool bridge: the pool's own B and A with a trainable low-rank mixing R between them."""

from smartfed.tuners.bridge.layer import BridgeLinear
from smartfed.tuners.bridge.model import BridgeConfig, BridgeModel

__all__ = ["BridgeConfig", "BridgeLinear", "BridgeModel"]
