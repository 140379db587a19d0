"""Heterogeneous pools train, freeze what they should, and round-trip through save/load."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from smartfed.errors import PoolError
from smartfed.pool import load_pool
from smartfed.tuners.more import MoreConfig, MoreModel

from ..conftest import make_tiny_llama, train_steps


@pytest.fixture
def hetero_pool(make_adapter):
    paths = [
        make_adapter("r4", r=4, alpha=8),
        make_adapter("r8", r=8, alpha=32, use_rslora=True),
        make_adapter("v_only", r=4, alpha=4, targets=("v_proj",)),
    ]
    return load_pool([str(p) for p in paths])


def test_heterogeneous_pool_builds_with_per_matrix_capacities(hetero_pool):
    more = MoreModel(make_tiny_llama(), hetero_pool, MoreConfig(top_k=6))
    caps = dict(zip(more.matrix_names, more.capacities.tolist(), strict=True))
    assert caps["model.layers.0.self_attn.q_proj"] == 4 + 8
    assert caps["model.layers.0.self_attn.v_proj"] == 4 + 8 + 4
    assert more.get_quotas().tolist() == [6] * len(more.matrix_names)
    owners = more.expert_owners["model.layers.1.self_attn.v_proj"]
    assert [o[0] for o in owners] == ["r4"] * 4 + ["r8"] * 8 + ["v_only"] * 4


def test_gradients_reach_only_routers(hetero_pool, input_ids):
    more = MoreModel(make_tiny_llama(), hetero_pool, MoreConfig(top_k=3))
    more.train()
    more(input_ids=input_ids, labels=input_ids).loss.backward()
    trainable = {n for n, p in more.named_parameters() if p.requires_grad}
    assert trainable and all(n.endswith("router.weight") for n in trainable)
    for name, param in more.named_parameters():
        if name in trainable:
            assert param.grad is not None and param.grad.abs().sum() > 0, name
        else:
            assert param.grad is None, name
    assert all(not b.requires_grad for b in more.buffers())
    expected = sum(int(c) * 32 for c in more.capacities)  # M_ℓ × d_in (hidden 32)
    assert more.num_trainable_parameters() == expected


def test_learnable_scale_is_trainable_and_communicated(hetero_pool, input_ids):
    more = MoreModel(make_tiny_llama(), hetero_pool, MoreConfig(top_k=3, output_scale="learnable"))
    names = set(more.router_state_dict())
    assert sum(n.endswith("output_scale") for n in names) == len(more.matrix_names)
    losses = train_steps(more, input_ids, steps=2)
    assert np.isfinite(losses).all()


def test_training_lowers_loss(hetero_pool, input_ids):
    more = MoreModel(make_tiny_llama(), hetero_pool, MoreConfig(top_k=4))
    losses = train_steps(more, input_ids, steps=15)
    assert losses[-1] < losses[0] - 0.05


def test_quota_change_keeps_shapes_and_changes_active_experts(hetero_pool):
    more = MoreModel(make_tiny_llama(), hetero_pool, MoreConfig(top_k=2))
    shapes = {k: tuple(v.shape) for k, v in more.router_state_dict().items()}
    layer = more.tuner_layers()["model.layers.0.self_attn.v_proj"]
    x = torch.randn(9, layer.in_features)
    assert ((layer.gates(x) > 0).sum(-1) == 2).all()
    new = more.capacities.copy()
    new[:] = 1
    new[more.matrix_names.index("model.layers.0.self_attn.v_proj")] = 11
    more.set_quotas(new)
    assert ((layer.gates(x) > 0).sum(-1) == 11).all()
    torch.testing.assert_close(layer.gates(x).sum(-1), torch.ones(9))
    assert {k: tuple(v.shape) for k, v in more.router_state_dict().items()} == shapes
    with pytest.raises(ValueError):
        layer.set_quota(layer.num_experts + 1)


def test_save_load_round_trip(hetero_pool, input_ids, tmp_path):
    more = MoreModel(make_tiny_llama(), hetero_pool, MoreConfig(top_k=5))
    train_steps(more, input_ids, steps=3)
    quotas = more.get_quotas()
    quotas[0] = 1
    more.set_quotas(quotas)
    more.eval()
    with torch.no_grad():
        expected = more(input_ids=input_ids).logits
    more.save_pretrained(tmp_path / "routers")
    saved = json.loads((tmp_path / "routers" / "more_config.json").read_text())
    assert saved["quotas"] == quotas.tolist()
    assert saved["pool"]["fingerprint"] == hetero_pool.fingerprint()

    reloaded = MoreModel.from_pretrained(make_tiny_llama(), hetero_pool, tmp_path / "routers")
    reloaded.eval()
    assert reloaded.get_quotas().tolist() == quotas.tolist()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=input_ids).logits, expected)


def test_load_against_a_different_pool_fails_clearly(hetero_pool, make_adapter, tmp_path):
    MoreModel(make_tiny_llama(), hetero_pool, MoreConfig(top_k=5)).save_pretrained(tmp_path / "r")
    other = load_pool([str(make_adapter("other", r=4, alpha=8))])
    with pytest.raises(PoolError, match="fingerprint"):
        MoreModel.from_pretrained(make_tiny_llama(), other, tmp_path / "r")


def test_unload_restores_the_base_model(hetero_pool, input_ids):
    base_logits = make_tiny_llama()(input_ids=input_ids).logits
    more = MoreModel(make_tiny_llama(), hetero_pool, MoreConfig(top_k=5))
    plain = more.unload()
    torch.testing.assert_close(plain(input_ids=input_ids).logits, base_logits)
