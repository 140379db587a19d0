"""Top-K gating, the output scale and the registry of router designs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from smartfed.errors import ConfigError, PoolError
from smartfed.pool import load_pool
from smartfed.tuners.mole import MoleConfig, MoleModel
from smartfed.tuners.more import MoreConfig, MoreModel
from smartfed.tuners.routing import (
    ROUTER_DESIGNS,
    LinearRouter,
    RouterDesign,
    get_router,
    init_normal_,
    register_router,
    route,
    router_names,
    scale_factor,
    top_k_gates,
)

from ..conftest import make_tiny_llama


@pytest.fixture
def pool(make_adapter):
    paths = [
        make_adapter("r4", r=4, alpha=8, seed=1),
        make_adapter("r2", r=2, alpha=4, targets=("v_proj",), seed=2),
    ]
    return load_pool([str(p) for p in paths])


# ---------------------------------------------------------------------- gating
def test_top_k_gates_keep_k_renormalised_and_zero_elsewhere():
    torch.manual_seed(0)
    probs = torch.softmax(torch.randn(10, 6), dim=-1)
    gates = top_k_gates(probs, 2)
    assert ((gates > 0).sum(-1) == 2).all()
    torch.testing.assert_close(gates.sum(-1), torch.ones(10))
    top = probs.topk(2, dim=-1)
    kept = gates.gather(-1, top.indices)
    torch.testing.assert_close(kept, top.values / top.values.sum(-1, keepdim=True))


def test_top_k_at_or_above_m_is_the_plain_softmax():
    probs = torch.softmax(torch.randn(4, 3), dim=-1)
    assert top_k_gates(probs, 3) is probs
    assert top_k_gates(probs, 50) is probs


def test_uniform_gates_put_every_token_on_the_same_k_choices():
    gates = top_k_gates(torch.full((3, 5), 0.2), 2)
    assert ((gates > 0).sum(-1) == 2).all()
    assert torch.equal(gates, gates[:1].expand(3, 5))
    torch.testing.assert_close(gates[gates > 0], torch.full((6,), 0.5))


def test_route_computes_the_softmax_in_float32():
    router = LinearRouter(4, 3, init_std=0.5)
    x = torch.randn(5, 4, dtype=torch.bfloat16)
    gates = route(router, x, None, 2)
    assert gates.dtype == torch.float32
    probs = torch.softmax(x.float() @ router.weight.T, dim=-1)
    torch.testing.assert_close(gates, top_k_gates(probs, 2))


def test_scale_factor():
    learned = torch.tensor(2.5)
    assert scale_factor("k", 4) == 4.0
    assert scale_factor("one", 4) == 1.0
    assert scale_factor("learnable", 4, learned) is learned


# ---------------------------------------------------------------------- linear router
@pytest.mark.parametrize("std", [0.02, 0.0])
def test_linear_router_draws_like_the_nn_linear_router_it_replaces(std):
    """Same RNG draws as nn.Linear + normal_/zeros_: seeded runs keep their routers."""
    torch.manual_seed(5)
    reference = nn.Linear(7, 3, bias=False)
    init_normal_(reference.weight, std)
    after_reference = torch.rand(4)
    torch.manual_seed(5)
    router = LinearRouter(7, 3, init_std=std)
    assert torch.equal(router.weight, reference.weight)
    assert torch.equal(torch.rand(4), after_reference)
    assert [name for name, _ in router.named_parameters()] == ["weight"]
    assert router.weight.dtype == torch.float32


def test_linear_communicated_values_equal_the_trained_router_values(pool):
    for tuner in (
        MoreModel(make_tiny_llama(), pool, MoreConfig(top_k=2)),
        MoleModel(make_tiny_llama(), pool),
    ):
        for layer in tuner.tuner_layers().values():
            trained = sum(p.numel() for p in layer.router.parameters() if p.requires_grad)
            assert trained == LinearRouter.communicated_values(layer.in_features, layer.num_choices)
        total = sum(
            LinearRouter.communicated_values(layer.in_features, layer.num_choices)
            for layer in tuner.tuner_layers().values()
        )
        assert total == tuner.num_trainable_parameters()


# ---------------------------------------------------------------------- registry
def test_registry_knows_linear():
    assert "linear" in router_names()
    assert get_router("linear") is LinearRouter
    assert MoreConfig().router == "linear" and MoleConfig().router == "linear"


def test_unknown_router_is_a_one_line_error_listing_known_designs():
    with pytest.raises(ConfigError) as info:
        get_router("lineer")
    message = str(info.value)
    assert "\n" not in message
    assert "'lineer'" in message and "known: " in message and "linear" in message
    with pytest.raises(ConfigError, match=r"known: .*linear"):
        MoreConfig(router="lineer")
    with pytest.raises(ConfigError, match=r"known: .*linear"):
        MoleConfig(router="lineer")


def test_a_design_cannot_be_registered_twice_or_without_a_name():
    with pytest.raises(ValueError, match="registered twice"):
        register_router(type("Again", (LinearRouter,), {}))
    with pytest.raises(ValueError, match="name"):
        register_router(type("Nameless", (RouterDesign,), {"name": ""}))
    with pytest.raises(TypeError):
        register_router(object)  # type: ignore[arg-type]


class ScaledProjectionRouter(RouterDesign):
    """A test design on z = A·x: logits_j = s_j · z_j · ‖B_j‖ (M values per matrix)."""

    name = "test_scaled_projection"
    needs_experts = True

    def __init__(self, in_features, num_experts, *, init_std, expert_A=None, expert_B_norm=None):
        super().__init__(
            in_features,
            num_experts,
            init_std=init_std,
            expert_A=expert_A,
            expert_B_norm=expert_B_norm,
        )
        self.register_buffer("b_norm", expert_B_norm.float(), persistent=False)
        self.scale = nn.Parameter(torch.ones(num_experts))

    def forward(self, x, z):
        return z * self.b_norm * self.scale

    @classmethod
    def communicated_values(cls, in_features, num_experts):
        return num_experts


@pytest.fixture
def test_design():
    register_router(ScaledProjectionRouter)
    yield ScaledProjectionRouter
    del ROUTER_DESIGNS[ScaledProjectionRouter.name]


def test_a_registered_design_is_usable_and_only_its_parameters_train(test_design, pool, input_ids):
    assert test_design.name in router_names()
    more = MoreModel(make_tiny_llama(), pool, MoreConfig(top_k=2, router=test_design.name))
    trainable = {n for n, p in more.model.named_parameters() if p.requires_grad}
    assert trainable == {f"{m}.router.scale" for m in more.matrix_names}
    assert set(more.trainable_state_dict()) == trainable
    expected = sum(
        test_design.communicated_values(layer.in_features, layer.num_experts)
        for layer in more.tuner_layers().values()
    )
    assert more.num_trainable_parameters() == expected == int(more.capacities.sum())

    more.train()
    more(input_ids=input_ids, labels=input_ids).loss.backward()
    for name, param in more.named_parameters():
        if param.requires_grad:
            assert param.grad is not None and param.grad.abs().sum() > 0, name
        else:
            assert param.grad is None, name

    layer = next(iter(more.tuner_layers().values()))
    x = torch.randn(6, layer.in_features)
    with torch.no_grad():
        z = x @ layer.expert_A.T
        probs = torch.softmax(z * layer.expert_B_norm * layer.router.scale, dim=-1)
        torch.testing.assert_close(layer.gates(x), top_k_gates(probs, layer.k))


def test_a_design_on_expert_projections_is_refused_by_mole(test_design, pool):
    config = MoleConfig(router=test_design.name)  # a known name: the config accepts it
    with pytest.raises(ConfigError, match="needs rank-1 experts"):
        MoleModel(make_tiny_llama(), pool, config)


def test_a_saved_router_design_must_match_on_load(test_design, pool, tmp_path):
    MoreModel(make_tiny_llama(), pool, MoreConfig(top_k=2)).save_pretrained(tmp_path / "lin")
    other = MoreModel(make_tiny_llama(), pool, MoreConfig(top_k=2, router=test_design.name))
    with pytest.raises(PoolError, match="router='linear'"):
        other.load_pretrained_state(tmp_path / "lin")
