"""Federated fine-tuning methods behind one registry (``smartfed run --method NAME``).

Knowledge-free: ``fedit``, ``ffa_lora``, ``fedsa_lora`` (fresh PEFT LoRA). Knowledge reuse:
``merge``, ``lorahub``, ``mole``, and ``smartfed`` (rank-wise experts + EEQA). Each method is one
module; importing this package registers them all.
"""

from smartfed.engine.method import FederatedMethod, ServerLogic
from smartfed.methods import fedit, fedsa_lora, ffa_lora, mole, pool_mixing, smartfed  # noqa: F401
from smartfed.methods.registry import build_method, get_method, method_names, register_method

__all__ = [
    "FederatedMethod",
    "ServerLogic",
    "build_method",
    "get_method",
    "method_names",
    "register_method",
]
