"""Federated fine-tuning methods behind one registry (``smartfed run --method NAME``).

Knowledge-free: ``fedit``, ``ffa_lora``, ``fedsa_lora`` (fresh PEFT LoRA), ``fed_sb`` (frozen A
and B, a trained r x r R). Knowledge reuse: ``merge``, ``lorahub``, ``pool_bridge``, ``mole``,
and ``smartfed`` (rank-wise experts + EEQA). Each method is one module; importing this package
registers them all.
"""

from smartfed.engine.method import FederatedMethod, ServerLogic
from smartfed.methods import (  # noqa: F401
    fed_sb,
    fedit,
    fedsa_lora,
    ffa_lora,
    mole,
    pool_bridge,
    pool_mixing,
    smartfed,
)
from smartfed.methods.registry import build_method, get_method, method_names, register_method

__all__ = [
    "FederatedMethod",
    "ServerLogic",
    "build_method",
    "get_method",
    "method_names",
    "register_method",
]
