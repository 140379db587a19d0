"""Importance accumulates during ordinary forward passes, skips padding, and resets per round."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from smartfed.importance.scores import IMPORTANCE_SCORES
from smartfed.pool import load_pool
from smartfed.tuners.more import MoreConfig, MoreModel

from ..conftest import make_tiny_llama


def test_matrix_and_expert_scores_match_their_definition(make_adapter):
    pool = load_pool([str(make_adapter("a", r=4, alpha=8)), str(make_adapter("b", r=4, alpha=8))])
    more = MoreModel(make_tiny_llama(), pool, MoreConfig(top_k=3))
    layer = more.tuner_layers()["model.layers.0.self_attn.q_proj"]
    x = torch.randn(6, layer.in_features)
    more.track_importance(True)
    with torch.no_grad():
        out = layer(x)
        base = layer.base_layer(x)
        gates = layer.gates(x)
        expected_matrix = (1 - F.cosine_similarity(base, out, dim=-1)).mean()

    stats = more.read_importance()
    index = more.matrix_names.index("model.layers.0.self_attn.q_proj")
    assert stats.tokens == 6
    np.testing.assert_allclose(stats.matrix[index], expected_matrix.item(), rtol=1e-5)
    np.testing.assert_allclose(stats.mean_gate[index], gates.mean(0).numpy(), rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(stats.mean_gate[index].sum(), 1.0, rtol=1e-6)  # renormalised
    # read_importance(reset=True) starts a new round
    assert more.read_importance().tokens == 0


def test_padding_tokens_are_excluded(make_adapter, input_ids):
    pool = load_pool([str(make_adapter("a"))])
    more = MoreModel(make_tiny_llama(), pool, MoreConfig(top_k=2))
    more.track_importance(True)
    mask = torch.ones_like(input_ids)
    mask[0, 4:] = 0
    with torch.no_grad():
        more(input_ids=input_ids, attention_mask=mask)
    assert more.read_importance().tokens == int(mask.sum())


def test_not_tracked_unless_enabled(make_adapter, input_ids):
    more = MoreModel(make_tiny_llama(), load_pool([str(make_adapter())]), MoreConfig(top_k=2))
    with torch.no_grad():
        more(input_ids=input_ids)
    assert more.read_importance().tokens == 0


def test_scorers_are_pluggable(make_adapter, input_ids):
    assert {"cosine", "relative_norm"} <= set(IMPORTANCE_SCORES)
    pool = load_pool([str(make_adapter())])
    results = {}
    for name in ("cosine", "relative_norm"):
        more = MoreModel(make_tiny_llama(), pool, MoreConfig(top_k=2, importance_score=name))
        more.track_importance(True)
        with torch.no_grad():
            more(input_ids=input_ids)
        results[name] = more.read_importance().matrix
        assert (results[name] > 0).all()
    assert not np.allclose(results["cosine"], results["relative_norm"])
