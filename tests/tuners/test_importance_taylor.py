"""Gradient importance (``taylor``) through the gates' hook, share reductions, and the ``k0``
output scale of the MoRE layer."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from smartfed.pool import load_pool
from smartfed.tuners.more import MoreConfig, MoreModel
from smartfed.tuners.routing import scale_factor

from ..conftest import make_tiny_llama

Q0 = "model.layers.0.self_attn.q_proj"


@pytest.fixture
def pool(make_adapter):
    return load_pool([str(make_adapter("a", r=4, alpha=8)), str(make_adapter("b", r=4, alpha=8))])


def _expected_taylor(layer, x: torch.Tensor, w: torch.Tensor, keep: torch.Tensor) -> float:
    """Σ over kept tokens and experts of |ĝ_i ∂L/∂ĝ_i| for L = Σ ⟨w_t, h'_t⟩, in closed form:
    ∂L/∂ĝ_i = c ⟨w, B_i⟩ (A_i x), without autograd."""
    with torch.no_grad():
        gates = layer.gates(x)
        per_expert = (
            gates * float(layer.scale()) * (w @ layer.expert_B) * (x @ layer.expert_A.T)
        ).abs()
    return float(per_expert.sum(dim=-1)[keep].sum())


def test_taylor_hook_accumulates_gate_times_gradient_of_kept_tokens(pool):
    more = MoreModel(make_tiny_llama(), pool, MoreConfig(top_k=3, importance_score="taylor"))
    layer = more.tuner_layers()[Q0]
    torch.manual_seed(3)
    x = torch.randn(6, layer.in_features)
    w = torch.randn(6, layer.out_features)
    keep = torch.tensor([True, True, False, True, True, False])
    more.track_importance(True)
    layer.token_mask = keep
    out = layer(x)
    layer.token_mask = None  # as the tuner does after the forward: the hook kept its own copy
    assert float(layer.importance_sum) == 0.0  # nothing before the backward pass
    (out * w).sum().backward()
    expected = _expected_taylor(layer, x, w, keep)
    assert expected > 0
    np.testing.assert_allclose(float(layer.importance_sum), expected, rtol=1e-5)
    assert int(layer.importance_tokens) == 4


def test_taylor_hook_leaves_the_router_gradient_unchanged(pool):
    grads = {}
    for tracked in (False, True):
        more = MoreModel(make_tiny_llama(), pool, MoreConfig(top_k=3, importance_score="taylor"))
        layer = more.tuner_layers()[Q0]
        torch.manual_seed(3)
        x = torch.randn(6, layer.in_features)
        more.track_importance(tracked)
        (layer(x) ** 2).sum().backward()
        grads[tracked] = layer.router.weight.grad.clone()
        assert (float(layer.importance_sum) > 0) == tracked
    torch.testing.assert_close(grads[True], grads[False], rtol=0, atol=0)


def test_taylor_shares_over_a_training_step(pool, input_ids):
    more = MoreModel(make_tiny_llama(), pool, MoreConfig(top_k=3, importance_score="taylor"))
    mask = torch.ones_like(input_ids)
    mask[0, 4:] = 0
    labels = input_ids.masked_fill(mask == 0, -100)
    more.track_importance(True)
    more(input_ids=input_ids, attention_mask=mask, labels=labels).loss.backward()
    raw = np.array([float(layer.importance_sum) for layer in more.tuner_layers().values()])
    stats = more.read_importance()
    assert stats.tokens == int(mask.sum())
    assert (raw > 0).all()
    np.testing.assert_allclose(stats.matrix, raw / raw.sum(), rtol=1e-12)
    np.testing.assert_allclose(stats.matrix.sum(), 1.0, rtol=1e-12)
    assert ((stats.matrix >= 0) & (stats.matrix <= 1)).all()


def test_taylor_shares_do_not_depend_on_the_loss_scale(pool, input_ids):
    shares = []
    for factor in (1.0, 1000.0):
        more = MoreModel(make_tiny_llama(), pool, MoreConfig(top_k=3, importance_score="taylor"))
        more.track_importance(True)
        (factor * more(input_ids=input_ids, labels=input_ids).loss).backward()
        shares.append(more.read_importance().matrix)
    np.testing.assert_allclose(shares[0], shares[1], rtol=1e-6)


def test_taylor_records_nothing_without_a_backward_pass(pool, input_ids):
    more = MoreModel(make_tiny_llama(), pool, MoreConfig(top_k=3, importance_score="taylor"))
    more.track_importance(True)
    with torch.no_grad():
        more(input_ids=input_ids)
    stats = more.read_importance()
    assert stats.tokens == input_ids.numel()  # gate usage still counts (routing_usage reads it)
    np.testing.assert_array_equal(stats.matrix, np.zeros(len(more.matrix_names)))
    assert all(np.isclose(gates.sum(), 1.0) for gates in stats.mean_gate)


def test_cosine_share_is_the_cosine_means_as_shares(pool, input_ids):
    stats = {}
    for name in ("cosine", "cosine_share"):
        more = MoreModel(make_tiny_llama(), pool, MoreConfig(top_k=2, importance_score=name))
        more.track_importance(True)
        with torch.no_grad():
            more(input_ids=input_ids)
        stats[name] = more.read_importance().matrix
    cosine = stats["cosine"]
    np.testing.assert_allclose(stats["cosine_share"], cosine / cosine.sum(), rtol=1e-9)


# ---------------------------------------------------------------------- output scale k0
def test_scale_factor_k0_is_the_initial_quota():
    assert scale_factor("k0", 5, initial_k=3) == 3.0
    with pytest.raises(ValueError, match="initial quota"):
        scale_factor("k0", 5)


def test_k0_keeps_the_initial_scale_when_the_quota_moves(pool):
    models = {
        mode: MoreModel(make_tiny_llama(), pool, MoreConfig(top_k=3, output_scale=mode))
        for mode in ("k", "k0")
    }
    layers = {mode: model.tuner_layers()[Q0] for mode, model in models.items()}
    torch.manual_seed(4)
    x = torch.randn(5, layers["k"].in_features)
    with torch.no_grad():
        base = layers["k"].base_layer(x)
        same = {mode: layer(x) for mode, layer in layers.items()}
        torch.testing.assert_close(same["k0"], same["k"])  # at the initial quota: identical
        for mode in layers:
            models[mode].set_quotas(np.full(len(models[mode].matrix_names), 6))
        moved = {mode: layer(x) - base for mode, layer in layers.items()}
    assert layers["k0"].scale() == 3.0 and layers["k"].scale() == 6.0
    torch.testing.assert_close(moved["k0"], moved["k"] * 3 / 6)


def test_k0_is_the_quota_clipped_to_the_experts(pool):
    more = MoreModel(make_tiny_llama(), pool, MoreConfig(top_k=50, output_scale="k0"))
    layer = more.tuner_layers()[Q0]
    more.set_quotas(np.full(len(more.matrix_names), 2))
    assert layer.initial_k == layer.num_experts == 8 and layer.scale() == 8.0


def test_tracking_a_training_step_reads_nothing_back_to_the_host(pool, monkeypatch):
    """No .item()/bool()/float() on a tensor in the tracked forward and backward: on a GPU each
    would be a host sync per step (the one read is read_importance, once per round)."""
    more = MoreModel(make_tiny_llama(), pool, MoreConfig(top_k=3, importance_score="taylor"))
    layer = more.tuner_layers()[Q0]
    torch.manual_seed(3)
    x = torch.randn(6, layer.in_features)
    more.track_importance(True)
    layer.token_mask = torch.tensor([True, True, False, True, True, False])

    def refuse(*args, **kwargs):
        raise AssertionError("host read of a tensor during a tracked step")

    for name in ("item", "tolist", "__bool__", "__float__", "__int__"):
        monkeypatch.setattr(torch.Tensor, name, refuse)
    (layer(x) ** 2).sum().backward()
    monkeypatch.undo()
    assert float(layer.importance_sum) > 0 and int(layer.importance_tokens) == 4
