"""Per-token importance scorers, evaluated inside the MoRE layer's normal forward pass.

A scorer sees one matrix's tensors for the tokens of a batch and returns
``(matrix_score[N], expert_score[N, M])``; the layer sums them over real (non-padding) tokens.
The server later averages the per-client means weighted by token counts (``aggregation.py``).

Scorers are registered by name so an ablation is one ``--importance_score`` flag, not an edit.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

_EPS = 1e-12


@dataclass(frozen=True)
class ScoreInputs:
    base_out: torch.Tensor  # (N, d_out)  W0 x
    delta: torch.Tensor  # (N, d_out)  c · Σ_j ĝ_j E_j(x)
    gates: torch.Tensor  # (N, M)      ĝ_j for selected experts, 0 elsewhere
    expert_norms: torch.Tensor  # (N, M) ‖E_j(x)‖ for every expert


Scorer = Callable[[ScoreInputs], tuple[torch.Tensor, torch.Tensor]]
IMPORTANCE_SCORES: dict[str, Scorer] = {}


def register_score(name: str) -> Callable[[Scorer], Scorer]:
    def wrap(fn: Scorer) -> Scorer:
        if name in IMPORTANCE_SCORES:
            raise ValueError(f"importance score '{name}' is registered twice")
        IMPORTANCE_SCORES[name] = fn
        return fn

    return wrap


def _expert_share(inputs: ScoreInputs) -> torch.Tensor:
    """ĝ_i · 1{i∈S} · ‖E_i(x)‖ / ‖W0 x‖ (DESIGN §1.3, per expert)."""
    base_norm = inputs.base_out.norm(dim=-1, keepdim=True).clamp_min(_EPS)
    return inputs.gates * inputs.expert_norms / base_norm


@register_score("cosine")
def cosine_score(inputs: ScoreInputs) -> tuple[torch.Tensor, torch.Tensor]:
    """The paper's description: 1 − cos(W0 x, h'(x)), how far the experts turn the output."""
    adapted = inputs.base_out + inputs.delta
    # Rounding can put the cosine a hair above 1; a score is never negative (EEQA requires it).
    matrix = (1.0 - F.cosine_similarity(inputs.base_out, adapted, dim=-1, eps=_EPS)).clamp_min(0)
    return matrix, _expert_share(inputs)


@register_score("relative_norm")
def relative_norm_score(inputs: ScoreInputs) -> tuple[torch.Tensor, torch.Tensor]:
    """‖h'(x) − W0 x‖ / ‖W0 x‖: how much the experts change the output, direction or not."""
    base_norm = inputs.base_out.norm(dim=-1).clamp_min(_EPS)
    matrix = inputs.delta.norm(dim=-1) / base_norm
    return matrix, _expert_share(inputs)


def get_score(name: str) -> Scorer:
    try:
        return IMPORTANCE_SCORES[name]
    except KeyError:
        known = ", ".join(sorted(IMPORTANCE_SCORES))
        raise KeyError(f"unknown importance score '{name}'; known: {known}") from None
