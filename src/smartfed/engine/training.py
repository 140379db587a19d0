"""Local training on one client, seeding and update checks: the engine's core, no Flower import.

Flower's ClientApp (``smartfed.federation.client_app``) is a thin adapter around
:func:`train_local`, so the algorithm can be tested, reused and read without the engine.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from smartfed.models import autocast, model_device, model_dtype, to_device

if TYPE_CHECKING:
    from smartfed.engine.method import FederatedMethod


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


def training_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    batch: Mapping[str, torch.Tensor],
    device: torch.device,
    precision: torch.dtype,
) -> float:
    """One local step of :func:`train_local`: forward with labels (under autocast for a
    half-precision base), zero_grad, backward, optimizer step; returns the loss. ``batch`` is
    already on ``device``. ``benchmarks/step_cost.py`` times this very step."""
    with autocast(device, precision):
        loss = model(**batch).loss
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return float(loss.detach())


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
    on_step: Callable[[int, float], None] | None = None,
) -> ClientUpdate:
    """Load the global (and the client's own) state, run ``local_steps`` AdamW steps, report.

    ``on_step(index, loss)`` is called after each optimizer step (progress display).

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
    # Batches go where the model is; a half-precision base runs its forward under autocast.
    device, precision = model_device(model), model_dtype(model)
    started = time.perf_counter()
    try:
        for step in range(local_steps):
            batch = to_device(next(iterator), device)
            losses.append(training_step(model, optimizer, batch, device, precision))
            tokens += int(batch["attention_mask"].sum())
            if on_step is not None:
                on_step(step, losses[-1])
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


def is_finite_update(update_state: dict[str, torch.Tensor], loss: float) -> str | None:
    """None if the update is usable, else the reason it is not."""
    if not math.isfinite(loss):
        return f"train loss is {loss}"
    for name, tensor in update_state.items():
        if not torch.isfinite(tensor).all():
            return f"'{name}' has NaN/Inf values"
    return None
