"""MoLE (module-wise routing) matches hand / PEFT references, trains only routers, round-trips."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft import PeftModel

from smartfed.errors import ConfigError, PoolError
from smartfed.pool import load_pool
from smartfed.tuners.experts import group_experts_by_module
from smartfed.tuners.mole import MoleConfig, MoleModel

from ..conftest import make_tiny_llama, train_steps

ATOL = 1e-5
Q0 = "model.layers.0.self_attn.q_proj"
V0 = "model.layers.0.self_attn.v_proj"


def _peft_deltas(path: Path) -> dict[str, torch.Tensor]:
    """ΔW_n = s_n B_n A_n per matrix as PEFT computes it: (adapter merged by PEFT) − base."""
    base = make_tiny_llama().state_dict()
    merged = PeftModel.from_pretrained(make_tiny_llama(), str(path)).merge_and_unload()
    merged_state = merged.state_dict()
    return {
        key.removesuffix(".weight"): merged_state[key] - base[key]
        for key in base
        if not torch.equal(merged_state[key], base[key])
    }


def _base_plus(updates: dict[str, torch.Tensor]) -> torch.nn.Module:
    model = make_tiny_llama()
    with torch.no_grad():
        for name, delta in updates.items():
            model.get_submodule(name).weight += delta
    return model


def _mean_update_reference(paths: list[Path]) -> torch.nn.Module:
    """W + (1/N_ℓ) Σ_{n adapts ℓ} ΔW_n at every matrix ℓ, ΔW_n taken from PEFT's own merge.

    PEFT cannot give this directly: with every adapter active it adds the full Σ_n ΔW_n (no
    1/N), and add_weighted_adapter("linear") needs equal ranks and weights A and B each by √w,
    which is exact only then. Merging each adapter alone with PEFT and averaging the weight
    differences per matrix is exact for any ranks, alphas, rsLoRA and target sets. N_ℓ counts
    only the modules adapting ℓ: elsewhere a module is not an expert.
    """
    per_module = [_peft_deltas(p) for p in paths]
    matrices = sorted({m for deltas in per_module for m in deltas})
    updates = {}
    for matrix in matrices:
        present = [deltas[matrix] for deltas in per_module if matrix in deltas]
        updates[matrix] = torch.stack(present).mean(dim=0)
    return _base_plus(updates)


@pytest.fixture
def hetero_paths(make_adapter) -> list[Path]:
    return [
        make_adapter("r4", r=4, alpha=8, seed=1),
        make_adapter("r8", r=8, alpha=32, use_rslora=True, seed=2),
        make_adapter("v_only", r=4, alpha=4, targets=("v_proj",), seed=3),
    ]


@pytest.fixture
def hetero_pool(hetero_paths):
    return load_pool([str(p) for p in hetero_paths])


# ---------------------------------------------------------------------- equivalences
def test_dense_uniform_one_equals_base_plus_mean_of_module_updates(
    hetero_paths, hetero_pool, input_ids
):
    config = MoleConfig(top_k=100, output_scale="one", router_init_std=0.0)
    mole = MoleModel(make_tiny_llama(), hetero_pool, config)
    with torch.no_grad():
        got = mole(input_ids=input_ids).logits
        expected = _mean_update_reference(hetero_paths)(input_ids=input_ids).logits
        base = make_tiny_llama()(input_ids=input_ids).logits
    assert (expected - base).abs().max() > 1e-2  # the modules really change the output
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=1e-4)


def test_dense_uniform_k_equals_all_pool_adapters_active_in_peft(
    hetero_paths, hetero_pool, input_ids
):
    # output_scale "k" with k = N_ℓ and gates 1/N_ℓ: the plain sum Σ_n ΔW_n, i.e. PEFT with
    # every adapter active at once.
    config = MoleConfig(top_k=100, output_scale="k", router_init_std=0.0)
    mole = MoleModel(make_tiny_llama(), hetero_pool, config)
    peft_model = PeftModel.from_pretrained(
        make_tiny_llama(), str(hetero_paths[0]), adapter_name="a0"
    )
    for i, path in enumerate(hetero_paths[1:], start=1):
        peft_model.load_adapter(str(path), adapter_name=f"a{i}")
    peft_model.base_model.set_adapter([f"a{i}" for i in range(len(hetero_paths))])
    peft_model.eval()
    with torch.no_grad():
        torch.testing.assert_close(
            mole(input_ids=input_ids).logits,
            peft_model(input_ids=input_ids).logits,
            atol=ATOL,
            rtol=1e-4,
        )


def test_single_module_pool_reproduces_that_adapter(make_adapter, input_ids):
    path = make_adapter("solo", r=6, alpha=12)
    pool = load_pool([str(path)])
    # Default config: random router and top_k=2, clipped to the one module -> gate is always 1.
    mole = MoleModel(make_tiny_llama(), pool)
    assert all(layer.k == 1 for layer in mole.tuner_layers().values())
    peft_model = PeftModel.from_pretrained(make_tiny_llama(), str(path)).eval()
    with torch.no_grad():
        torch.testing.assert_close(
            mole(input_ids=input_ids).logits,
            peft_model(input_ids=input_ids).logits,
            atol=ATOL,
            rtol=1e-4,
        )


def test_top1_routes_each_token_to_exactly_one_whole_module(hetero_paths, hetero_pool):
    config = MoleConfig(top_k=1, router_init_std=1.0)  # a strong random router: varied choices
    mole = MoleModel(make_tiny_llama(), hetero_pool, config)
    layer = mole.tuner_layers()[V0]
    assert layer.module_names == ("r4", "r8", "v_only")
    torch.manual_seed(0)
    x = torch.randn(64, layer.in_features)
    with torch.no_grad():
        gates = layer.gates(x)
        out = layer(x)
    assert ((gates > 0).sum(dim=-1) == 1).all()
    torch.testing.assert_close(gates.sum(dim=-1), torch.ones(64))
    chosen = gates.argmax(dim=-1)
    assert len(set(chosen.tolist())) > 1  # different tokens really go to different modules
    deltas = torch.stack([_peft_deltas(p)[V0] for p in hetero_paths])  # (N, d_out, d_in)
    with torch.no_grad():
        expected = layer.base_layer(x) + torch.einsum("toi,ti->to", deltas[chosen], x)
    torch.testing.assert_close(out, expected, atol=ATOL, rtol=1e-4)


def test_topk_renormalises_kept_gates(hetero_pool):
    mole = MoleModel(make_tiny_llama(), hetero_pool, MoleConfig(top_k=2, router_init_std=1.0))
    layer = mole.tuner_layers()[V0]
    x = torch.randn(16, layer.in_features)
    probs = torch.softmax(layer.router(x), dim=-1)
    gates = layer.gates(x)
    assert ((gates > 0).sum(dim=-1) == 2).all()
    torch.testing.assert_close(gates.sum(dim=-1), torch.ones(16))
    kept = gates > 0
    top2 = probs.topk(2, dim=-1).indices
    assert torch.equal(kept, torch.zeros_like(kept).scatter(-1, top2, True))
    ratio = gates[kept] / probs[kept]
    torch.testing.assert_close(ratio, 1 / probs.topk(2).values.sum(-1).repeat_interleave(2))


# ---------------------------------------------------------------------- structure and training
def test_heterogeneous_pool_groups_experts_by_module(hetero_pool):
    mole = MoleModel(make_tiny_llama(), hetero_pool)
    assert mole.matrix_modules[Q0] == ("r4", "r8")
    assert mole.matrix_modules[V0] == ("r4", "r8", "v_only")
    state = mole.router_state_dict()
    assert state[f"{Q0}.router.weight"].shape == (2, 32)
    assert state[f"{V0}.router.weight"].shape == (3, 32)
    groups = group_experts_by_module(hetero_pool, V0)
    assert groups.ranks() == (4, 8, 4)
    assert groups.pool_index == (0, 1, 2)
    assert groups.expert_module.tolist() == [0] * 4 + [1] * 8 + [2] * 4


def test_gradients_reach_only_routers(hetero_pool, input_ids):
    mole = MoleModel(make_tiny_llama(), hetero_pool)  # top_k=2: a real choice on v_proj
    mole.train()
    mole(input_ids=input_ids, labels=input_ids).loss.backward()
    trainable = {n for n, p in mole.named_parameters() if p.requires_grad}
    assert trainable and all(n.endswith("router.weight") for n in trainable)
    assert len(trainable) == len(mole.matrix_names)
    for name, param in mole.named_parameters():
        if name in trainable:
            assert param.grad is not None and param.grad.abs().sum() > 0, name
        else:
            assert param.grad is None, name
    assert all(not b.requires_grad for b in mole.buffers())
    expected = sum(len(mods) * 32 for mods in mole.matrix_modules.values())  # N_ℓ × d_in
    assert mole.num_trainable_parameters() == expected


def test_training_lowers_loss(hetero_pool, input_ids):
    mole = MoleModel(make_tiny_llama(), hetero_pool, MoleConfig(top_k=2, router_init_std=0.5))
    losses = train_steps(mole, input_ids, steps=12)
    mole.eval()
    assert losses[-1] < losses[0] - 0.01


def test_module_usage_counts_real_tokens_and_k_selections(hetero_pool, input_ids):
    mole = MoleModel(make_tiny_llama(), hetero_pool, MoleConfig(top_k=2, router_init_std=1.0))
    mole.track_usage()
    mask = torch.ones_like(input_ids)
    mask[0, -3:] = 0  # padding is not counted
    with torch.no_grad():
        mole(input_ids=input_ids, attention_mask=mask)
    usage = mole.module_usage()
    assert usage.tokens == int(mask.sum())
    for matrix, rates in usage.selection_rate.items():
        assert sum(rates.values()) == pytest.approx(2.0), matrix  # every token keeps k=2
        assert sum(usage.mean_gate[matrix].values()) == pytest.approx(1.0), matrix
    assert set(usage.selection_rate[V0]) == {"r4", "r8", "v_only"}
    assert usage.selection_rate[Q0] == {"r4": 1.0, "r8": 1.0}  # N_ℓ = 2 = k: both always
    assert mole.module_usage().tokens == 0  # reset by the first read


# ---------------------------------------------------------------------- persistence
def test_save_load_round_trip(hetero_pool, input_ids, tmp_path):
    mole = MoleModel(make_tiny_llama(), hetero_pool, MoleConfig(top_k=2))
    train_steps(mole, input_ids, steps=3)
    mole.eval()
    with torch.no_grad():
        expected = mole(input_ids=input_ids).logits
    mole.save_pretrained(tmp_path / "mole")
    saved = json.loads((tmp_path / "mole" / "mole_config.json").read_text())
    assert saved["pool"]["fingerprint"] == hetero_pool.fingerprint()
    assert saved["matrix_modules"][V0] == ["r4", "r8", "v_only"]

    reloaded = MoleModel.from_pretrained(make_tiny_llama(), hetero_pool, tmp_path / "mole")
    reloaded.eval()
    fresh = MoleModel(make_tiny_llama(), hetero_pool, MoleConfig(top_k=2)).eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=input_ids).logits, expected)
        # Untrained routers give other logits: the comparison above can fail.
        assert not torch.allclose(fresh(input_ids=input_ids).logits, expected)


def test_load_against_a_different_pool_fails_on_the_fingerprint(
    hetero_pool, make_adapter, tmp_path
):
    MoleModel(make_tiny_llama(), hetero_pool).save_pretrained(tmp_path / "r")
    other = load_pool([str(make_adapter("other", r=4, alpha=8))])
    with pytest.raises(PoolError, match="fingerprint"):
        MoleModel.from_pretrained(make_tiny_llama(), other, tmp_path / "r")


def test_load_router_state_with_wrong_keys_fails(hetero_pool):
    mole = MoleModel(make_tiny_llama(), hetero_pool)
    state = mole.router_state_dict()
    state.pop(f"{Q0}.router.weight")
    with pytest.raises(PoolError, match="missing"):
        mole.load_router_state_dict(state)


def test_unload_restores_the_base_model(hetero_pool, input_ids):
    base_logits = make_tiny_llama()(input_ids=input_ids).logits
    plain = MoleModel(make_tiny_llama(), hetero_pool).unload()
    torch.testing.assert_close(plain(input_ids=input_ids).logits, base_logits)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"top_k": 0},
        {"top_k": True},
        {"output_scale": "learnable"},
        {"router_init_std": -0.1},
        {"router_init_std": float("nan")},
        {"target_modules": []},
    ],
)
def test_invalid_config_is_refused(kwargs):
    with pytest.raises(ConfigError):
        MoleConfig(**kwargs)


def test_target_modules_restricts_the_wrapped_matrices(hetero_pool):
    mole = MoleModel(make_tiny_llama(), hetero_pool, MoleConfig(target_modules=["q_proj"]))
    assert mole.matrix_names and all(n.endswith("q_proj") for n in mole.matrix_names)
    with pytest.raises(ConfigError, match="match no matrix"):
        MoleModel(make_tiny_llama(), hetero_pool, MoleConfig(target_modules=["o_proj"]))
