"""FedSA-LoRA: A is averaged across clients, B stays on each client (Guo et al., ICLR 2025).

"Selective Aggregation for Low-Rank Adaptation in Federated Learning": A learns what clients
share, B what is client-specific. Only A travels. Each client keeps its own B between rounds in
its Flower node state (``context.state``), starting from PEFT's B = 0.

Evaluation follows the paper's personalised protocol: after aggregation, the clients that
trained in the round receive the new averaged A in Flower's evaluate round and evaluate their own
model (averaged A + their B) on the held-out set; the round's eval loss is the token-weighted
mean over those clients. That traffic is recorded as ``bytes_eval``, apart from the training
communication. There is no single global model, so the run has no
final/ folder and no task metric on the server. Client B's live in the clients' memory: an
in-process run resumed after a crash restarts them from B = 0.
"""

from __future__ import annotations

from pathlib import Path

from smartfed.errors import ConfigError
from smartfed.methods.fresh_lora import FreshLoraMethod
from smartfed.methods.registry import register_method


@register_method
class FedSALora(FreshLoraMethod):
    name = "fedsa_lora"
    summary = "fresh LoRA, A averaged, B kept per client (personalised evaluation)"
    evaluates_on_clients = True
    has_global_model = False

    def is_communicated(self, name: str) -> bool:
        return "lora_A" in name

    def save_final(self, directory: Path) -> None:
        raise ConfigError("fedsa_lora has no global model to save: B stays on the clients")

    def load_final(self, directory: Path) -> None:
        raise ConfigError("fedsa_lora has no global model to load: B stays on the clients")
