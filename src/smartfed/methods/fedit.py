"""FedIT: a fresh LoRA on every client, FedAvg of both A and B (Zhang et al., 2024)."""

from __future__ import annotations

from smartfed.methods.fresh_lora import FreshLoraMethod
from smartfed.methods.registry import register_method


@register_method
class FedIT(FreshLoraMethod):
    name = "fedit"
    summary = "fresh LoRA, FedAvg of A and B (knowledge-free reference)"
