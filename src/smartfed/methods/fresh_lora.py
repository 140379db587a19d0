"""Knowledge-free baselines: a fresh LoRA, trained federatedly, built with PEFT.

FedIT, FFA-LoRA and FedSA-LoRA share the model (``peft.get_peft_model`` with the pool modules'
rank, alpha and target modules unless ``--lora_rank/--lora_alpha/--lora_targets`` say otherwise,
so every method adapts the same matrices at the same size) and differ only in what trains and
what is averaged. PEFT's default init is used: A Kaiming-uniform from the run seed, B = 0, so
training starts from the base model. The final model is a normal PEFT adapter folder.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from peft import LoraConfig, get_peft_model, load_peft_weights, set_peft_model_state_dict
from torch import nn

from smartfed.engine.method import FederatedMethod
from smartfed.engine.settings import MethodSettings, setting
from smartfed.errors import ConfigError
from smartfed.pool import LoraPool

if TYPE_CHECKING:
    from smartfed.engine.config import RunConfig


@dataclass
class FreshLoraSettings(MethodSettings):
    """The fresh LoRA's shape (default: the pool's) and its learning rate."""

    learning_rate: float = setting(5e-4, "AdamW learning rate of the LoRA weights", above=0)
    lora_rank: int | None = setting(None, "rank of the fresh LoRA (default: the pool's)", minimum=1)
    lora_alpha: float | None = setting(None, "alpha of the fresh LoRA (default: the pool's)",
                                       above=0)  # fmt: skip
    lora_targets: str | None = setting(
        None, "comma-separated target modules of the fresh LoRA (default: the pool's)"
    )


def lora_targets(pool: LoraPool, flag: str | None) -> list[str]:
    """``--lora_targets`` (comma-separated), else every module some pool module adapts."""
    if flag:
        targets = [t.strip() for t in flag.split(",") if t.strip()]
    else:
        targets = list(dict.fromkeys(t for a in pool.adapters for t in a.target_modules))
    if not targets:
        raise ConfigError("--lora_targets names no module")
    return targets


def fresh_lora_config(pool: LoraPool, settings: FreshLoraSettings) -> LoraConfig:
    """The LoRA shape of a knowledge-free method: explicit flags, else the pool's.

    Rank, alpha and rsLoRA follow the first pool module; the targets are the union over all
    modules, so a fresh LoRA adapts every matrix some pool module adapts.
    """
    reference = pool.adapters[0]
    rank = settings.lora_rank or max(reference.ranks)
    alpha = settings.lora_alpha if settings.lora_alpha is not None else max(reference.alphas)
    targets = lora_targets(pool, settings.lora_targets)
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
    settings_class = FreshLoraSettings

    def build(self, base_model: nn.Module, pool: LoraPool, config: RunConfig) -> nn.Module:
        base_model.requires_grad_(False)
        model = get_peft_model(base_model, fresh_lora_config(pool, config.settings))
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
