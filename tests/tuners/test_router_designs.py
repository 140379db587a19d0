"""The built-in router designs (smartfed.tuners.routers): training, top-K, shapes, dtypes, sizes,
initialisation, MoLE refusal and the router_rank setting."""

from __future__ import annotations

import argparse

import pytest
import torch

from smartfed.errors import ConfigError, PoolError
from smartfed.methods.mole import MoleSettings
from smartfed.methods.smartfed import SmartFedSettings
from smartfed.pool import load_pool
from smartfed.tuners.mole import MoleConfig, MoleModel
from smartfed.tuners.more import MoreConfig, MoreModel
from smartfed.tuners.routers import normalised_scores
from smartfed.tuners.routing import get_router, router_names

from ..conftest import make_tiny_llama, train_steps

DESIGNS = ("linear", "projection", "lowrank", "diagonal", "diag_lowrank")
NEW = DESIGNS[1:]
ON_EXPERTS = ("projection", "diagonal", "diag_lowrank")
RANKED = ("lowrank", "diag_lowrank")
PRIOR = ("diagonal", "diag_lowrank")  # designs that claim to start from the zero-shot score


@pytest.fixture
def pool(make_adapter):
    """M = 8 experts on q_proj (32 -> 32) and v_proj (32 -> 16), 4 on k_proj."""
    paths = [
        make_adapter("a", r=4, alpha=8, seed=1),
        make_adapter("b", r=4, alpha=4, targets=("q_proj", "v_proj", "k_proj"), seed=2),
    ]
    return load_pool([str(p) for p in paths])


def build(pool, router, *, top_k=2, dtype=None, **config):
    model = make_tiny_llama()
    if dtype is not None:
        model = model.to(dtype)
    torch.manual_seed(0)
    return MoreModel(model, pool, MoreConfig(top_k=top_k, router=router, **config))


def first_layer(more):
    return next(iter(more.tuner_layers().values()))


def raw_score(layer, x):
    """|A_i x|·‖B_i‖ computed here, independently of the routers module."""
    z = x @ layer.expert_A.T.float()
    return z, z.abs() * layer.expert_B.float().norm(dim=0)


# ---------------------------------------------------------------------- registry and sizes
def test_every_design_is_registered_with_a_one_line_size_formula():
    for name in DESIGNS:
        assert name in router_names()
        first_line = get_router(name).__doc__.strip().splitlines()[0]
        assert "values per matrix" in first_line, name


def test_compact_designs_fit_in_1024_values_on_the_demo_shapes():
    """M = 64 experts (two rank-32 pool modules), d_in = 576 (SmolLM2-135M)."""
    sizes = {name: get_router(name).communicated_values(576, 64) for name in DESIGNS}
    assert sizes["diagonal"] <= 1024 and sizes["diag_lowrank"] <= 1024
    assert sizes["diag_lowrank"] == 2 * 64 + 2 * 64 * 4  # rank 4 by default
    assert sizes["projection"] == 64 * 64 < sizes["linear"] == 64 * 576
    assert get_router("lowrank").communicated_values(576, 64, rank=8) == (576 + 64) * 8


@pytest.mark.parametrize(
    ("name", "rank"), [*((name, None) for name in DESIGNS), *((name, 2) for name in RANKED)]
)
def test_size_formula_equals_numel_equals_bytes(name, rank, pool):
    more = build(pool, name, router_rank=rank)
    design = get_router(name)
    options = {} if rank is None else {"rank": rank}
    total = 0
    for layer in more.tuner_layers().values():
        numel = sum(p.numel() for p in layer.router.parameters() if p.requires_grad)
        values = design.communicated_values(layer.in_features, layer.num_experts, **options)
        assert numel == values
        total += values
    state = more.trainable_state_dict()
    # Only the router is sent, one tensor per matrix (Flower adds ~170 bytes per tensor)
    assert sorted(state) == sorted(f"{m}.router.weight" for m in more.matrix_names)
    assert all(t.dtype == torch.float32 for t in state.values())
    assert total * 4 == sum(t.numel() * t.element_size() for t in state.values())
    assert total == more.num_trainable_parameters()


# ---------------------------------------------------------------------- behaviour
@pytest.mark.parametrize("name", DESIGNS)
def test_design_trains_with_only_router_parameters(name, pool, input_ids):
    more = build(pool, name)
    trainable = [n for n, p in more.named_parameters() if p.requires_grad]
    assert trainable and all(".router." in n for n in trainable)
    losses = train_steps(more, input_ids, steps=8)
    assert losses[-1] < losses[0] - 1e-3, losses


@pytest.mark.parametrize("name", DESIGNS)
def test_each_token_keeps_exactly_k_experts(name, pool):
    more = build(pool, name, top_k=1)
    layer = first_layer(more)
    torch.manual_seed(1)
    x = torch.randn(20, layer.in_features)
    for k in (1, 3, layer.num_experts - 1):
        layer.set_quota(k)
        with torch.no_grad():
            gates = layer.gates(x)
        assert gates.dtype == torch.float32 and gates.shape == (20, layer.num_experts)
        assert ((gates > 0).sum(-1) == k).all()
        torch.testing.assert_close(gates.sum(-1), torch.ones(20))


@pytest.mark.parametrize("name", DESIGNS)
def test_shapes_do_not_depend_on_k(name, pool):
    shapes = {}
    for k in (1, 5):
        more = build(pool, name, top_k=k)
        shapes[k] = {n: tuple(t.shape) for n, t in more.trainable_state_dict().items()}
        more.set_quotas([2] * len(more.matrix_names))
        assert {n: tuple(t.shape) for n, t in more.trainable_state_dict().items()} == shapes[k]
    assert shapes[1] == shapes[5]


@pytest.mark.parametrize("name", DESIGNS)
def test_routers_stay_float32_on_a_bfloat16_base(name, pool, input_ids):
    more = build(pool, name, dtype=torch.bfloat16)
    layer = first_layer(more)
    assert layer.expert_A.dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in layer.router.parameters())
    assert all(b.dtype == torch.float32 for b in layer.router.buffers())
    more.train()
    loss = more(input_ids=input_ids, labels=input_ids).loss
    loss.backward()
    assert torch.isfinite(loss)
    grads = [p.grad for p in more.trainable_parameters().values()]
    assert all(g is not None and g.dtype == torch.float32 and g.isfinite().all() for g in grads)
    # (diag_lowrank's V gets no gradient while U is still zero, like LoRA's A)
    assert sum(g.abs().sum() for g in grads) > 0


@pytest.mark.parametrize("name", ON_EXPERTS)
def test_designs_on_experts_read_the_per_token_normalised_score(name, pool):
    """s = z ⊙ ‖B‖ / rms_token: the logits do not change when a token is scaled."""
    layer = first_layer(build(pool, name))
    torch.manual_seed(2)
    x = torch.randn(6, layer.in_features)
    with torch.no_grad():
        z = x @ layer.expert_A.T
        scaled = layer.router(3.0 * x, 3.0 * z)
        logits = layer.router(x, z)
    torch.testing.assert_close(scaled, logits)
    t = z * layer.expert_B.norm(dim=0)
    s = t / t.pow(2).mean(-1, keepdim=True).sqrt()
    torch.testing.assert_close(normalised_scores(z, layer.expert_B.norm(dim=0)), s)
    if name == "projection":
        torch.testing.assert_close(logits, s @ layer.router.weight.T)


@pytest.mark.parametrize("name", PRIOR)
def test_compact_designs_start_at_the_zero_shot_score(name, pool):
    """Initial logits are |s| and top-K picks the experts with the largest |A_i x|·‖B_i‖."""
    more = build(pool, name, top_k=3)
    layer = first_layer(more)
    torch.manual_seed(3)
    x = torch.randn(40, layer.in_features)
    z, score = raw_score(layer, x)
    with torch.no_grad():
        logits = layer.router(x, z)
        gates = layer.gates(x)
    t = z * layer.expert_B.norm(dim=0)
    torch.testing.assert_close(logits, (t / t.pow(2).mean(-1, keepdim=True).sqrt()).abs())
    chosen = gates > 0
    top = torch.zeros_like(chosen).scatter(-1, score.topk(3, dim=-1).indices, True)
    assert torch.equal(chosen, top)
    # Larger score, larger gate, among the chosen experts of every token.
    order = score.masked_fill(~chosen, -1).argsort(-1, descending=True)[:, :3]
    kept = gates.gather(-1, order)
    assert (kept[:, :-1] >= kept[:, 1:]).all()
    # The signed score would route elsewhere: the test tells |s| from s.
    signed = torch.zeros_like(chosen).scatter(-1, t.topk(3, dim=-1).indices, True)
    assert not torch.equal(signed, top)


def test_second_matrices_start_small_or_zero(pool):
    lowrank = first_layer(build(pool, "lowrank")).router
    assert lowrank.up.abs().max() < 0.2 and lowrank.up.abs().sum() > 0  # N(0, 0.02²)
    uniform = first_layer(build(pool, "lowrank", router_init_std=0.0)).router
    assert not uniform.up.any() and uniform.down.any()
    diag_lowrank = first_layer(build(pool, "diag_lowrank")).router
    assert not diag_lowrank.up.any() and diag_lowrank.down.any()
    assert torch.equal(diag_lowrank.scale, torch.ones_like(diag_lowrank.scale))
    assert not diag_lowrank.bias.any()


def test_a_design_with_a_rank_saves_and_loads_its_rank(pool, input_ids, tmp_path):
    more = build(pool, "diag_lowrank", router_rank=2)
    with torch.no_grad():
        for param in more.trainable_parameters().values():
            param.add_(0.1)
    more.save_pretrained(tmp_path / "r2")
    loaded = MoreModel.from_pretrained(make_tiny_llama(), pool, tmp_path / "r2")
    assert loaded.config.router_rank == 2
    for name, tensor in more.trainable_state_dict().items():
        assert torch.equal(loaded.trainable_state_dict()[name], tensor)
    other = build(pool, "diag_lowrank", router_rank=3)
    with pytest.raises(PoolError, match="router_rank=2"):
        other.load_pretrained_state(tmp_path / "r2")


# ---------------------------------------------------------------------- MoLE
@pytest.mark.parametrize("name", ON_EXPERTS)
def test_mole_refuses_designs_on_expert_projections(name, pool):
    assert get_router(name).needs_experts
    with pytest.raises(ConfigError, match="needs rank-1 experts"):
        MoleModel(make_tiny_llama(), pool, MoleConfig(router=name))
    with pytest.raises(ConfigError, match="MoLE routes whole modules"):
        MoleSettings(router=name)


def test_mole_takes_the_lowrank_design_on_x(pool, input_ids):
    mole = MoleModel(make_tiny_llama(), pool, MoleConfig(router="lowrank"))
    layer = next(iter(mole.tuner_layers().values()))
    assert layer.router.rank == 4
    expected = sum(
        get_router("lowrank").communicated_values(layer.in_features, layer.num_choices)
        for layer in mole.tuner_layers().values()
    )
    assert mole.num_trainable_parameters() == expected
    assert torch.isfinite(mole(input_ids=input_ids, labels=input_ids).loss)


# ---------------------------------------------------------------------- router_rank setting
@pytest.mark.parametrize("name", ("linear", *ON_EXPERTS[:2]))
def test_router_rank_is_refused_for_designs_without_a_rank(name):
    for make in (
        lambda: SmartFedSettings(router=name, router_rank=4),
        lambda: MoreConfig(router=name, router_rank=4),
    ):
        with pytest.raises(ConfigError, match="router_rank does not apply") as info:
            make()
        assert "\n" not in str(info.value)
    assert SmartFedSettings(router=name).router_rank is None
    assert "router_rank" in SmartFedSettings.inapplicable({"router": name})


@pytest.mark.parametrize("name", RANKED)
def test_router_rank_defaults_to_4_where_used_and_is_checked(name):
    assert SmartFedSettings(router=name).router_rank == 4
    assert SmartFedSettings(router=name, router_rank=7).router_rank == 7
    assert MoreConfig(router=name).router_rank == 4
    assert "router_rank" not in SmartFedSettings.inapplicable({"router": name})
    with pytest.raises(ConfigError, match="router_rank must be >= 1"):
        SmartFedSettings(router=name, router_rank=0)
    with pytest.raises(ConfigError, match="router_rank must be an integer >= 1"):
        MoreConfig(router=name, router_rank=0)


def test_router_rank_reaches_the_layers_through_the_run_config(tiny_run_config):
    from smartfed.assembly.runtime import Runtime

    config = tiny_run_config(method="smartfed", router="diag_lowrank", router_rank=2)
    assert config.settings.router_rank == 2
    method = Runtime(config).method
    layers = method.model.tuner_layers().values()
    assert all(layer.router.rank == 2 for layer in layers)
    assert all(layer.router.up.shape == (layer.num_experts, 2) for layer in layers)
    sent = method.global_state()
    values = sum(
        get_router("diag_lowrank").communicated_values(layer.in_features, layer.num_experts, 2)
        for layer in layers
    )
    assert sum(t.numel() * t.element_size() for t in sent.values()) == 4 * values
    with pytest.raises(ConfigError, match="router_rank does not apply"):
        tiny_run_config(method="smartfed", router="linear", router_rank=2)


def test_a_presets_router_rank_is_dropped_for_a_design_without_one(tiny_run_config):
    from smartfed.assembly.config import SettingValues

    values = SettingValues()
    values.add({"router_rank": 8}, "preset", from_preset=True)
    values.add({"router": "projection"}, "test")
    assert values.config_for("smartfed").settings.router_rank is None


def test_methods_listing_shows_every_design_with_its_formula(capsys):
    from smartfed.cli.bench_commands import cmd_methods

    cmd_methods(argparse.Namespace())
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if "[router]" in line]
    for name in DESIGNS:
        first_line = get_router(name).__doc__.strip().splitlines()[0]
        assert any(line.startswith(name + " ") and first_line in line for line in lines), name
    # SmartFed's default design, diag_lowrank, has a rank; MoLE's (linear) has none.
    assert "--router diag_lowrank" in out and "--router_rank 4" in out
