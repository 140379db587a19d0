"""The evaluation harness on the tiny model: generation, loss, targets, CLI and JSON output."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from smartfed.cli.main import main
from smartfed.errors import ConfigError
from smartfed.evaluation.generation import generate
from smartfed.evaluation.harness import EvalTarget, evaluate_loss, load_eval_target

from ..conftest import make_tiny_llama, make_tiny_tokenizer


@pytest.fixture
def tiny_target() -> EvalTarget:
    return EvalTarget(model=make_tiny_llama(), tokenizer=make_tiny_tokenizer(), description={})


@pytest.fixture
def arith_jsonl(tmp_path: Path) -> str:
    rng = random.Random(0)
    path = tmp_path / "arith.jsonl"
    with path.open("w") as handle:
        for _ in range(10):
            a, b = rng.randint(0, 99), rng.randint(0, 9)
            handle.write(json.dumps({"prompt": f"{a}+{b}=?", "response": f"{a + b}"}) + "\n")
    return str(path)


def test_batched_generation_matches_one_at_a_time(tiny_target):
    prompts = ["1+1", "a much longer prompt with many more tokens", "xyz", "hello there"]
    batched = generate(tiny_target.model, tiny_target.tokenizer, prompts, max_new_tokens=6,
                       batch_size=4, progress=False)  # fmt: skip
    single = [
        generate(tiny_target.model, tiny_target.tokenizer, [p], max_new_tokens=6,
                 batch_size=1, progress=False)[0]
        for p in prompts
    ]  # fmt: skip
    assert batched == single  # left padding and order restoration are right
    assert tiny_target.tokenizer.padding_side == "right"  # restored


def test_stop_strings_cut_the_generation(tiny_target):
    full = generate(tiny_target.model, tiny_target.tokenizer, ["q"], max_new_tokens=12,
                    batch_size=1, progress=False)[0]  # fmt: skip
    assert len(full) >= 4
    stop = full[2:4]
    cut = generate(tiny_target.model, tiny_target.tokenizer, ["q"], max_new_tokens=12,
                   batch_size=1, stop=[stop], progress=False)[0]  # fmt: skip
    assert stop not in cut and full.startswith(cut)


def test_loss_is_the_token_weighted_mean_of_items(tiny_target, arith_jsonl):
    result = evaluate_loss(tiny_target, arith_jsonl, "test", batch_size=3, progress=False)
    items = result["items"]
    assert result["n"] == 10 and len(items) == 10
    weighted = sum(i["loss"] * i["tokens"] for i in items) / sum(i["tokens"] for i in items)
    assert result["value"] == pytest.approx(weighted, rel=1e-6)
    assert result["perplexity"] == pytest.approx(torch.tensor(weighted).exp().item(), rel=1e-5)
    # Batching must not change per-item losses (padding is masked).
    again = evaluate_loss(tiny_target, arith_jsonl, "test", batch_size=1, progress=False)
    for a, b in zip(items, again["items"], strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4, abs=1e-5)


def test_an_adapter_changes_the_loss_and_is_described(tiny_model_dir, make_adapter, arith_jsonl):
    base = load_eval_target(str(tiny_model_dir))
    adapter = make_adapter("a1", r=4, alpha=8, seed=3)
    tuned = load_eval_target(str(tiny_model_dir), adapter=str(adapter))
    assert tuned.description["kind"] == "adapter" and tuned.description["adapter_fingerprint"]
    loss_base = evaluate_loss(base, arith_jsonl, "test", progress=False)["value"]
    loss_tuned = evaluate_loss(tuned, arith_jsonl, "test", progress=False)["value"]
    assert loss_base != pytest.approx(loss_tuned)


def test_two_targets_at_once_are_refused():
    with pytest.raises(ConfigError, match="at most one of"):
        load_eval_target(None, adapter="x", pool_module="y")


def test_cli_writes_the_json_result(tmp_path, tiny_model_dir, arith_jsonl, capsys):
    out = tmp_path / "res" / "loss.json"
    code = main(["eval", "--benchmark", "loss", "--model", str(tiny_model_dir),
                 "--data", arith_jsonl, "--output", str(out)])  # fmt: skip
    assert code == 0
    result = json.loads(out.read_text())
    assert result["benchmark"] == "loss" and result["n"] == 10
    assert result["model"]["kind"] == "base" and len(result["items"]) == 10
    assert "loss" in capsys.readouterr().err


def test_cli_generative_benchmark_on_the_tiny_model(tmp_path, tiny_model_dir):
    data = tmp_path / "data" / "mgsm"
    data.mkdir(parents=True)
    (data / "mgsm_en.tsv").write_text("What is 2+2?\t4\nWhat is 3+3?\t6\nWhat is 1+0?\t1\n")
    out = tmp_path / "gen.json"
    code = main(["eval", "--benchmark", "mgsm_en", "--model", str(tiny_model_dir), "--limit", "2",
                 "--max_new_tokens", "4", "--data_dir", str(tmp_path / "data"),
                 "--output", str(out)])  # fmt: skip
    assert code == 0
    result = json.loads(out.read_text())
    assert result["n"] == 2 and result["metric"] == "accuracy"
    assert {"prompt", "generation", "extracted", "correct", "gold"} <= set(result["items"][0])
    assert result["items"][0]["gold"] == 4


def test_cli_bad_input_is_one_line(tmp_path, capsys):
    code = main(["eval", "--benchmark", "gsm8k", "--data_dir", str(tmp_path / "missing")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and "missing" in err[0]
