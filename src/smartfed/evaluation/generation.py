"""Batched greedy generation with a KV cache, chat template and stop sequences.

Prompts are rendered with the tokenizer's chat template (the same rendering training uses, see
:mod:`smartfed.data.formatting`), left-padded, and decoded greedily by ``model.generate``.
Batches are formed from prompts sorted by length so little compute goes to padding; results come
back in the caller's order. Stop sequences end a sequence early (``stop_strings``) and are also
cut from the returned text.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from tqdm.auto import tqdm

from smartfed.models import model_autocast, model_device, to_device


def render_prompt(tokenizer: Any, prompt: str) -> str:
    """The text a model sees before it answers ``prompt`` (user turn + assistant header)."""
    if getattr(tokenizer, "chat_template", None) is None:
        return prompt + "\n"
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
    )


def _cut_at_stop(text: str, stop: Sequence[str]) -> str:
    cut = len(text)
    for s in stop:
        index = text.find(s)
        if index != -1:
            cut = min(cut, index)
    return text[:cut]


@torch.no_grad()
def generate(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 256,
    batch_size: int = 8,
    stop: Sequence[str] = (),
    progress: bool = True,
    description: str = "generating",
) -> list[str]:
    """Greedy completions of ``prompts`` (raw user messages), in the same order."""
    if batch_size < 1 or max_new_tokens < 1:
        raise ValueError("batch_size and max_new_tokens must be >= 1")
    rendered = [render_prompt(tokenizer, p) for p in prompts]
    # Templates write their own BOS; the plain format adds the tokenizer's special tokens.
    add_special = getattr(tokenizer, "chat_template", None) is None
    lengths = [len(tokenizer(r, add_special_tokens=add_special)["input_ids"]) for r in rendered]
    order = sorted(range(len(prompts)), key=lambda i: lengths[i])
    outputs: list[str] = [""] * len(prompts)

    padding_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    pad_id = (
        tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    )
    was_training = model.training
    model.eval()
    device = model_device(model)
    try:
        bar = tqdm(total=len(prompts), desc=description, disable=not progress, unit="item")
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            batch = tokenizer(
                [rendered[i] for i in chunk],
                return_tensors="pt",
                padding=True,
                add_special_tokens=add_special,
            )
            batch = to_device(batch, device)
            with model_autocast(model):
                generated = model.generate(
                    **batch,
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    use_cache=True,
                    pad_token_id=pad_id,
                    stop_strings=list(stop) or None,
                    tokenizer=tokenizer if stop else None,
                )
            new_tokens = generated[:, batch["input_ids"].shape[1] :]
            for i, row in zip(chunk, new_tokens, strict=True):
                text = tokenizer.decode(row, skip_special_tokens=True)
                outputs[i] = _cut_at_stop(text, stop).strip()
            bar.update(len(chunk))
        bar.close()
    finally:
        tokenizer.padding_side = padding_side
        model.train(was_training)
    return outputs
