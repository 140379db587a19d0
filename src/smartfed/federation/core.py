"""The federated maths and the local training step, with no Flower import.

Flower apps (client_app.py, server_app.py, strategy.py) are thin adapters around these
functions, so the algorithm can be tested, reused and read without the engine.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from smartfed.eeqa import allocate_quotas, uniform_quotas
from smartfed.importance.aggregation import ema_update, weighted_mean
from smartfed.tuners.more import MoreModel


@dataclass
class ClientUpdate:
    """What one client sends back after a round of local training."""

    router_state: dict[str, torch.Tensor]
    num_examples: int  # size of the client's partition: the FedAvg weight
    tokens: int  # real tokens the importance was measured on: the importance weight
    train_loss: float
    importance: np.ndarray  # (P,) per-matrix mean importance
    step_time_s: float


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


def client_seed(seed: int, server_round: int, partition_id: int) -> int:
    """A distinct, reproducible seed per (run, round, client): resumed runs replay exactly."""
    return (seed * 1_000_003 + server_round * 10_007 + partition_id) % 2**31


def train_local(
    more: MoreModel,
    batches: Iterable[dict[str, torch.Tensor]],
    *,
    router_state: dict[str, torch.Tensor],
    quotas: Sequence[int],
    local_steps: int,
    learning_rate: float,
    num_examples: int,
    seed: int,
) -> ClientUpdate:
    """Load the global routers and quotas, run ``local_steps`` AdamW steps, report back.

    Only router parameters are trained; the base model and experts are frozen buffers.
    A fresh optimizer each round is the FedAvg convention (no optimizer state crosses rounds).
    """
    seed_everything(seed)
    more.load_router_state_dict(router_state)
    more.set_quotas(np.asarray(quotas))
    params = [p for p in more.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=learning_rate)
    more.train()
    more.read_importance(reset=True)
    more.track_importance(True)
    losses, iterator = [], iter(batches)
    started = time.perf_counter()
    try:
        for _ in range(local_steps):
            batch = next(iterator)
            loss = more(**batch).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
    finally:
        more.track_importance(False)
        more.eval()
    elapsed = time.perf_counter() - started
    stats = more.read_importance(reset=True)
    return ClientUpdate(
        router_state=more.router_state_dict(),
        num_examples=num_examples,
        tokens=stats.tokens,
        train_loss=float(np.mean(losses)),
        importance=stats.matrix,
        step_time_s=elapsed / max(local_steps, 1),
    )


@torch.no_grad()
def evaluate_loss(more: MoreModel, batches: Iterable[dict[str, torch.Tensor]]) -> dict[str, float]:
    """Mean answer-token loss (labels != -100) and perplexity over ``batches``."""
    more.eval()
    total_loss, total_tokens = 0.0, 0
    for batch in batches:
        logits = more(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
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
    mean = total_loss / total_tokens
    return {"eval_loss": mean, "eval_ppl": math.exp(min(mean, 50.0)), "eval_tokens": total_tokens}


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
            return f"router '{name}' has NaN/Inf values"
    return None
