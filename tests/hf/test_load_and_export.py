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

ALL_METHODS = ["fedit", "ffa_lora", "merge", "lorahub", "mole", "smartfed"]


@pytest.fixture
def finished_run(tiny_run_config):
    """A finished tiny run of a method: (config, summary, eval batches of the run)."""

    def factory(method: str, **overrides):
        config = tiny_run_config(method=method, num_rounds=1, **overrides)
        summary = run_federated(config)
        batches = get_runtime(config).eval_batches
        assert summary["final_eval"]["round"] == 1
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


# A script for a fresh interpreter: plain transformers + PEFT, never SmartFed.
PLAIN_PEFT = r"""
import json, sys
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM
base_dir, adapter_dir, batches_file = sys.argv[1:4]
base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
model = PeftModel.from_pretrained(base, adapter_dir).eval()
total, tokens = 0.0, 0
for batch in torch.load(batches_file):
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    labels = batch["labels"][:, 1:].reshape(-1)
    logp = torch.log_softmax(logits[:, :-1].reshape(-1, logits.shape[-1]).float(), dim=-1)
    total += float(torch.nn.functional.nll_loss(logp, labels, ignore_index=-100, reduction="sum"))
    tokens += int((labels != -100).sum())
assert "smartfed" not in sys.modules, sorted(m for m in sys.modules if "smartfed" in m)
print(json.dumps({"loss": total / tokens}))
"""


@pytest.mark.parametrize("method", ["fedit", "ffa_lora", "merge", "lorahub"])
def test_lora_exports_load_with_plain_peft_without_smartfed(method, finished_run, tmp_path):
    config, summary, batches = finished_run(method)
    out = tmp_path / "export"
    assert main(["export", config.output_dir, "--to", str(out)]) == 0
    for name in ("adapter_config.json", "adapter_model.safetensors", "README.md",
                 "tokenizer_config.json"):  # fmt: skip
        assert (out / name).is_file(), name
    assert json.loads((out / "adapter_config.json").read_text())["peft_type"] == "LORA"
    batches_file = tmp_path / "batches.pt"
    torch.save(batches, batches_file)
    script = tmp_path / "plain_peft.py"
    script.write_text(PLAIN_PEFT)
    done = subprocess.run(
        [sys.executable, str(script), config.model_name_or_path, str(out), str(batches_file)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    loss = json.loads(done.stdout.strip().splitlines()[-1])["loss"]
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
