"""MoRE's optional residual LoRA (``residual_rank``): a fresh rank-r LoRA next to the routers."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from smartfed.assembly.runtime import load_finished_run
from smartfed.cli.main import main
from smartfed.errors import ConfigError, PoolError
from smartfed.federation.runner import run_federated
from smartfed.pool import load_pool
from smartfed.tuners.more import MoreConfig, MoreModel
from smartfed.tuners.more.layer import MoreLinear

from ..conftest import make_tiny_llama, train_steps

RANK = 2


@pytest.fixture
def pool(make_adapter):
    return load_pool([str(make_adapter("pa", r=4, alpha=8)), str(make_adapter("pb", r=4))])


def _more(pool, residual_rank: int = 0, **kwargs) -> MoreModel:
    # make_tiny_llama seeds torch: the routers (and residual A) are drawn from that seed.
    config = MoreConfig(top_k=3, residual_rank=residual_rank, **kwargs)
    return MoreModel(make_tiny_llama(), pool, config)


def _logits(more: MoreModel, input_ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return more(input_ids=input_ids).logits


def _residual_names(state) -> list[str]:
    return sorted(n for n in state if "residual" in n)


def test_off_by_default_creates_nothing_and_draws_nothing(pool, input_ids, monkeypatch):
    def refuse(self, rank):
        raise AssertionError("residual_rank 0 must not create a residual LoRA")

    monkeypatch.setattr(MoreLinear, "add_residual_lora", refuse)
    assert MoreConfig().residual_rank == 0
    more = _more(pool)
    assert _residual_names(more.trainable_state_dict()) == []
    assert all(n.endswith("router.weight") for n in more.trainable_parameters())
    # The layer computes exactly base + routed experts, nothing more.
    layer = next(iter(more.tuner_layers().values()))
    x = torch.randn(5, layer.in_features)
    with torch.no_grad():
        projections = layer.project(x)
        expected = (
            layer.base_layer(x)
            + ((projections * layer.gates(x, projections)) @ layer.expert_B.T) * layer.scale()
        )
        assert torch.equal(layer(x), expected)
    with pytest.raises(ConfigError, match="residual_rank"):
        MoreConfig(residual_rank=-1)


def test_on_starts_from_the_same_model_and_the_same_routers(pool, input_ids):
    off, on = _more(pool), _more(pool, RANK)
    # B = 0: the same function; residual draws come after the routers: the same routers.
    assert torch.equal(_logits(off, input_ids), _logits(on, input_ids))
    on_state = on.trainable_state_dict()
    for name, tensor in off.trainable_state_dict().items():
        assert torch.equal(tensor, on_state[name]), name
    # Seeded: the same seed draws the same A; another seed another A.
    again = _more(pool, RANK)
    torch.manual_seed(1)
    other = MoreModel(make_tiny_llama(seed=1), pool, MoreConfig(top_k=3, residual_rank=RANK))
    name = _residual_names(on_state)[0]
    assert torch.equal(on_state[name], again.trainable_state_dict()[name])
    assert not torch.equal(on_state[name], other.trainable_state_dict()[name])


def test_residual_parameters_are_trainable_float32_and_in_the_state(pool):
    off, on = _more(pool), _more(pool, RANK)
    params = on.trainable_parameters()
    for matrix, layer in on.tuner_layers().items():
        a, b = params[f"{matrix}.residual_A"], params[f"{matrix}.residual_B"]
        assert a.shape == (RANK, layer.in_features) and b.shape == (layer.out_features, RANK)
        assert a.dtype == b.dtype == torch.float32 and a.requires_grad and b.requires_grad
        assert torch.count_nonzero(b) == 0 and torch.count_nonzero(a) == a.numel()
        # PEFT's lora_A init: Kaiming-uniform with a = √5, i.e. bound 1 / √d_in.
        assert a.abs().max() <= 1 / math.sqrt(layer.in_features)
        assert layer.residual_scale == 2.0  # alpha = 2r, scaling alpha / r
    residual_numel = sum(
        (layer.in_features + layer.out_features) * RANK for layer in on.tuner_layers().values()
    )
    assert on.num_trainable_parameters() == off.num_trainable_parameters() + residual_numel
    names = _residual_names(on.trainable_state_dict())
    assert len(names) == 2 * len(on.matrix_names)


def test_the_residual_trains_on_its_own(pool, input_ids):
    more = _more(pool, RANK)
    params = more.trainable_parameters()
    for name, param in params.items():
        param.requires_grad_("residual" in name)  # routers frozen: only the residual learns
    losses = train_steps(more, input_ids, steps=8)
    assert losses[-1] < losses[0] - 0.05, losses
    assert all(torch.count_nonzero(params[n]) > 0 for n in params if n.endswith("residual_B"))


def test_save_and_load_round_trip(pool, input_ids, tmp_path):
    more = _more(pool, RANK)
    with torch.no_grad():
        for name, param in more.trainable_parameters().items():
            if name.endswith("residual_B"):
                param.normal_(std=0.5)  # a trained-looking residual changes the output
    assert not torch.equal(_logits(more, input_ids), _logits(_more(pool), input_ids))
    more.save_pretrained(tmp_path / "saved")
    with safe_open(str(tmp_path / "saved" / "routers.safetensors"), framework="pt") as handle:
        saved = set(handle.keys())
    assert set(_residual_names(saved)) == set(_residual_names(more.trainable_state_dict()))
    config = json.loads((tmp_path / "saved" / "more_config.json").read_text())
    assert config["more_config"]["residual_rank"] == RANK

    base = make_tiny_llama()
    torch.manual_seed(99)  # another draw of routers and A: only the loaded state can match
    loaded = MoreModel.from_pretrained(base, pool, tmp_path / "saved")
    assert torch.equal(_logits(loaded, input_ids), _logits(more, input_ids))
    with pytest.raises(PoolError, match="missing"):  # a model without the residual refuses it
        _more(pool).load_pretrained_state(tmp_path / "saved")


def _array_bytes(tensor: torch.Tensor) -> int:
    """Bytes Flower counts for one float32 tensor: its .npy serialisation."""
    buffer = io.BytesIO()
    np.save(buffer, tensor.numpy(), allow_pickle=False)
    return len(buffer.getvalue())


@pytest.mark.integration  # a whole run end to end
def test_a_run_sends_the_residual_and_reloads_with_eval_run(tiny_run_config, tmp_path, capsys):
    runs = {}
    for rank in (0, RANK):
        config = tiny_run_config(
            residual_rank=rank, num_rounds=1, output_dir=str(tmp_path / f"r{rank}")
        )
        summary = run_federated(config)
        row = json.loads((Path(config.output_dir) / "metrics.jsonl").read_text().splitlines()[0])
        runs[rank] = (config, summary, row)
    (_, summary0, row0), (config, summary, row) = runs[0], runs[RANK]

    # What travels: the residual's values, at 4 bytes each plus their arrays' framing.
    final = Path(config.output_dir) / "final" / "routers.safetensors"
    with safe_open(str(final), framework="pt") as handle:
        residual = {k: handle.get_tensor(k) for k in handle.keys() if "residual" in k}  # noqa: SIM118
    assert len(residual) == 2 * 4  # 2 layers × (q, v) × (A, B)
    residual_numel = sum(t.numel() for t in residual.values())
    assert (
        summary["communicated_parameters"] == summary0["communicated_parameters"] + residual_numel
    )
    per_message = sum(_array_bytes(t) + len(k) for k, t in residual.items())
    assert per_message > 4 * residual_numel
    messages = len(row["sampled_clients"])
    assert row["bytes_up"] - row0["bytes_up"] == messages * per_message
    assert row["bytes_down"] - row0["bytes_down"] == messages * per_message
    # It trained: B moved from its zero init.
    assert all(torch.count_nonzero(t) > 0 for k, t in residual.items() if k.endswith("residual_B"))

    # The run directory reloads with the residual (what `smartfed eval --run` loads) ...
    finished = load_finished_run(config.output_dir)
    reloaded = finished.method.model.trainable_state_dict()
    for name, tensor in residual.items():
        assert torch.equal(reloaded[name], tensor), name
    # ... and `smartfed eval --run` scores it.
    out = tmp_path / "eval.json"
    code = main(["eval", "--benchmark", "loss", "--run", config.output_dir, "--output", str(out)])
    assert code == 0, capsys.readouterr().err
    assert math.isfinite(json.loads(out.read_text())["value"])
