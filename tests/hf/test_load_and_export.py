"""Using a finished run the Hugging Face way: `smartfed.load_run`, `smartfed export`,
`smartfed.hf.from_pretrained`, and plain PEFT in a process that never imports SmartFed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import smartfed
from smartfed.assembly.runtime import get_runtime
from smartfed.cli.main import main
from smartfed.engine.evaluation import evaluate_loss
from smartfed.federation.runner import run_federated
from smartfed.tuners.lorahub import LoraHubModel

ALL_METHODS = ["fedit", "ffa_lora", "merge", "lorahub", "mole", "smartfed"]


@pytest.fixture
def finished_run(tiny_run_config):
    """A finished tiny run of a method: (config, summary, eval batches of the run)."""

    def factory(method: str, **overrides):
        config = tiny_run_config(method=method, num_rounds=1, **overrides)
        summary = run_federated(config)
        batches = get_runtime(config).eval_batches
        # merge never trains: its one evaluation is round 0's
        assert summary["final_eval"]["round"] == (0 if method == "merge" else 1)
        return config, summary, batches

    return factory


@pytest.mark.parametrize("method", ALL_METHODS)
def test_load_run_gives_a_transformers_model_with_the_runs_loss(method, finished_run):
    from transformers import PreTrainedModel, pipeline

    config, summary, batches = finished_run(method)
    model, tokenizer = smartfed.load_run(config.output_dir, device="cpu")
    assert isinstance(model, PreTrainedModel)
    assert model.smartfed_run["method"] == method
    loss = evaluate_loss(model, batches)["eval_loss"]
    assert loss == pytest.approx(summary["final_eval"]["eval_loss"], abs=1e-6)

    ids = tokenizer("1+2=", return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=4, do_sample=False)
    assert out.shape[1] == ids["input_ids"].shape[1] + 4
    generator = pipeline("text-generation", model=model, tokenizer=tokenizer)
    text = generator("1+2=", max_new_tokens=4, do_sample=False)[0]["generated_text"]
    assert text.startswith("1+2=")


# A fresh interpreter with plain transformers + PEFT, never SmartFed: one per module, shared by
# the exports below (its imports are most of a case's time). Each request (a JSON line: base
# folder, adapter folder, batches file) loads that base and adapter anew and answers one JSON
# line, its loss, after checking SmartFed is still not imported, or the error it met.
PLAIN_PEFT = r"""
import json, sys, traceback
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM


def loss_of(base_dir, adapter_dir, batches_file):
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, adapter_dir).eval()
    total, tokens = 0.0, 0
    for batch in torch.load(batches_file):
        with torch.no_grad():
            ids, mask = batch["input_ids"], batch["attention_mask"]
            logits = model(input_ids=ids, attention_mask=mask).logits
        labels = batch["labels"][:, 1:].reshape(-1)
        logp = torch.log_softmax(logits[:, :-1].reshape(-1, logits.shape[-1]).float(), dim=-1)
        nll = torch.nn.functional.nll_loss(logp, labels, ignore_index=-100, reduction="sum")
        total += float(nll)
        tokens += int((labels != -100).sum())
    assert "smartfed" not in sys.modules, sorted(m for m in sys.modules if "smartfed" in m)
    return total / tokens


for line in sys.stdin:
    try:
        answer = {"loss": loss_of(*json.loads(line))}
    except BaseException:
        answer = {"error": traceback.format_exc()}
    print(json.dumps(answer), flush=True)
"""


@pytest.fixture(scope="module")
def plain_peft(tmp_path_factory):
    """``loss(base_dir, adapter_dir, batches_file)`` from the module's plain-PEFT interpreter."""
    folder = tmp_path_factory.mktemp("plain_peft")
    script = folder / "plain_peft.py"
    script.write_text(PLAIN_PEFT)
    with (folder / "stderr.txt").open("w+") as err:
        proc = subprocess.Popen(
            [sys.executable, str(script)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=err, text=True,
        )  # fmt: skip

        def loss(*args: str) -> float:
            proc.stdin.write(json.dumps([str(a) for a in args]) + "\n")
            proc.stdin.flush()
            line = proc.stdout.readline()
            err.seek(0)
            assert line, f"the plain-PEFT interpreter died:\n{err.read()[-2000:]}"
            answer = json.loads(line)
            assert "error" not in answer, answer.get("error")
            return answer["loss"]

        try:
            yield loss
        finally:
            proc.stdin.close()
            proc.wait(timeout=60)


# Settings a method needs on the tiny model (Fed-SB's default rank is the pool's).
TINY = {"fed_sb": {"lora_rank": 4, "init_examples": 8}}


@pytest.mark.parametrize(
    "method", ["fedit", "ffa_lora", "merge", "lorahub", "fed_sb", "pool_bridge"]
)
def test_lora_exports_load_with_plain_peft_without_smartfed(
    method, finished_run, plain_peft, tmp_path
):
    config, summary, batches = finished_run(method, **TINY.get(method, {}))
    out = tmp_path / "export"
    assert main(["export", config.output_dir, "--to", str(out)]) == 0
    for name in ("adapter_config.json", "adapter_model.safetensors", "README.md",
                 "tokenizer_config.json"):  # fmt: skip
        assert (out / name).is_file(), name
    assert json.loads((out / "adapter_config.json").read_text())["peft_type"] == "LORA"
    batches_file = tmp_path / "batches.pt"
    torch.save(batches, batches_file)
    loss = plain_peft(config.model_name_or_path, out, batches_file)
    assert loss == pytest.approx(summary["final_eval"]["eval_loss"], abs=1e-5)


@pytest.mark.parametrize("method", ["smartfed", "mole"])
def test_routed_exports_reproduce_the_run_without_its_pool(method, finished_run, tmp_path):
    from smartfed.hf import from_pretrained

    config, summary, batches = finished_run(method)
    out = tmp_path / "export"
    assert main(["export", config.output_dir, "--to", str(out)]) == 0
    record = json.loads((out / "adapter_config.json").read_text())
    assert record["peft_type"] == "SMARTFED" and record["method"] == method
    assert [m["name"] for m in record["pool"]] == ["pa", "pb"]
    assert all(m["sha256"]["adapter_model.safetensors"] for m in record["pool"])
    card = (out / "README.md").read_text()
    assert "pa" in card and "sha256" in card and str(summary["final_eval"]["eval_loss"]) in card
    # The pool folders are gone: the export alone rebuilds the routed model.
    for module in record["pool"]:
        for file in Path(module["source"]).iterdir():
            file.unlink()
    model = from_pretrained(config.model_name_or_path, out)
    loss = evaluate_loss(model, batches)["eval_loss"]
    assert loss == pytest.approx(summary["final_eval"]["eval_loss"], abs=1e-5)


def _one_line_error(code: int, err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert code != 0 and len(lines) == 1 and lines[0].startswith("smartfed: error: "), err
    assert "Traceback" not in err
    return lines[0]


def test_export_refusals_are_one_line_and_write_nothing(finished_run, tmp_path, capsys):
    config, _, _ = finished_run("fedit")
    done = Path(config.output_dir)
    saved = json.loads((done / "config.json").read_text())
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "config.json").write_text(json.dumps(saved))
    fedsa = tmp_path / "fedsa"
    fedsa.mkdir()
    (fedsa / "config.json").write_text(json.dumps({**saved, "method": "fedsa_lora"}))
    capsys.readouterr()

    target = tmp_path / "out"
    for run_dir, expected in (
        (unfinished, "has not finished"),
        (fedsa, "no global model"),
        (tmp_path / "missing", "no such folder"),
    ):
        line = _one_line_error(main(["export", str(run_dir), "--to", str(target)]),
                               capsys.readouterr().err)  # fmt: skip
        assert expected in line
        assert not target.exists()
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    line = _one_line_error(main(["export", str(done), "--to", str(busy)]), capsys.readouterr().err)
    assert "not empty" in line
    assert [p.name for p in busy.iterdir()] == ["keep.txt"]
    line = _one_line_error(main(["export-base", "--to", str(busy)]), capsys.readouterr().err)
    assert "not a new or empty folder" in line
    # An empty folder is a fine target.
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["export", str(done), "--to", str(empty)]) == 0
    assert (empty / "adapter_model.safetensors").is_file()
    assert all(p.stat().st_mode & 0o044 == 0o044 for p in empty.iterdir())  # readable by all


def test_export_base_writes_the_folder_runs_load(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "base"
    assert main(["export-base", "--model", str(tiny_model_dir), "--to", str(out)]) == 0
    written = AutoModelForCausalLM.from_pretrained(out).state_dict()
    original = AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict()
    assert written.keys() == original.keys()
    assert all(torch.equal(written[k], original[k]) for k in original)
    assert (out / "tokenizer_config.json").is_file()


def test_the_card_names_a_gguf_base_exactly_and_how_to_rebuild_it(tmp_path, monkeypatch):
    from smartfed.hf.export import base_model_section
    from smartfed.models.loading import ModelSource, base_model_folder
    from smartfed.utils.hashing import file_sha256

    monkeypatch.setenv("SMARTFED_CACHE", str(tmp_path / "cache"))
    gguf = tmp_path / "SmolLM2-135M-Instruct.Q4_1.gguf"
    gguf.write_bytes(b"not really a model")
    source = ModelSource("gguf", str(gguf), "smollm2-135m-instruct")
    section = base_model_section(source)
    assert "de-quantized" in section and "Q4_1" in section and file_sha256(gguf) in section
    assert "not** the hub's" in section
    assert str(base_model_folder(source, "float32")) in section
    assert "smartfed export-base --model smollm2-135m-instruct --to BASE_DIR" in section


def test_chat_prints_the_runs_greedy_answer_with_the_chat_template(finished_run, capsys):
    from smartfed.evaluation.generation import generate

    config, _, _ = finished_run("smartfed")
    capsys.readouterr()
    argv = ["chat", "--run", config.output_dir, "--prompt", "3+4=", "--max_new_tokens", "6"]
    assert main([*argv, "--device", "cpu"]) == 0
    printed = capsys.readouterr().out.strip()
    # The same answer as SmartFed's batched generation, which renders the chat template.
    model, tokenizer = smartfed.load_run(config.output_dir, device="cpu")
    expected = generate(model, tokenizer, ["3+4="], max_new_tokens=6, progress=False)[0]
    assert printed == expected


def test_chat_on_a_missing_run_is_one_line(tmp_path, capsys):
    code = main(["chat", "--run", str(tmp_path / "nope"), "--prompt", "hi"])
    assert "--run" in _one_line_error(code, capsys.readouterr().err)


def test_pool_weighting_as_one_lora_is_exact_with_ranks_that_differ_by_matrix(
    make_adapter, tmp_path, input_ids
):
    """merge / LoRAHub as a plain LoRA: q_proj gets both modules (rank 4 + 2), v_proj one
    (rank 4), so the ranks go through PEFT's rank_pattern; PEFT's model gives the same logits."""
    from peft import PeftModel

    from smartfed.hf.export import _write_pool_lora
    from smartfed.pool import load_pool

    from ..conftest import make_tiny_llama

    pool = load_pool(
        [str(make_adapter("wide", r=4, seed=1)),
         str(make_adapter("narrow", r=2, targets=("q_proj",), seed=2))]
    )  # fmt: skip
    hub = LoraHubModel(make_tiny_llama(), pool)
    with torch.no_grad():
        hub.lorahub.weights.copy_(torch.tensor([0.7, -1.3]))
    out = tmp_path / "lora"
    out.mkdir()
    ranks = _write_pool_lora(hub, out, "tiny")
    assert sorted(set(ranks.values())) == [4, 6]
    peft_model = PeftModel.from_pretrained(make_tiny_llama(), str(out)).eval()
    with torch.no_grad():
        expected = hub(input_ids=input_ids).logits
        got = peft_model(input_ids=input_ids).logits
        base = make_tiny_llama()(input_ids=input_ids).logits
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(base, expected, atol=1e-3)  # the update is there to see
