"""`build_pool_module` on the tiny model: PEFT folder, manifest recipe, dtype, resumable builds."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from smartfed.errors import ConfigError
from smartfed.pool.adapter import load_lora_adapter
from smartfed.pool.build import BuildRecipe, build_pool_module
from smartfed.pool.pinning import adapter_digests
from smartfed.pool.registry import PoolRegistry


@pytest.fixture
def tiny_jsonl(tmp_path: Path) -> str:
    rng = random.Random(0)
    path = tmp_path / "arith.jsonl"
    with path.open("w") as handle:
        for _ in range(24):
            a, b = rng.randint(0, 9), rng.randint(0, 9)
            handle.write(json.dumps({"prompt": f"{a}+{b}=", "response": str(a + b)}) + "\n")
    return str(path)


def recipe(data: str, **overrides) -> BuildRecipe:
    values = dict(
        dataset=data,
        rank=4,
        alpha=8,
        steps=6,
        batch_size=4,
        learning_rate=1e-2,
        max_seq_len=32,
    )
    values.update(overrides)
    return BuildRecipe(**values)


def build(tmp_path: Path, model_dir: Path, the_recipe: BuildRecipe, **kwargs):
    return build_pool_module(
        "arith",
        the_recipe,
        model_name_or_path=str(model_dir),
        manifest=tmp_path / "pool" / "manifest.json",
        progress=False,
        **kwargs,
    )


def test_build_writes_a_peft_adapter_and_its_recipe(tmp_path, tiny_model_dir, tiny_jsonl):
    entry = build(tmp_path, tiny_model_dir, recipe(tiny_jsonl, save_dtype="float16"))
    folder = Path(entry.resolved_source())
    assert (folder / "adapter_config.json").is_file()
    with safe_open(folder / "adapter_model.safetensors", "pt") as handle:
        dtypes = {handle.get_tensor(k).dtype for k in handle.keys()}  # noqa: SIM118
    assert dtypes == {torch.float16}
    adapter = load_lora_adapter(folder)
    assert adapter.ranks == [4] and set(adapter.target_modules) == {"q_proj", "v_proj"}

    registered = PoolRegistry([tmp_path / "pool" / "manifest.json"]).get("arith")
    assert registered.recipe["steps"] == 6 and registered.recipe["save_dtype"] == "float16"
    assert registered.recipe["final_loss"] < registered.recipe["initial_loss"]
    assert registered.sha256 == adapter_digests(folder)  # pinned as written
    assert set(registered.sha256) == {"adapter_config.json", "adapter_model.safetensors"}
    assert not folder.with_name("arith.build").exists()  # checkpoint removed once written


@pytest.mark.integration  # a whole run end to end
def test_an_interrupted_build_resumes_to_the_same_weights(tmp_path, tiny_model_dir, tiny_jsonl):
    straight = build(tmp_path / "a", tiny_model_dir, recipe(tiny_jsonl))
    expected = load_file(Path(straight.resolved_source()) / "adapter_model.safetensors")

    assert build(tmp_path / "b", tiny_model_dir, recipe(tiny_jsonl), stop_after=3) is None
    checkpoint = tmp_path / "b" / "pool" / "modules" / "arith.build"
    assert json.loads((checkpoint / "progress.json").read_text())["step"] == 3
    resumed = build(tmp_path / "b", tiny_model_dir, recipe(tiny_jsonl))
    got = load_file(Path(resumed.resolved_source()) / "adapter_model.safetensors")
    assert got.keys() == expected.keys()
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], atol=1e-6, rtol=1e-5)
    assert resumed.recipe["final_loss"] == pytest.approx(straight.recipe["final_loss"])


def test_a_checkpoint_of_another_recipe_is_refused(tmp_path, tiny_model_dir, tiny_jsonl):
    build(tmp_path, tiny_model_dir, recipe(tiny_jsonl), stop_after=2)
    with pytest.raises(ConfigError, match=r"different build \(differs in: learning_rate\)"):
        build(tmp_path, tiny_model_dir, recipe(tiny_jsonl, learning_rate=5e-3))


def test_bad_recipe_values_are_refused():
    with pytest.raises(ConfigError, match="--save_dtype"):
        BuildRecipe(dataset="gsm8k", save_dtype="int8")
    with pytest.raises(ConfigError, match="--shard"):
        BuildRecipe(dataset="gsm8k", shard="2/2")


def test_a_bfloat16_build_trains_a_float32_lora_and_resumes_only_in_bfloat16(
    tmp_path, tiny_model_dir, tiny_jsonl
):
    """--dtype bfloat16: the frozen base in bfloat16, the LoRA trained (and saved) in float32;
    a checkpoint continues on another --device but not in another --dtype."""
    half = recipe(tiny_jsonl, dtype="bfloat16")
    assert build(tmp_path, tiny_model_dir, half, stop_after=2, device="cpu") is None
    with pytest.raises(ConfigError, match=r"different build \(differs in: dtype\)"):
        build(tmp_path, tiny_model_dir, recipe(tiny_jsonl))
    entry = build(tmp_path, tiny_model_dir, half, device="auto")
    weights = load_file(Path(entry.resolved_source()) / "adapter_model.safetensors")
    assert {t.dtype for t in weights.values()} == {torch.float32}
    assert entry.recipe["dtype"] == "bfloat16"
    assert entry.recipe["final_loss"] < entry.recipe["initial_loss"]
    with pytest.raises(ConfigError, match="--dtype"):
        BuildRecipe(dataset="gsm8k", dtype="int8")
