"""The federated maths and the local training step, with no Flower import.

Flower apps (client_app.py, server_app.py, strategy.py) are thin adapters around these
functions, so the algorithm can be tested, reused and read without the engine.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from smartfed.eeqa import allocate_quotas, uniform_quotas
from smartfed.importance.aggregation import ema_update, weighted_mean

if TYPE_CHECKING:
    from smartfed.methods.base import FederatedMethod


@dataclass
class ClientUpdate:
    """What one client sends back after a round of local training."""

    global_state: dict[str, torch.Tensor]  # the averaged part of what it trained
    local_state: dict[str, torch.Tensor]  # the part it keeps (FedSA-LoRA's B); never sent
    num_examples: int  # size of the client's partition: the FedAvg weight
    tokens: int  # real tokens trained on: the weight of token-averaged statistics
    train_loss: float
    step_time_s: float
    metrics: dict[str, Any] = field(default_factory=dict)  # method extras (e.g. importance)


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


def client_seed(seed: int, server_round: int, partition_id: int) -> int:
    """A distinct, reproducible seed per (run, round, client): resumed runs replay exactly."""
    return (seed * 1_000_003 + server_round * 10_007 + partition_id) % 2**31


def train_local(
    method: FederatedMethod,
    batches: Iterable[dict[str, torch.Tensor]],
    *,
    global_state: dict[str, torch.Tensor],
    local_state: dict[str, torch.Tensor],
    round_config: Mapping[str, Any],
    local_steps: int,
    learning_rate: float,
    num_examples: int,
    seed: int,
) -> ClientUpdate:
    """Load the global (and the client's own) state, run ``local_steps`` AdamW steps, report.

    Only the method's trainable parameters change; the base model and the pool stay frozen.
    A fresh optimizer each round is the FedAvg convention (no optimizer state crosses rounds).
    """
    seed_everything(seed)
    method.load_global_state(global_state)
    method.load_local_state(local_state)
    method.apply_round_config(round_config)
    params = list(method.trainable_parameters().values())
    optimizer = torch.optim.AdamW(params, lr=learning_rate)
    model = method.model
    model.train()
    method.start_local_training()
    losses, tokens, iterator = [], 0, iter(batches)
    started = time.perf_counter()
    try:
        for _ in range(local_steps):
            batch = next(iterator)
            loss = model(**batch).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
            tokens += int(batch["attention_mask"].sum())
    finally:
        extras = method.finish_local_training()
        model.eval()
    elapsed = time.perf_counter() - started
    return ClientUpdate(
        global_state=method.global_state(),
        local_state=method.local_state(),
        num_examples=num_examples,
        tokens=tokens,
        train_loss=float(np.mean(losses)),
        step_time_s=elapsed / max(local_steps, 1),
        metrics=extras,
    )


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


def update_importance(
    previous_ema: np.ndarray | None,
    client_importance: Sequence[np.ndarray],
    client_tokens: Sequence[int],
    beta: float,
) -> np.ndarray | None:
    """Token-weighted mean over clients, then EMA over rounds (DESIGN §1.3)."""
    pairs = [(imp, tok) for imp, tok in zip(client_importance, client_tokens, strict=True) if tok]
    if not pairs:
        return previous_ema
    current = weighted_mean([p[0] for p in pairs], [p[1] for p in pairs])
    return ema_update(previous_ema, current, beta)


def next_quotas(
    *,
    importance: np.ndarray | None,
    capacities: np.ndarray,
    top_k: int,
    k_min: int,
    completed_round: int,
    warmup_rounds: int,
    enable_eeqa: bool,
) -> np.ndarray:
    """Quotas for the round after ``completed_round``: uniform K during warm-up or without EEQA."""
    uniform = uniform_quotas(capacities, top_k)
    if not enable_eeqa or importance is None or completed_round < warmup_rounds:
        return uniform
    # DESIGN §1.4: K_tot = K·P; EEQA spends min(K_tot, Σ M_ℓ) of it.
    return allocate_quotas(importance, capacities, top_k * len(capacities), k_min=k_min)


def is_finite_update(update_state: dict[str, torch.Tensor], loss: float) -> str | None:
    """None if the update is usable, else the reason it is not."""
    if not math.isfinite(loss):
        return f"train loss is {loss}"
    for name, tensor in update_state.items():
        if not torch.isfinite(tensor).all():
            return f"'{name}' has NaN/Inf values"
    return None
