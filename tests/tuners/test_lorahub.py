"""LoRAHub (Σ_n w_n ΔW_n) matches PEFT / hand references, trains only its N weights, round-trips."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft import PeftModel

from smartfed.errors import ConfigError, PoolError
from smartfed.pool import load_pool
from smartfed.tuners.lorahub import WEIGHTS_KEY, LoraHubConfig, LoraHubModel

from ..conftest import make_tiny_llama

ATOL = 1e-5


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


def _base_plus_weighted(paths: list[Path], weights: list[float]) -> torch.nn.Module:
    """W + Σ_n w_n ΔW_n by hand (each module's ΔW_n from PEFT): no cross terms by construction."""
    model = make_tiny_llama()
    with torch.no_grad():
        for path, w in zip(paths, weights, strict=True):
            for name, delta in _peft_deltas(path).items():
                model.get_submodule(name).weight += w * delta
    return model


def _hub(pool, weights: list[float] | None = None, **config) -> LoraHubModel:
    hub = LoraHubModel(make_tiny_llama(), pool, LoraHubConfig(**config))
    if weights is not None:
        hub.load_trainable_state_dict({WEIGHTS_KEY: torch.tensor(weights)})
    return hub.eval()


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
@pytest.mark.parametrize("n", [0, 1, 2])
def test_one_hot_weights_equal_peft_with_that_adapter_alone(
    hetero_paths, hetero_pool, input_ids, n
):
    weights = [0.0] * 3
    weights[n] = 1.0
    peft_model = PeftModel.from_pretrained(make_tiny_llama(), str(hetero_paths[n])).eval()
    with torch.no_grad():
        expected = peft_model(input_ids=input_ids).logits
        others = [_hub(hetero_pool, [float(i == m) for i in range(3)]) for m in range(3) if m != n]
        torch.testing.assert_close(
            _hub(hetero_pool, weights)(input_ids=input_ids).logits,
            expected,
            atol=ATOL,
            rtol=1e-4,
        )
        for other in others:  # the modules really differ: a wrong index would be caught
            assert not torch.allclose(other(input_ids=input_ids).logits, expected, atol=1e-3)


def test_weighted_sum_has_no_cross_terms(make_adapter, input_ids):
    paths = [
        make_adapter("a", r=4, alpha=8, seed=1),
        make_adapter("b", r=4, alpha=16, seed=2),
    ]
    pool = load_pool([str(p) for p in paths])
    w = [0.3, 0.7]
    with torch.no_grad():
        got = _hub(pool, w)(input_ids=input_ids).logits
        expected = _base_plus_weighted(paths, w)(input_ids=input_ids).logits
        torch.testing.assert_close(got, expected, atol=ATOL, rtol=1e-4)

        # The merged-factor reading (Σ w_n s_n B_n)(Σ w_n A_n) has cross terms B_1 A_2, B_2 A_1
        # and gives other logits, so the equality above really tells the two apart.
        crossed = make_tiny_llama()
        for name in pool.module_names():
            mats = [a.matrices[name] for a in pool.adapters]
            b = sum(wn * m.scaling * m.lora_B for wn, m in zip(w, mats, strict=True))
            a = sum(wn * m.lora_A for wn, m in zip(w, mats, strict=True))
            crossed.get_submodule(name).weight += b @ a
        assert not torch.allclose(crossed(input_ids=input_ids).logits, expected, atol=1e-3)


def test_heterogeneous_weighted_sum_matches_hand_reference(hetero_paths, hetero_pool, input_ids):
    w = [0.3, 0.7, -0.5]  # ranks 4 and 8, rsLoRA, a v_proj-only module, a negative weight
    with torch.no_grad():
        torch.testing.assert_close(
            _hub(hetero_pool, w)(input_ids=input_ids).logits,
            _base_plus_weighted(hetero_paths, w)(input_ids=input_ids).logits,
            atol=ATOL,
            rtol=1e-4,
        )


def test_uniform_init_is_the_mean_of_all_modules(hetero_paths, hetero_pool, input_ids):
    hub = _hub(hetero_pool)
    assert hub.module_weights() == pytest.approx({"r4": 1 / 3, "r8": 1 / 3, "v_only": 1 / 3})
    with torch.no_grad():
        torch.testing.assert_close(
            hub(input_ids=input_ids).logits,
            _base_plus_weighted(hetero_paths, [1 / 3] * 3)(input_ids=input_ids).logits,
            atol=ATOL,
            rtol=1e-4,
        )


def test_zeros_init_is_the_base_model(hetero_pool, input_ids):
    with torch.no_grad():
        torch.testing.assert_close(
            _hub(hetero_pool, init="zeros")(input_ids=input_ids).logits,
            make_tiny_llama()(input_ids=input_ids).logits,
        )


def test_merge_and_unload_bakes_the_same_update(hetero_pool, input_ids):
    hub = _hub(hetero_pool, [0.2, -0.4, 0.9])
    with torch.no_grad():
        expected = hub(input_ids=input_ids).logits
        merged = hub.merge_and_unload()
        assert not any("LoraHub" in type(m).__name__ for m in merged.modules())
        torch.testing.assert_close(merged(input_ids=input_ids).logits, expected, atol=ATOL, rtol=0)


# ---------------------------------------------------------------------- training
def test_only_the_n_weights_get_gradients(hetero_pool, input_ids):
    hub = LoraHubModel(make_tiny_llama(), hetero_pool)
    hub.train()
    hub(input_ids=input_ids, labels=input_ids).loss.backward()
    trainable = [n for n, p in hub.named_parameters() if p.requires_grad]
    assert trainable == [WEIGHTS_KEY]
    assert hub.num_trainable_parameters() == len(hetero_pool.names) == 3
    grad = hub.lorahub.weights.grad
    assert grad is not None and grad.shape == (3,) and (grad.abs() > 0).all()
    for name, param in hub.named_parameters():
        if name != WEIGHTS_KEY:
            assert param.grad is None, name
    assert all(not b.requires_grad for b in hub.buffers())


def test_training_moves_the_weights_and_lowers_loss(hetero_pool, input_ids):
    hub = LoraHubModel(make_tiny_llama(), hetero_pool, LoraHubConfig(init="zeros"))
    optimizer = torch.optim.AdamW([hub.lorahub.weights], lr=5e-2, weight_decay=0.0)
    hub.train()
    losses = []
    for _ in range(10):
        loss = hub(input_ids=input_ids, labels=input_ids).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.01
    assert hub.lorahub.weights.abs().min() > 0


# ---------------------------------------------------------------------- persistence
def test_save_load_round_trip(hetero_pool, input_ids, tmp_path):
    hub = _hub(hetero_pool, [0.1, 0.5, -0.25])
    with torch.no_grad():
        expected = hub(input_ids=input_ids).logits
    hub.save_pretrained(tmp_path / "hub")
    saved = json.loads((tmp_path / "hub" / "lorahub_config.json").read_text())
    assert saved["pool"]["fingerprint"] == hetero_pool.fingerprint()
    assert saved["weights"] == pytest.approx({"r4": 0.1, "r8": 0.5, "v_only": -0.25})

    reloaded = LoraHubModel.from_pretrained(make_tiny_llama(), hetero_pool, tmp_path / "hub")
    assert torch.equal(
        reloaded.trainable_state_dict()[WEIGHTS_KEY], torch.tensor([0.1, 0.5, -0.25])
    )
    with torch.no_grad():
        torch.testing.assert_close(reloaded.eval()(input_ids=input_ids).logits, expected)


def test_load_against_a_different_pool_fails_on_the_fingerprint(
    hetero_pool, make_adapter, tmp_path
):
    _hub(hetero_pool).save_pretrained(tmp_path / "hub")
    other = load_pool([str(make_adapter("other", r=4, alpha=8))])
    with pytest.raises(PoolError, match="fingerprint"):
        LoraHubModel.from_pretrained(make_tiny_llama(), other, tmp_path / "hub")


def test_load_weights_of_the_wrong_shape_or_name_fails(hetero_pool):
    hub = _hub(hetero_pool)
    with pytest.raises(PoolError, match="shape"):
        hub.load_trainable_state_dict({WEIGHTS_KEY: torch.ones(2)})
    with pytest.raises(PoolError, match="exactly"):
        hub.load_trainable_state_dict({"weights": torch.ones(3)})


def test_invalid_config_is_refused():
    with pytest.raises(ConfigError, match="init"):
        LoraHubConfig(init="ones")
    with pytest.raises(ConfigError, match="unknown LoRAHub config field"):
        LoraHubConfig.from_dict({"init": "zeros", "top_k": 2})
