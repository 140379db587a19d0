"""The pool bridge starts as the static merge, is linear in its mixing, and stays small."""

from __future__ import annotations

import pytest
import torch

from smartfed.errors import ConfigError
from smartfed.pool import load_pool
from smartfed.tuners.bridge import BridgeConfig, BridgeModel
from smartfed.tuners.lorahub import LoraHubConfig, LoraHubModel

from ..conftest import make_tiny_llama


@pytest.fixture
def pool(make_adapter):
    return load_pool([str(make_adapter(n, r=4, alpha=8, seed=i)) for i, n in enumerate("ab")])


def test_starts_as_the_merge_of_the_pool(pool) -> None:
    ids = torch.randint(0, 200, (2, 12))
    merged = LoraHubModel(make_tiny_llama(), pool, LoraHubConfig(init="uniform"))
    bridge = BridgeModel(make_tiny_llama(), pool, BridgeConfig(rank=4))
    torch.testing.assert_close(bridge(input_ids=ids).logits, merged(input_ids=ids).logits)


def test_forward_equals_the_delta_weight(pool) -> None:
    bridge = BridgeModel(make_tiny_llama(), pool, BridgeConfig(rank=2))
    layer = next(iter(bridge.tuner_layers().values()))
    with torch.no_grad():
        layer.bridge_U.normal_()
    x = torch.randn(5, layer.in_features)
    expected = layer.base_layer(x) + x @ layer.delta_weight().T
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)
    assert tuple(layer.mixing().shape) == (8, 8)  # M = 4 + 4 experts


def test_only_u_and_v_train_and_their_size(pool) -> None:
    bridge = BridgeModel(make_tiny_llama(), pool, BridgeConfig(rank=3))
    params = bridge.trainable_parameters()
    assert params and all(n.endswith((".bridge_U", ".bridge_V")) for n in params)
    assert all(tuple(p.shape) == (8, 3) for p in params.values())


def test_rank_above_eight_is_refused() -> None:
    with pytest.raises(ConfigError, match="between 1 and 8"):
        BridgeConfig(rank=9)
