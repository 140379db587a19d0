"""Shared fixtures: a tiny random LLaMA and real PEFT LoRA adapters saved to disk."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

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
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**TINY))
    model.eval()
    return model


@pytest.fixture
def tiny_llama() -> LlamaForCausalLM:
    return make_tiny_llama()


AdapterFactory = Callable[..., Path]


@pytest.fixture
def make_adapter(tmp_path: Path) -> AdapterFactory:
    """Train-free real PEFT adapters: random A and B (init_lora_weights=False), saved by PEFT."""

    counter = iter(range(1000))

    def factory(
        name: str | None = None,
        *,
        r: int = 4,
        alpha: float = 8,
        targets: tuple[str, ...] = ("q_proj", "v_proj"),
        seed: int | None = None,
        **lora_kwargs,
    ) -> Path:
        index = next(counter)
        name = name or f"adapter{index}"
        config = LoraConfig(
            r=r,
            lora_alpha=alpha,
            target_modules=list(targets),
            init_lora_weights=False,
            lora_dropout=0.0,
            **lora_kwargs,
        )
        base = make_tiny_llama()  # seeds torch itself; seed the adapter's draw after it
        torch.manual_seed(1000 + (seed if seed is not None else index))
        peft_model = get_peft_model(base, config)
        # Random B from PEFT is tiny-ish; make the update clearly visible in the logits.
        with torch.no_grad():
            for pname, param in peft_model.named_parameters():
                if "lora_B" in pname:
                    param.normal_(std=0.3)
        out = tmp_path / "adapters" / name
        peft_model.save_pretrained(out)
        return out

    return factory


@pytest.fixture
def input_ids() -> torch.Tensor:
    torch.manual_seed(123)
    return torch.randint(0, TINY["vocab_size"], (2, 7))


CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def make_tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level tokenizer (no merges) with chat special tokens: real, tiny, offline."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from tokenizers.pre_tokenizers import ByteLevel

    alphabet = ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<pad>"]
    for token in specials:
        vocab[token] = len(vocab)
    assert len(vocab) <= TINY["vocab_size"]
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        bos_token="<|endoftext|>",
        pad_token="<pad>",
        additional_special_tokens=["<|im_start|>"],
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


@pytest.fixture
def tiny_model_dir(tmp_path: Path) -> Path:
    """The tiny LLaMA and tokenizer saved as a normal Hugging Face model folder."""
    out = tmp_path / "tiny-llama"
    make_tiny_llama().save_pretrained(out)
    make_tiny_tokenizer().save_pretrained(out)
    return out
