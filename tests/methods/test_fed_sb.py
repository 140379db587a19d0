"""Fed-SB: only R is trained and sent, averaging R averages updates exactly, the server-side
init is the best rank-r approximation of a sign step, and the final model is plain PEFT."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft import PeftModel

from smartfed.assembly.runtime import get_runtime
from smartfed.engine.evaluation import evaluate_loss
from smartfed.federation.runner import run_federated
from smartfed.methods.fed_sb import ProjectThenMix, sign_update_factors

from ..conftest import make_tiny_llama


def test_sign_update_factors_are_the_truncated_svd_of_the_step() -> None:
    torch.manual_seed(0)
    gradient = torch.randn(12, 8)
    b, r, a = sign_update_factors(gradient, rank=8, learning_rate=0.1, scaling=2.0)
    # Full rank: the factors reproduce the step exactly; lower rank: Eckart-Young's error.
    torch.testing.assert_close(2.0 * b @ r @ a, -0.1 * torch.sign(gradient))
    b, r, a = sign_update_factors(gradient, rank=3, learning_rate=0.1, scaling=2.0)
    step = -0.1 * torch.sign(gradient)
    singular = torch.linalg.svdvals(step)
    error = torch.linalg.matrix_norm(step - 2.0 * b @ r @ a)
    assert error == pytest.approx(float(singular[3:].norm()), rel=1e-4)


def test_only_r_is_sent_and_averaging_r_averages_updates(tiny_run_config) -> None:
    config = tiny_run_config(method="fed_sb", lora_rank=4, init_examples=8, num_rounds=1)
    method = get_runtime(config).method
    state = method.global_state()
    assert state and all(name.endswith(".mix.weight") for name in state)
    assert all(tuple(t.shape) == (4, 4) for t in state.values())
    # delta W = s B R A is linear in R: the update of the mean R is the mean of the updates.
    layer = next(m for m in method.model.modules() if isinstance(m, ProjectThenMix))
    a = layer.project.weight
    r1, r2 = torch.randn(4, 4), torch.randn(4, 4)
    assert torch.allclose(((r1 + r2) / 2) @ a, ((r1 @ a) + (r2 @ a)) / 2, atol=1e-6)


def test_run_counts_the_init_broadcast_and_exports_plain_peft(tiny_run_config) -> None:
    config = tiny_run_config(method="fed_sb", lora_rank=4, init_examples=8, num_rounds=2)
    summary = run_federated(config)
    run = Path(config.output_dir)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    # 2 layers x (q 32->32, v 32->16): A is 4 x 32 for both, B is 32 x 4 and 16 x 4.
    frozen = 2 * ((4 * 32 + 32 * 4) + (4 * 32 + 16 * 4))
    assert rows[0]["bytes_setup"] == 4 * frozen * config.num_clients
    assert "bytes_setup" not in rows[1]
    assert rows[0]["bytes_down"] - rows[1]["bytes_down"] == rows[0]["bytes_setup"]
    indices = summary["final_state"]["init_examples"]
    assert len(indices) == 8 and indices == sorted(indices)
    # The clients never saw the init examples: 48 training examples, 8 held out.
    partitions = json.loads((run / "partitions.json").read_text())
    assert sum(c["size"] for c in partitions["clients"]) == 40

    # The final folder is a plain PEFT LoRA: same loss as the run's own model.
    runtime = get_runtime(config)
    expected = evaluate_loss(runtime.method.model, runtime.eval_batches)["eval_loss"]
    assert expected == pytest.approx(summary["final_eval"]["eval_loss"], abs=1e-6)
    plain = PeftModel.from_pretrained(make_tiny_llama(), str(run / "final"))
    got = evaluate_loss(plain, runtime.eval_batches)["eval_loss"]
    assert got == pytest.approx(expected, abs=1e-5)


def test_init_starts_away_from_the_base_model(tiny_run_config) -> None:
    config = tiny_run_config(method="fed_sb", lora_rank=4, init_examples=8, num_rounds=1)
    method = get_runtime(config).method
    layer = next(m for m in method.model.modules() if isinstance(m, ProjectThenMix))
    assert float(layer.mix.weight.abs().sum()) > 0
    assert not torch.allclose(layer.mix.weight, torch.eye(4))  # R = S_r / s, not the identity


def test_too_many_init_examples_is_one_line(tiny_run_config) -> None:
    from smartfed.errors import ConfigError

    with pytest.raises(ConfigError, match="--init_examples 60 holds out"):
        get_runtime(tiny_run_config(method="fed_sb", lora_rank=4, init_examples=60))
