"""EEQA's server side: importance aggregation over clients and rounds, then next round's quotas.

Pure numpy, called by SmartFed's server logic (``smartfed.methods.smartfed``) after every round.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from smartfed.eeqa.allocation import allocate_quotas, uniform_quotas
from smartfed.importance.aggregation import combine_importance, ema_update
from smartfed.robust import AggregationRule


def update_importance(
    previous_ema: np.ndarray | None,
    client_importance: Sequence[np.ndarray],
    client_tokens: Sequence[int],
    beta: float,
    rule: AggregationRule | None = None,
) -> np.ndarray | None:
    """Token-weighted mean over clients (or ``rule``'s robust combination), then EMA over
    rounds (docs/design.md §1.3)."""
    pairs = [(imp, tok) for imp, tok in zip(client_importance, client_tokens, strict=True) if tok]
    if not pairs:
        return previous_ema
    current = combine_importance(
        [p[0] for p in pairs], [p[1] for p in pairs], rule or AggregationRule()
    )
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
    previous: np.ndarray | None = None,
    k_max: int | None = None,
    max_move: int | None = None,
) -> np.ndarray:
    """Quotas for the round after ``completed_round``: uniform K during warm-up or without EEQA.

    ``previous`` is the quota table of the round just completed; with ``max_move`` no quota
    moves further than that from it (None, the first table of a run: the uniform table)."""
    uniform = uniform_quotas(capacities, top_k)
    if not enable_eeqa or importance is None or completed_round < warmup_rounds:
        return uniform
    # docs/design.md §1.4: K_tot = K·P; EEQA spends min(K_tot, Σ min(M_ℓ, k_max)) of it.
    return allocate_quotas(
        importance,
        capacities,
        top_k * len(capacities),
        k_min=k_min,
        k_max=k_max,
        previous=uniform if previous is None else previous,
        max_move=max_move,
    )
