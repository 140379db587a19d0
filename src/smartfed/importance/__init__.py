"""Importance scores: per-token scorers (torch, inside the MoRE layer) and server-side
aggregation (numpy: token-weighted mean across clients, EMA across rounds)."""

from smartfed.importance.aggregation import ema_update, weighted_mean
from smartfed.importance.scores import (
    IMPORTANCE_SCORES,
    GateGradInputs,
    ImportanceScore,
    ScoreInputs,
    get_score,
    register_score,
)

__all__ = [
    "IMPORTANCE_SCORES",
    "GateGradInputs",
    "ImportanceScore",
    "ScoreInputs",
    "ema_update",
    "get_score",
    "register_score",
    "weighted_mean",
]
