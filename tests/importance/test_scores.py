"""The importance score registry: flags of each scorer and the scorers' per-token definitions."""

from __future__ import annotations

import pytest
import torch

from smartfed.importance.scores import (
    IMPORTANCE_SCORES,
    GateGradInputs,
    ImportanceScore,
    ScoreInputs,
    get_score,
    register_score,
)


def test_registry_flags() -> None:
    assert {"cosine", "cosine_share", "relative_norm", "taylor"} <= set(IMPORTANCE_SCORES)
    for name, score in IMPORTANCE_SCORES.items():
        assert isinstance(score, ImportanceScore) and score.name == name
        assert get_score(name) is score
    assert (get_score("cosine").needs_grad, get_score("cosine").reduction) == (False, "mean")
    assert (get_score("relative_norm").needs_grad, get_score("relative_norm").reduction) == (
        False,
        "mean",
    )
    assert (get_score("cosine_share").needs_grad, get_score("cosine_share").reduction) == (
        False,
        "share",
    )
    assert (get_score("taylor").needs_grad, get_score("taylor").reduction) == (True, "share")


def test_register_refuses_duplicates_and_unknown_reductions() -> None:
    with pytest.raises(ValueError, match="registered twice"):
        register_score("cosine")(lambda inputs: inputs)
    with pytest.raises(ValueError, match="reduction must be one of mean, share"):
        register_score("never_registered", reduction="median")
    with pytest.raises(KeyError, match="unknown importance score 'nope'"):
        get_score("nope")


def test_taylor_is_gate_times_gradient_per_expert_summed_per_matrix() -> None:
    gates = torch.tensor([[0.25, 0.75, 0.0], [0.0, 0.5, 0.5]])
    grads = torch.tensor([[2.0, -1.0, 5.0], [3.0, 0.5, -4.0]])
    matrix, expert = get_score("taylor")(GateGradInputs(gates=gates, gate_grads=grads))
    torch.testing.assert_close(expert, torch.tensor([[0.5, 0.75, 0.0], [0.0, 0.25, 2.0]]))
    torch.testing.assert_close(matrix, torch.tensor([1.25, 2.25]))  # unselected experts add 0


def test_cosine_share_scores_tokens_like_cosine() -> None:
    torch.manual_seed(0)
    inputs = ScoreInputs(
        base_out=torch.randn(5, 4),
        delta=torch.randn(5, 4),
        gates=torch.rand(5, 3),
        expert_norms=torch.rand(5, 3),
    )
    for got, want in zip(
        get_score("cosine_share")(inputs), get_score("cosine")(inputs), strict=True
    ):
        torch.testing.assert_close(got, want)
    assert ((get_score("cosine")(inputs)[0] >= 0) & (get_score("cosine")(inputs)[0] <= 2)).all()
