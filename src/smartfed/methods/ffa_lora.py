"""FFA-LoRA: A frozen at its random init (identical on every client), only B trained and averaged.

Sun et al., 2024, "Improving LoRA in Privacy-preserving Federated Learning". Freezing A makes
the average of the clients' updates exactly the update of the averaged B, and halves traffic.
The paper pairs it with a larger learning rate; SmartFed keeps the run's --learning_rate so all
methods share one setting (raise it for FFA-LoRA with --learning_rate if you want the paper's).
"""

from __future__ import annotations

from smartfed.methods.fresh_lora import FreshLoraMethod
from smartfed.methods.registry import register_method


@register_method
class FFALora(FreshLoraMethod):
    name = "ffa_lora"
    summary = "fresh LoRA, A frozen at random init, only B trained and sent"

    def is_trained(self, name: str) -> bool:
        return "lora_B" in name
