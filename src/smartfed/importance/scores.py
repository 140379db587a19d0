"""Per-token importance scorers, evaluated inside the MoRE layer's normal training step.

A scorer sees one matrix's tensors for the tokens of a batch and returns
``(matrix_score[N], expert_score[N, M])``; the layer sums them over real (non-padding) tokens.
The server later averages the per-client values weighted by token counts (``aggregation.py``).

Scorers are registered by name so an ablation is one ``--importance_score`` flag, not an edit.
A registration also says *when* the scorer runs and *how* its sums become one number per
matrix (:class:`ImportanceScore`):

- ``needs_grad=False``: called in the forward pass with :class:`ScoreInputs` (outputs with and
  without the experts). ``needs_grad=True``: called in the backward pass of a training step with
  :class:`GateGradInputs` (the gates and the loss gradient at the gates), through a tensor hook
  on the gates: no extra forward or backward pass. Without a backward (evaluation, no_grad) a
  gradient scorer records nothing.
- ``reduction="mean"``: a matrix's score is its per-token mean over real tokens.
  ``reduction="share"``: its sum over real tokens divided by the sum over all matrices of the
  model, i.e. shares that sum to 1 per client (all zeros if every sum is zero), so the value is
  bounded in [0, 1] whatever the scale of the per-token score.
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


@dataclass(frozen=True)
class GateGradInputs:
    """What a gradient scorer sees, in the backward pass of a training step."""

    gates: torch.Tensor  # (N, M) ĝ_j for selected experts, 0 elsewhere
    gate_grads: torch.Tensor  # (N, M) ∂L/∂ĝ_j, the training loss's gradient at the gates


Scorer = Callable[..., tuple[torch.Tensor, torch.Tensor]]
REDUCTIONS = ("mean", "share")


@dataclass(frozen=True)
class ImportanceScore:
    """A registered scorer: the function, when it runs and how its sums are reduced."""

    name: str
    fn: Scorer
    needs_grad: bool = False  # True: called in backward with GateGradInputs, not ScoreInputs
    reduction: str = "mean"  # "mean" per real token | "share" of the sum over all matrices

    def __call__(self, inputs: ScoreInputs | GateGradInputs) -> tuple[torch.Tensor, torch.Tensor]:
        return self.fn(inputs)


IMPORTANCE_SCORES: dict[str, ImportanceScore] = {}


def register_score(
    name: str, *, needs_grad: bool = False, reduction: str = "mean"
) -> Callable[[Scorer], Scorer]:
    """Register ``fn`` under ``name``; see the module docstring for the two options."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {', '.join(REDUCTIONS)}, got {reduction!r}")

    def wrap(fn: Scorer) -> Scorer:
        if name in IMPORTANCE_SCORES:
            raise ValueError(f"importance score '{name}' is registered twice")
        IMPORTANCE_SCORES[name] = ImportanceScore(name, fn, needs_grad, reduction)
        return fn

    return wrap


def _expert_share(inputs: ScoreInputs) -> torch.Tensor:
    """ĝ_i · 1{i∈S} · ‖E_i(x)‖ / ‖W0 x‖ (docs/design.md §1.3, per expert)."""
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


@register_score("cosine_share", reduction="share")
def cosine_share_score(inputs: ScoreInputs) -> tuple[torch.Tensor, torch.Tensor]:
    """The cosine score as shares: each matrix's summed 1 − cos over the sum of all matrices.

    Per token 1 − cos lies in [0, 2]; as a share of the model's total it lies in [0, 1] and
    sums to 1 per client, so a client whose experts turn every output further (or the growth
    of all deltas over training) no longer weighs more in the server's mean."""
    return cosine_score(inputs)


@register_score("taylor", needs_grad=True, reduction="share")
def taylor_score(inputs: GateGradInputs) -> tuple[torch.Tensor, torch.Tensor]:
    """|∂L/∂ĝ_i · ĝ_i| per expert, summed over a matrix's experts; reduced to shares.

    ĝ_i · ∂L/∂ĝ_i is the first-order change of the training loss if expert i were dropped
    from that token (its gate set to 0): ⟨∂L/∂h', c ĝ_i E_i(x)⟩. Unselected experts have
    ĝ_i = 0 and score 0. The per-token values are unbounded (they scale with the loss and its
    gradient); the "share" reduction divides each matrix's sum over real tokens by the sum
    over every matrix, so the reported value is in [0, 1], the matrices of a client sum to 1,
    and the loss scale, the batch size and any gradient scaling cancel."""
    expert = (inputs.gates * inputs.gate_grads).abs()
    return expert.sum(dim=-1), expert


def get_score(name: str) -> ImportanceScore:
    try:
        return IMPORTANCE_SCORES[name]
    except KeyError:
        known = ", ".join(sorted(IMPORTANCE_SCORES))
        raise KeyError(f"unknown importance score '{name}'; known: {known}") from None
