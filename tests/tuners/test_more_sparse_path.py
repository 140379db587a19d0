"""The MoRE layer's sparse expert path (only the K selected columns of B per token) computes the
same function, gradients and importance as the dense path."""

from __future__ import annotations

import pytest
import torch

from smartfed.errors import ConfigError
from smartfed.pool import load_pool
from smartfed.tuners.more import MoreConfig, MoreModel

from ..conftest import make_tiny_llama

Q0 = "model.layers.0.self_attn.q_proj"


@pytest.fixture
def pool(make_adapter):
    # M = 4 + 8 = 12 experts on q_proj and v_proj: K = 3 leaves 9 unselected per token.
    return load_pool([str(make_adapter("a", r=4, alpha=8)), str(make_adapter("b", r=8, alpha=8))])


def _pair(pool, **config) -> tuple[MoreModel, MoreModel]:
    models = []
    for path in ("dense", "sparse"):
        torch.manual_seed(7)  # the same router draw on both
        models.append(MoreModel(make_tiny_llama(), pool, MoreConfig(expert_path=path, **config)))
    return models[0], models[1]


def _router_grads(model: MoreModel) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("router", ["linear", "diag_lowrank"])
@pytest.mark.parametrize("output_scale", ["k", "learnable"])
def test_sparse_path_equals_dense_in_loss_gradients_and_importance(
    pool, input_ids, router, output_scale
):
    dense, sparse = _pair(
        pool, top_k=3, router=router, output_scale=output_scale, router_init_std=0.5
    )
    assert sparse.tuner_layers()[Q0].expert_path == "sparse"
    losses = []
    for model in (dense, sparse):
        model.train()
        model.track_importance(True)
        loss = model(input_ids=input_ids, labels=input_ids).loss
        loss.backward()
        losses.append(loss)
    torch.testing.assert_close(losses[1], losses[0], atol=1e-5, rtol=1e-5)
    grads_dense, grads_sparse = _router_grads(dense), _router_grads(sparse)
    assert grads_dense.keys() == grads_sparse.keys()
    assert any(g.abs().max() > 0 for g in grads_dense.values())
    for name, grad in grads_dense.items():
        torch.testing.assert_close(grads_sparse[name], grad, atol=1e-6, rtol=1e-4, msg=name)
    stats_dense, stats_sparse = dense.read_importance(), sparse.read_importance()
    assert stats_dense.matrix.max() > 0
    torch.testing.assert_close(
        torch.from_numpy(stats_sparse.matrix),
        torch.from_numpy(stats_dense.matrix),
        rtol=1e-4,
        atol=1e-9,
    )
    for got, expected in zip(stats_sparse.mean_gate, stats_dense.mean_gate, strict=True):
        torch.testing.assert_close(torch.from_numpy(got), torch.from_numpy(expected))


def test_sparse_path_skips_unselected_experts(pool):
    """The sparse path must not read unselected columns of B: poisoning them changes nothing."""
    _, sparse = _pair(pool, top_k=2, router_init_std=0.5)
    layer = sparse.tuner_layers()[Q0]
    torch.manual_seed(1)
    x = torch.randn(5, layer.in_features)
    with torch.no_grad():
        gates, indices = layer.gates_with_indices(x)
        before = layer(x)
        unselected = torch.ones(layer.num_experts, dtype=torch.bool)
        unselected[indices.unique()] = False
        assert unselected.any()
        layer.expert_B_rows[unselected] = float("nan")
        torch.testing.assert_close(layer(x), before)
    assert gates.count_nonzero(dim=-1).eq(2).all()


def test_taylor_importance_matches_on_the_sparse_path(pool, input_ids):
    dense, sparse = _pair(pool, top_k=3, importance_score="taylor", router_init_std=0.5)
    for model in (dense, sparse):
        model.train()
        model.track_importance(True)
        model(input_ids=input_ids, labels=input_ids).loss.backward()
    got, expected = sparse.read_importance().matrix, dense.read_importance().matrix
    assert expected.max() > 0
    torch.testing.assert_close(
        torch.from_numpy(got), torch.from_numpy(expected), rtol=1e-4, atol=1e-9
    )


def test_paths_switch_at_runtime_and_k_equal_m_stays_dense(pool, input_ids):
    dense, _ = _pair(pool, top_k=3, router_init_std=0.5)
    with torch.no_grad():
        reference = dense(input_ids=input_ids).logits
        dense.set_expert_path("sparse")
        assert dense.config.expert_path == "sparse"
        torch.testing.assert_close(dense(input_ids=input_ids).logits, reference)
        dense.set_quotas([12] * len(dense.matrix_names))  # K = M: nothing to skip
        full = dense(input_ids=input_ids).logits
        dense.set_expert_path("dense")
        assert "expert_B_rows" not in dict(dense.tuner_layers()[Q0].named_buffers())
        torch.testing.assert_close(dense(input_ids=input_ids).logits, full)


def test_unknown_expert_path_is_refused():
    with pytest.raises(ConfigError, match="expert_path"):
        MoreConfig(expert_path="gather")
