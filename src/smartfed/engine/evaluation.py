"""Held-out loss: the one loss evaluator of every run, benchmark and report (no Flower import).

:func:`answer_token_loss` is the computation, for one batch; :func:`evaluate_loss` (per-round
evaluation in runs) and the ``loss`` benchmark of :mod:`smartfed.evaluation` both use it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch

from smartfed.data.formatting import IGNORE_INDEX
from smartfed.models import model_autocast, model_device, to_device


@dataclass(frozen=True)
class BatchLoss:
    """Answer-token loss of one batch (float32 cross entropy, labels != -100 only)."""

    total: torch.Tensor  # 0-d: the sum over every answer token of the batch
    row_sums: torch.Tensor  # (batch,): the sum over each row's answer tokens
    row_tokens: torch.Tensor  # (batch,): the number of answer tokens in each row

    @property
    def tokens(self) -> int:
        return int(self.row_tokens.sum())


@torch.no_grad()
def answer_token_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> BatchLoss:
    """Run ``model`` on one batch and score its next-token predictions on the answer tokens.

    The batch moves to the model's device (the results stay there). The logits at position t
    predict token t + 1 (shifted), in float32 whatever the model's dtype.
    ``total`` is reduced by ``cross_entropy(reduction="sum")``'s own kernel (a log-softmax, then
    an NLL sum), so it is bit-for-bit what that call returns; ``row_sums`` are the same per-token
    terms summed by row.
    """
    batch = to_device(batch, model_device(model))
    with model_autocast(model):
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    labels = batch["labels"][:, 1:]
    logits = logits[:, :-1]
    log_probs = torch.nn.functional.log_softmax(
        logits.reshape(-1, logits.shape[-1]).float(), dim=-1
    )
    flat_labels = labels.reshape(-1)
    total = torch.nn.functional.nll_loss(
        log_probs, flat_labels, ignore_index=IGNORE_INDEX, reduction="sum"
    )
    per_token = torch.nn.functional.nll_loss(
        log_probs, flat_labels, ignore_index=IGNORE_INDEX, reduction="none"
    )
    return BatchLoss(
        total=total,
        row_sums=per_token.view(labels.shape).sum(dim=1),
        row_tokens=(labels != IGNORE_INDEX).sum(dim=1),
    )


@torch.no_grad()
def evaluate_loss(
    model: torch.nn.Module, batches: Iterable[dict[str, torch.Tensor]], prefix: str = "eval"
) -> dict:
    """Mean answer-token loss (labels != -100) and perplexity over ``batches``.

    Also returns the summed loss, so token-weighted means over clients stay exact. Keys start
    with ``prefix`` (``eval_loss``; ``target_loss`` for the target set).
    """
    model.eval()
    total_loss, total_tokens = 0.0, 0
    for batch in batches:
        loss = answer_token_loss(model, batch)
        total_loss += float(loss.total)
        total_tokens += loss.tokens
    if total_tokens == 0:
        return {}
    return loss_metrics(total_loss, total_tokens, prefix)


def loss_metrics(loss_sum: float, tokens: int, prefix: str = "eval") -> dict[str, float]:
    mean = loss_sum / tokens
    return {
        f"{prefix}_loss": mean,
        f"{prefix}_ppl": math.exp(min(mean, 50.0)),
        f"{prefix}_tokens": tokens,
        f"{prefix}_loss_sum": loss_sum,
    }
