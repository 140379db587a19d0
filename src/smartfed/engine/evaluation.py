"""Held-out loss: the one loss evaluator of every run, benchmark and report (no Flower import)."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch


@torch.no_grad()
def evaluate_loss(model: torch.nn.Module, batches: Iterable[dict[str, torch.Tensor]]) -> dict:
    """Mean answer-token loss (labels != -100) and perplexity over ``batches``.

    Also returns the summed loss, so token-weighted means over clients stay exact.
    """
    model.eval()
    total_loss, total_tokens = 0.0, 0
    for batch in batches:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        labels = batch["labels"][:, 1:]
        logits = logits[:, :-1]
        loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]).float(),
            labels.reshape(-1),
            ignore_index=-100,
            reduction="sum",
        )
        total_loss += float(loss)
        total_tokens += int((labels != -100).sum())
    if total_tokens == 0:
        return {}
    return loss_metrics(total_loss, total_tokens)


def loss_metrics(loss_sum: float, tokens: int) -> dict[str, float]:
    mean = loss_sum / tokens
    return {
        "eval_loss": mean,
        "eval_ppl": math.exp(min(mean, 50.0)),
        "eval_tokens": tokens,
        "eval_loss_sum": loss_sum,
    }
