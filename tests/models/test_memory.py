"""The memory estimate and ``smartfed run --dry_run``: hand-computed shapes, the tensors a real
tiny model keeps for backward, no weights read, and bytes per round equal to a real run's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from smartfed.assembly.dryrun import plan_run
from smartfed.cli.dry_run import plan_round_bytes
from smartfed.cli.main import main
from smartfed.federation.runner import run_federated
from smartfed.methods import build_method
from smartfed.models import load_base_model
from smartfed.models.memory import (
    AdaptedMatrix,
    DecoderShape,
    activation_estimate,
    estimate_memory,
    input_group,
)
from smartfed.pool import PoolRegistry, load_pool
from tests.conftest import TINY, make_tiny_llama

SMALL = DecoderShape(
    hidden_size=8,
    num_layers=2,
    num_heads=2,
    num_kv_heads=1,
    head_dim=4,
    intermediate_size=16,
    vocab_size=32,
    tied_embeddings=True,
)
# A router on q_proj and v_proj of layer 0: they read one input tensor.
ROUTED = [
    AdaptedMatrix(
        f"layers.0.self_attn.{n}", 8, True, dtype_values=4, float32_values=2, int64_values=1
    )
    for n in ("q_proj", "v_proj")
]


def test_input_groups_follow_the_tensors_a_layer_shares():
    assert input_group("m.layers.3.self_attn.q_proj") == input_group("m.layers.3.self_attn.v_proj")
    assert input_group("m.layers.3.mlp.gate_proj") == input_group("m.layers.3.mlp.up_proj")
    assert input_group("m.layers.3.self_attn.q_proj") != input_group("m.layers.4.self_attn.q_proj")
    assert input_group("m.layers.3.self_attn.o_proj") != input_group("m.layers.3.self_attn.q_proj")


def test_activation_estimate_of_a_hand_computed_case():
    # 2 x 3 = 6 tokens. Per token and layer, float32: norms 2 (4*8 + 4) = 72; attention
    # q/k/v/out 4*2*4*4 = 128, log-sum-exp 4*2 = 8, mask row 4*3 = 12; MLP 3*16*4 = 192: 412.
    # Two layers, minus the first input norm (36): 6 (2*412 - 36) = 4728. Loss: 6 (3*4*32 + 36).
    # Adapters: the shared float32 input once (32) + 2 x (4*4 + 2*4 + 8) = 96 per token.
    acts = activation_estimate(SMALL, dtype_bytes=4, batch_size=2, seq_len=3, adapted=ROUTED)
    assert (acts.layers, acts.adapters, acts.loss) == (4728, 576, 2520)
    assert acts.total == 7824
    # bfloat16 (autocast): each router keeps its own half copy of the input (2 x 16) and
    # 2 x (4*2 + 2*4 + 8): 80 per token; a layer 72 + (64 + 8 + 6) + 96 = 246.
    half = activation_estimate(SMALL, dtype_bytes=2, batch_size=2, seq_len=3, adapted=ROUTED)
    assert (half.layers, half.adapters, half.loss) == (6 * (2 * 246 - 36), 480, 2520)
    # Checkpointing keeps each layer's input (6*2*8*4) and recomputes one layer: 6 (412 + 48)
    # exceeds the loss's transient 6*384 by 456.
    ckpt = activation_estimate(
        SMALL, dtype_bytes=4, batch_size=2, seq_len=3, adapted=ROUTED, gradient_checkpointing=True
    )
    assert (ckpt.layers, ckpt.adapters, ckpt.loss, ckpt.recomputed_layer) == (384, 0, 2520, 456)


def test_memory_estimate_adds_weights_and_trained_state():
    estimate = estimate_memory(
        SMALL, dtype="bfloat16", batch_size=2, seq_len=3, base_parameters=1000,
        trainable_parameters=10, pool_expert_parameters=100, adapted=ROUTED,
    )  # fmt: skip
    assert (estimate.weights, estimate.pool_experts) == (2000, 200)
    assert (estimate.trainable, estimate.gradients, estimate.optimizer) == (40, 40, 80)
    assert estimate.total == 2000 + 200 + 160 + estimate.activations.total
    with pytest.raises(ValueError, match="dtype"):
        estimate_memory(SMALL, dtype="int8", batch_size=1, seq_len=1, base_parameters=1,
                        trainable_parameters=0)  # fmt: skip


def test_decoder_shape_counts_the_parameters_of_a_real_llama():
    from transformers import LlamaConfig

    shape = DecoderShape.from_config(LlamaConfig(**TINY))
    assert shape.head_dim == TINY["hidden_size"] // TINY["num_attention_heads"]
    model = make_tiny_llama()
    assert shape.num_parameters == sum(p.numel() for p in model.parameters())


def _saved_bytes(model: torch.nn.Module, batch: dict) -> int:
    """Bytes of the distinct tensors autograd keeps for backward (parameters and buffers not
    counted: they exist anyway)."""
    own = {t.untyped_storage().data_ptr() for t in (*model.parameters(), *model.buffers())}
    seen: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in own:
            seen[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(**batch)
    return sum(seen.values())


@pytest.mark.parametrize("method", ["smartfed", "fedit"])
def test_estimate_matches_what_a_real_tiny_model_keeps(tiny_run_config, method):
    batch_size, seq_len = 3, 40
    config = tiny_run_config(method=method, batch_size=batch_size, max_seq_len=seq_len)
    plan = plan_run(config)
    loaded = load_base_model(config.model_name_or_path)
    pool = load_pool(config.pool_items, PoolRegistry.default(config.pool_manifest))
    built = build_method(config, loaded.model, pool)
    built.model.train()
    torch.manual_seed(0)
    input_ids = torch.randint(0, TINY["vocab_size"], (batch_size, seq_len))
    mask = torch.ones(batch_size, seq_len, dtype=torch.long)
    mask[-1, -5:] = 0  # right padding, as in training: attention runs with a mask
    labels = input_ids.masked_fill(mask == 0, -100)
    saved = _saved_bytes(built.model, dict(input_ids=input_ids, attention_mask=mask, labels=labels))
    tokens = batch_size * seq_len
    # The estimate's peak adds the loss backward's two float32 (N, V) gradients.
    estimated = plan.memory.activations.total - 2 * 4 * tokens * TINY["vocab_size"]
    assert estimated == pytest.approx(saved, rel=0.02)


def _dry_run_argv(config) -> list[str]:
    return [
        "run", "--dry_run", "--model_name_or_path", config.model_name_or_path,
        "--lora_pool", config.lora_pool, "--task", config.task, "--num_clients", "4",
        "--router", config.settings.router, "--topk_experts", str(config.settings.topk_experts),
        "--output_dir", config.output_dir,
    ]  # fmt: skip


def test_dry_run_prints_counts_and_bytes_and_loads_no_weights_or_data(
    tiny_run_config, monkeypatch, capsys
):
    def refuse(*args, **kwargs):
        raise AssertionError("--dry_run loaded weights or data")

    from transformers import AutoModelForCausalLM, PreTrainedModel

    import smartfed.data
    import smartfed.models.loading

    monkeypatch.setattr(smartfed.models.loading, "load_base_model", refuse)
    monkeypatch.setattr(smartfed.data, "load_examples", refuse)
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", refuse)
    monkeypatch.setattr(PreTrainedModel, "from_pretrained", refuse)
    config = tiny_run_config()
    capsys.readouterr()
    assert main([*_dry_run_argv(config), "--batch_size", "2", "--max_seq_len", "32"]) == 0
    out = capsys.readouterr().out
    base = sum(p.numel() for p in make_tiny_llama().parameters())
    assert f"{base:,}" in out
    traffic = plan_round_bytes(plan_run(config))
    assert f"{traffic.down:,} B" in out and f"{traffic.up:,} B" in out
    assert "batch 2 x 32, float32" in out
    assert not Path(config.output_dir).exists()  # no run was started


def test_dry_run_follows_dtype_batch_and_checkpointing(tiny_run_config):
    base = plan_run(tiny_run_config(batch_size=2, max_seq_len=16))
    bigger = plan_run(tiny_run_config(batch_size=4, max_seq_len=16))
    half = plan_run(tiny_run_config(batch_size=2, max_seq_len=16, dtype="bfloat16"))
    ckpt = plan_run(tiny_run_config(batch_size=2, max_seq_len=16, gradient_checkpointing=True))
    assert bigger.memory.activations.total == 2 * base.memory.activations.total
    assert half.memory.weights * 2 == base.memory.weights
    assert half.memory.activations.total < base.memory.activations.total
    assert ckpt.memory.activations.layers < base.memory.activations.layers
    assert half.trainable_parameters == base.trainable_parameters  # routers stay float32


def test_dry_run_on_another_model_reshapes_the_pool_and_says_so(tiny_run_config):
    config = tiny_run_config(model_name_or_path="benchmarks/model_configs/smollm2-135m-instruct")
    plan = plan_run(config)
    assert any("made for another base model" in note for note in plan.notes)
    # The tiny pool: two rank-4 modules on q_proj and v_proj -> M = 8 experts per matrix, one
    # linear router (8 x 576) on each of the 30 layers' two matrices.
    assert plan.trainable_parameters == 30 * 2 * 8 * 576
    assert plan.base_parameters == 134_515_008


@pytest.mark.integration  # a whole run end to end
@pytest.mark.parametrize(
    "overrides",
    [{"method": "smartfed"}, {"method": "fedit", "wire_dtype": "bfloat16"}],
    ids=["smartfed", "fedit-bfloat16"],
)
def test_bytes_per_round_equal_a_real_runs(tiny_run_config, overrides):
    config = tiny_run_config(num_rounds=1, eval_samples=0, **overrides)
    traffic = plan_round_bytes(plan_run(config))
    summary = run_federated(config)
    assert (summary["bytes_down"], summary["bytes_up"]) == (traffic.down, traffic.up)


@pytest.mark.integration
def test_demo_dry_run_predicts_the_recorded_demo_runs_bytes():
    """The default model (its GGUF header or cache: no weights) with the demo preset: the bytes
    the reference demo run recorded in benchmarks/results/cn_math/smartfed."""
    from smartfed.assembly.config import gather

    paper_router = {"router": "linear", "topk_experts": 8}  # the reference run's settings
    plan = plan_run(gather(preset="demo", overrides=paper_router).config_for())
    recorded = Path(__file__).parents[2] / "benchmarks/results/cn_math/smartfed/metrics.jsonl"
    first = json.loads(recorded.read_text().splitlines()[0])
    traffic = plan_round_bytes(plan)
    assert (traffic.down, traffic.up) == (first["bytes_down"], first["bytes_up"])
    assert plan.base_parameters == 134_515_008
    assert plan.trainable_parameters == 2_211_840
    # Today's defaults (diag_lowrank, dense): the routers benchmark's recorded bytes.
    plan = plan_run(gather(preset="demo", overrides={}).config_for())
    recorded = Path(__file__).parents[2] / (
        "benchmarks/results/routers/cn_math/diag_lowrank/smartfed_dense/seed0/metrics.jsonl"
    )
    first = json.loads(recorded.read_text().splitlines()[0])
    traffic = plan_round_bytes(plan)
    assert (traffic.down, traffic.up) == (first["bytes_down"], first["bytes_up"]) == (
        329_052, 329_162,
    )  # fmt: skip
    assert plan.trainable_parameters == 60 * (2 * 64 + 2 * 64 * 4)
