"""The evaluation harness on the tiny model: generation, loss, targets, CLI and JSON output."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from smartfed.cli.main import main
from smartfed.data import collate, encode_example, load_examples
from smartfed.engine import evaluation as engine_evaluation
from smartfed.errors import ConfigError
from smartfed.evaluation import harness
from smartfed.evaluation.benchmarks import EvalSettings, LossBenchmark, get_benchmark
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


def _engine_batches(target: EvalTarget, data: str, batch_size: int) -> list[dict]:
    """The batches a run's per-round evaluation would build (assembly.runtime.eval_batches)."""
    rows = [encode_example(target.tokenizer, ex, 512) for ex in load_examples(data, "test")]
    rows = sorted((row for row in rows if row is not None), key=lambda row: len(row["input_ids"]))
    pad = target.tokenizer.pad_token_id
    return [collate(rows[i : i + batch_size], pad) for i in range(0, len(rows), batch_size)]


@pytest.mark.parametrize("batch_size", [1, 3, 16])
def test_the_loss_benchmark_gives_the_engine_evaluators_numbers(
    tiny_target, arith_jsonl, batch_size
):
    bench = get_benchmark("loss")
    assert isinstance(bench, LossBenchmark) and bench.kind == "loss"
    settings = EvalSettings(data=arith_jsonl, batch_size=batch_size)
    result = bench.evaluate(tiny_target, settings, progress=False)
    engine = engine_evaluation.evaluate_loss(
        tiny_target.model, _engine_batches(tiny_target, arith_jsonl, batch_size)
    )
    # One computation: the same numbers, not merely close ones.
    assert result["value"] == engine["eval_loss"]
    assert result["perplexity"] == engine["eval_ppl"]
    assert result["tokens"] == engine["eval_tokens"]
    items = result["items"]
    assert sum(i["tokens"] for i in items) == engine["eval_tokens"]
    item_sum = sum(i["loss"] * i["tokens"] for i in items)
    assert item_sum == pytest.approx(engine["eval_loss_sum"], rel=1e-6)
    assert (result["benchmark"], result["metric"], result["split"]) == ("loss", "loss", "test")
    assert result["settings"] == {"max_seq_len": 512, "batch_size": batch_size}
    assert result["truncated"] == 0


def test_the_loss_benchmark_counts_cut_answers(tiny_target, tmp_path):
    data = tmp_path / "long.jsonl"
    rows = [{"prompt": "1+1=", "response": "2" * 60}, {"prompt": "2+2=", "response": "4"}]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    settings = EvalSettings(data=str(data), max_seq_len=48)
    result = get_benchmark("loss").evaluate(tiny_target, settings, progress=False)
    assert (result["n"], result["truncated"]) == (2, 1)


def test_answer_token_loss_is_cross_entropy_bit_for_bit(tiny_target):
    torch.manual_seed(1)
    vocab = tiny_target.model.config.vocab_size
    input_ids = torch.randint(0, vocab, (3, 12))
    labels = input_ids.clone()
    labels[:, :4] = -100  # the prompt
    labels[1, 9:] = -100  # padding
    batch = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": labels}
    loss = engine_evaluation.answer_token_loss(tiny_target.model, batch)
    with torch.no_grad():
        logits = tiny_target.model(input_ids=input_ids, attention_mask=batch["attention_mask"])
        logits = logits.logits[:, :-1]
    shifted = labels[:, 1:]
    expected = torch.nn.functional.cross_entropy(
        logits.reshape(-1, vocab).float(), shifted.reshape(-1), ignore_index=-100, reduction="sum"
    )
    assert float(loss.total) == float(expected)  # what evaluate_loss has always summed
    assert loss.row_tokens.tolist() == [8, 5, 8] and loss.tokens == 21
    for row in range(3):
        one = torch.nn.functional.cross_entropy(
            logits[row].float(), shifted[row], ignore_index=-100, reduction="sum"
        )
        assert float(loss.row_sums[row]) == pytest.approx(float(one), rel=1e-6)


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


@pytest.fixture
def no_model_loads(monkeypatch):
    """Any attempt to load a model fails the test: refusals must come first."""

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the flags were checked")

    monkeypatch.setattr(harness, "load_eval_target", refuse)


@pytest.mark.parametrize(
    ("argv", "flag", "kind"),
    [
        (["--benchmark", "mgsm_en", "--split", "train"], "--split", "loss"),
        (["--benchmark", "gsm8k", "--max_seq_len", "64"], "--max_seq_len", "loss"),
        (["--benchmark", "humaneval", "--data", "x.jsonl"], "--data", "loss"),
        (["--benchmark", "loss", "--max_new_tokens", "4"], "--max_new_tokens", "generative"),
        (["--benchmark", "loss", "--timeout_s", "1"], "--timeout_s", "generative"),
        # refused even with the (otherwise harmless) default value
        (["--benchmark", "mbpp", "--split", "test"], "--split", "loss"),
    ],
)
def test_cli_refuses_a_flag_of_the_other_kind(argv, flag, kind, capsys, no_model_loads):
    code = main(["eval", *argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1, err
    assert f"{flag} applies only to {kind} benchmarks" in err[0]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--benchmark", "loss", "--limit", "0"], "--limit must be >= 1"),
        (["--benchmark", "loss", "--batch_size", "0"], "--batch_size must be >= 1"),
        (["--benchmark", "loss", "--max_seq_len", "0"], "--max_seq_len must be >= 1"),
        (["--benchmark", "gsm8k", "--max_new_tokens", "0"], "--max_new_tokens must be >= 1"),
        (["--benchmark", "gsm8k", "--timeout_s", "0"], "--timeout_s must be"),
    ],
)
def test_cli_refuses_bad_values_before_loading(argv, message, capsys, no_model_loads):
    code = main(["eval", *argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and message in err[0], err


def test_cli_loss_on_missing_data_fails_before_loading(tmp_path, capsys, no_model_loads):
    code = main(["eval", "--benchmark", "loss", "--data", "gsm8k", "--split", "nope",
                 "--data_dir", str(tmp_path)])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1, err


def test_loss_data_defaults():
    bench = get_benchmark("loss")
    assert bench.data_source(EvalSettings()) == ("gsm8k", "test")
    assert bench.data_source(EvalSettings(data="x.jsonl")) == ("x.jsonl", "test")
    assert bench.data_source(EvalSettings(data="gsm8k", split="train")) == ("gsm8k", "train")


def test_evaluation_batches_are_shortest_first_and_items_stay_in_file_order(
    tiny_run_config, tiny_target, arith_jsonl
):
    from smartfed.assembly.runtime import get_runtime

    runtime = get_runtime(tiny_run_config(eval_batch_size=3))
    real = [int(n) for b in runtime.eval_batches for n in b["attention_mask"].sum(dim=1)]
    assert real == sorted(real) and len(set(real)) > 1  # sorted, and there was something to sort
    result = evaluate_loss(tiny_target, arith_jsonl, "test", batch_size=3, progress=False)
    assert [item["index"] for item in result["items"]] == list(range(result["n"]))
