"""The tiny random LLaMA and the random PEFT adapter writer shared by the tests
(``tests/conftest.py``) and the benchmarks (``benchmarks/step_cost.py --model tiny``): one
definition, so the two cannot drift apart.

No SmartFed import: the top layer of ``LAYERS``, so the library itself never imports it.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, get_peft_model
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

__all__ = ["TINY", "make_tiny_llama", "write_random_adapter"]

TINY = dict(
    vocab_size=272,  # 256 byte tokens + specials of the tiny tokenizer
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,  # GQA: k/v projections are 16 wide, q is 32
    max_position_embeddings=64,
)


def make_tiny_llama(seed: int = 0) -> LlamaForCausalLM:
    """The tiny LLaMA of :data:`TINY` with random weights drawn after ``torch.manual_seed``."""
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**TINY))
    model.eval()
    return model


def write_random_adapter(
    folder: Path,
    model: nn.Module,
    *,
    rank: int,
    alpha: float,
    targets: Iterable[str] = ("q_proj", "v_proj"),
    seed: int,
    b_std: float = 0.3,
    **lora_kwargs: Any,
) -> Path:
    """A real PEFT adapter saved by PEFT in ``folder``: rank ``rank`` on ``targets`` of
    ``model``, A as PEFT leaves it with ``init_lora_weights=False`` and B drawn with std
    ``b_std`` (clearly visible in the logits), both after ``torch.manual_seed(seed)``.

    ``model``'s module tree is not changed: PEFT wraps a copy that shares its parameters (no copy
    of the weights; PEFT freezes them), so a frozen base shared with others can be passed."""
    config = LoraConfig(
        r=rank,
        lora_alpha=alpha,
        target_modules=list(targets),
        init_lora_weights=False,
        lora_dropout=0.0,
        **lora_kwargs,
    )
    memo: dict[int, Any] = {id(t): t for t in (*model.parameters(), *model.buffers())}
    torch.manual_seed(seed)
    peft_model = get_peft_model(copy.deepcopy(model, memo), config)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=b_std)
    peft_model.save_pretrained(folder)
    return Path(folder)
