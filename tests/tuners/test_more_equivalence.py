"""MoRE must reproduce PEFT exactly in the configurations where the maths says it should."""

from __future__ import annotations

import torch
from peft import PeftModel

from smartfed.models import model_autocast
from smartfed.pool import load_pool
from smartfed.tuners.more import MoreConfig, MoreModel

from ..conftest import make_tiny_llama

ATOL = 1e-5


def _uniform_dense(pool, top_k: int = 10_000) -> MoreModel:
    # router_init_std=0 -> zero router -> uniform softmax; top_k >= M -> every expert selected
    config = MoreConfig(top_k=top_k, output_scale="k", router_init_std=0.0)
    return MoreModel(make_tiny_llama(), pool, config)


def _peft_all_active(paths) -> torch.nn.Module:
    model = PeftModel.from_pretrained(make_tiny_llama(), str(paths[0]), adapter_name="a0")
    for i, path in enumerate(paths[1:], start=1):
        model.load_adapter(str(path), adapter_name=f"a{i}")
    model.base_model.set_adapter([f"a{i}" for i in range(len(paths))])
    model.eval()
    return model


def test_dense_uniform_equals_base_plus_sum_of_all_pool_adapters(make_adapter, input_ids):
    paths = [
        make_adapter("chat", r=4, alpha=8),
        make_adapter("math", r=8, alpha=16),
        make_adapter("code", r=4, alpha=4, targets=("q_proj", "k_proj", "v_proj")),
    ]
    pool = load_pool([str(p) for p in paths])
    more = _uniform_dense(pool)
    with torch.no_grad():
        got = more(input_ids=input_ids).logits
        expected = _peft_all_active(paths)(input_ids=input_ids).logits
        base = make_tiny_llama()(input_ids=input_ids).logits
    # The adapters really change the output (otherwise the equality below proves nothing).
    assert (expected - base).abs().max() > 1e-2
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=1e-4)


def test_dense_uniform_equals_merged_weights(make_adapter, input_ids):
    """Same claim via PEFT's merge: W0 + Σ_n s_n B_n A_n baked into the weights."""
    paths = [make_adapter("a", r=4, alpha=8), make_adapter("b", r=2, alpha=6, targets=("v_proj",))]
    pool = load_pool([str(p) for p in paths])
    merged = _peft_all_active(paths).merge_and_unload()
    with torch.no_grad():
        torch.testing.assert_close(
            _uniform_dense(pool)(input_ids=input_ids).logits,
            merged(input_ids=input_ids).logits,
            atol=ATOL,
            rtol=1e-4,
        )


def test_single_adapter_pool_reproduces_that_adapter(make_adapter, input_ids):
    path = make_adapter("solo", r=6, alpha=12)
    pool = load_pool([str(path)])
    peft_model = PeftModel.from_pretrained(make_tiny_llama(), str(path)).eval()
    with torch.no_grad():
        torch.testing.assert_close(
            _uniform_dense(pool, top_k=6)(input_ids=input_ids).logits,
            peft_model(input_ids=input_ids).logits,
            atol=ATOL,
            rtol=1e-4,
        )


def test_rslora_and_rank_alpha_patterns_are_honoured(make_adapter, input_ids):
    paths = [
        make_adapter("rs", r=4, alpha=8, use_rslora=True),
        make_adapter(
            "patterned",
            r=4,
            alpha=8,
            rank_pattern={"v_proj": 2},
            alpha_pattern={"layers.1.self_attn.q_proj": 3},
        ),
    ]
    pool = load_pool([str(p) for p in paths])
    patterned = pool.adapters[1]
    assert patterned.matrices["model.layers.0.self_attn.v_proj"].rank == 2
    assert patterned.matrices["model.layers.1.self_attn.q_proj"].alpha == 3
    assert pool.adapters[0].matrices["model.layers.0.self_attn.q_proj"].scaling == 8 / 2  # α/√r
    with torch.no_grad():
        torch.testing.assert_close(
            _uniform_dense(pool)(input_ids=input_ids).logits,
            _peft_all_active(paths)(input_ids=input_ids).logits,
            atol=ATOL,
            rtol=1e-4,
        )


def test_output_scale_one_with_uniform_gates_is_the_mean_of_experts(make_adapter, input_ids):
    path = make_adapter("solo", r=4, alpha=8)
    pool = load_pool([str(path)])
    more = MoreModel(
        make_tiny_llama(), pool, MoreConfig(top_k=4, output_scale="one", router_init_std=0)
    )
    layer = more.tuner_layers()["model.layers.0.self_attn.q_proj"]
    x = torch.randn(5, layer.in_features)
    with torch.no_grad():
        expected = layer.base_layer(x) + (x @ layer.expert_A.T @ layer.expert_B.T) / 4
        torch.testing.assert_close(layer(x), expected, atol=ATOL, rtol=1e-4)


# bfloat16 keeps 8 bits of mantissa (relative steps of 2^-8 = 0.4 %): on logits of up to ~0.45
# whose adapters move them by ~0.57, a bfloat16 MoRE is held to this absolute distance from the
# exact (float32 PEFT) result. Measured on CPU: 4.2e-3, against 3.5e-3 for PEFT in bfloat16.
ATOL_BF16 = 2e-2


def test_dense_uniform_equivalence_holds_in_bfloat16(make_adapter, input_ids):
    """The same claim with a bfloat16 base and experts (float32 routers), under the autocast
    runs use: as close to the exact float32 result as PEFT itself gets in bfloat16."""
    paths = [
        make_adapter("chat", r=4, alpha=8),
        make_adapter("math", r=8, alpha=16),
        make_adapter("code", r=4, alpha=4, targets=("q_proj", "k_proj", "v_proj")),
    ]
    pool = load_pool([str(p) for p in paths])
    config = MoreConfig(top_k=10_000, output_scale="k", router_init_std=0.0)
    more = MoreModel(make_tiny_llama().to(torch.bfloat16), pool, config)
    layer = more.tuner_layers()["model.layers.0.self_attn.q_proj"]
    assert layer.expert_A.dtype == torch.bfloat16 and layer.router.weight.dtype == torch.float32
    peft16 = _peft_all_active(paths).to(torch.bfloat16)
    with torch.no_grad():
        exact = _peft_all_active(paths)(input_ids=input_ids).logits
        base = make_tiny_llama()(input_ids=input_ids).logits
        with model_autocast(more):
            got = more(input_ids=input_ids).logits
        with model_autocast(peft16):
            peft_error = (peft16(input_ids=input_ids).logits.float() - exact).abs().max()
    assert got.dtype == torch.bfloat16
    error = (got.float() - exact).abs().max()
    assert (exact - base).abs().max() > 20 * ATOL_BF16  # the adapters matter far beyond it
    torch.testing.assert_close(got.float(), exact, atol=ATOL_BF16, rtol=0)
    assert error > 0  # really computed in bfloat16
    assert error < 2 * peft_error  # no worse than bfloat16 itself makes PEFT
