"""Knowledge-free baselines: a fresh LoRA, trained federatedly, built with PEFT.

FedIT, FFA-LoRA and FedSA-LoRA share the model (``peft.get_peft_model`` with the pool modules'
rank, alpha and target modules unless ``--lora_rank/--lora_alpha/--lora_targets`` say otherwise,
so every method adapts the same matrices at the same size) and differ only in what trains and
what is averaged. PEFT's default init is used: A Kaiming-uniform from the run seed, B = 0, so
training starts from the base model. The final model is a normal PEFT adapter folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from peft import LoraConfig, get_peft_model, load_peft_weights, set_peft_model_state_dict
from torch import nn

from smartfed.engine.method import FederatedMethod
from smartfed.errors import ConfigError
from smartfed.pool import LoraPool

if TYPE_CHECKING:
    from smartfed.engine.config import RunConfig


def fresh_lora_config(pool: LoraPool, config: RunConfig) -> LoraConfig:
    """The LoRA shape of a knowledge-free method: explicit flags, else the pool's.

    Rank, alpha and rsLoRA follow the first pool module; the targets are the union over all
    modules, so a fresh LoRA adapts every matrix some pool module adapts.
    """
    reference = pool.adapters[0]
    rank = config.lora_rank or max(reference.ranks)
    alpha = config.lora_alpha if config.lora_alpha is not None else max(reference.alphas)
    if config.lora_targets:
        targets = [t.strip() for t in config.lora_targets.split(",") if t.strip()]
    else:
        targets = list(dict.fromkeys(t for a in pool.adapters for t in a.target_modules))
    if not targets:
        raise ConfigError("--lora_targets names no module")
    return LoraConfig(
        r=rank,
        lora_alpha=alpha,
        target_modules=targets,
        lora_dropout=0.0,
        use_rslora=reference.use_rslora,
        bias="none",
        task_type="CAUSAL_LM",
    )


class FreshLoraMethod(FederatedMethod):
    """A PEFT LoRA on the base model; subclasses choose what trains and what is averaged."""

    reuses_pool = False

    def build(self, base_model: nn.Module, pool: LoraPool, config: RunConfig) -> nn.Module:
        base_model.requires_grad_(False)
        model = get_peft_model(base_model, fresh_lora_config(pool, config))
        for name, param in model.named_parameters():
            param.requires_grad = self.is_trained(name)
        return model

    def is_trained(self, name: str) -> bool:
        return "lora_A" in name or "lora_B" in name

    def save_final(self, directory: Path) -> None:
        self.model.save_pretrained(str(directory))

    def load_final(self, directory: Path) -> None:
        try:
            weights = load_peft_weights(str(directory))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{directory}: cannot read the saved PEFT adapter: {exc}") from None
        result = set_peft_model_state_dict(self.model, weights)
        missing = [k for k in result.missing_keys if "lora_" in k]
        if result.unexpected_keys or missing:
            raise ConfigError(
                f"{directory}: adapter does not fit this model: unexpected "
                f"{result.unexpected_keys[:3]}, missing {missing[:3]}"
            )
