"""``smartfed pool validate``: a summary and exit 0 for a good adapter, one line and exit 1 else."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import LlamaConfig, LlamaForCausalLM

from smartfed.cli.main import main

from ..conftest import TINY


def _validate(capsys, adapter: str | Path, model_dir: Path, *extra: str) -> tuple[int, str, str]:
    capsys.readouterr()  # drop what fixtures printed (PEFT/transformers progress bars)
    code = main(["pool", "validate", str(adapter), "--model", str(model_dir), *extra])
    out, err = capsys.readouterr()
    return code, out, err


def _assert_one_line_error(code: int, err: str, *fragments: str) -> None:
    assert code == 1
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("smartfed: error: ")
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def test_good_adapter_gets_a_summary(capsys, make_adapter, tiny_model_dir):
    code, out, err = _validate(capsys, make_adapter("good", r=4), tiny_model_dir)
    assert code == 0, err
    assert "OK: 4 matrices fit tiny-llama" in out
    assert "q_proj: 2 layers, v_proj: 2 layers" in out
    assert "16 rank-1 experts" in out


def test_adapter_for_another_base_names_module_and_shapes(capsys, tmp_path, tiny_model_dir):
    from peft import LoraConfig, get_peft_model

    wider = LlamaForCausalLM(LlamaConfig(**{**TINY, "hidden_size": 48}))
    config = LoraConfig(r=4, target_modules=["q_proj"], init_lora_weights=False)
    get_peft_model(wider, config).save_pretrained(tmp_path / "wide")
    code, _, err = _validate(capsys, tmp_path / "wide", tiny_model_dir)
    _assert_one_line_error(
        code, err, "model.layers.0.self_attn.q_proj", "(4, 48)", "expected (4, 32)"
    )


def test_target_module_absent_from_model(capsys, tmp_path, tiny_model_dir):
    from peft import LoraConfig, get_peft_model

    deeper = LlamaForCausalLM(LlamaConfig(**{**TINY, "num_hidden_layers": 3}))
    config = LoraConfig(r=2, target_modules=["v_proj"], layers_to_transform=[2])
    get_peft_model(deeper, config).save_pretrained(tmp_path / "deep")
    code, _, err = _validate(capsys, tmp_path / "deep", tiny_model_dir)
    _assert_one_line_error(code, err, "model.layers.2.self_attn.v_proj", "does not have")


@pytest.mark.parametrize(
    ("kwargs", "feature"),
    [
        ({"use_dora": True}, "DoRA"),
        ({"lora_bias": True}, "LoRA bias"),
        ({"bias": "all"}, "trained biases"),
        ({"modules_to_save": ["lm_head"]}, "modules_to_save"),
        ({"targets": ("embed_tokens",)}, "embedding LoRA"),
    ],
)
def test_unsupported_features_are_named(capsys, make_adapter, tiny_model_dir, kwargs, feature):
    code, _, err = _validate(capsys, make_adapter("bad", **kwargs), tiny_model_dir)
    _assert_one_line_error(code, err, "unsupported feature", feature)


def test_unsupported_adapter_type(capsys, tmp_path, tiny_model_dir):
    from peft import IA3Config, get_peft_model

    from ..conftest import make_tiny_llama

    config = IA3Config(target_modules=["v_proj", "down_proj"], feedforward_modules=["down_proj"])
    get_peft_model(make_tiny_llama(), config).save_pretrained(tmp_path / "ia3")
    code, _, err = _validate(capsys, tmp_path / "ia3", tiny_model_dir)
    _assert_one_line_error(code, err, "IA3 adapter", "needs LoRA")


def test_nan_weights(capsys, make_adapter, tiny_model_dir):
    path = make_adapter("nan")
    weights = path / "adapter_model.safetensors"
    state = load_file(weights)
    key = sorted(k for k in state if "lora_B" in k)[0]
    state[key][0, 0] = float("nan")
    state[key][1, 0] = float("inf")
    save_file(state, weights)
    code, _, err = _validate(capsys, path, tiny_model_dir)
    _assert_one_line_error(code, err, "2 NaN/Inf values", "lora_B")


def test_missing_weights_file(capsys, make_adapter, tiny_model_dir):
    path = make_adapter("noweights")
    (path / "adapter_model.safetensors").unlink()
    code, _, err = _validate(capsys, path, tiny_model_dir)
    _assert_one_line_error(code, err, "cannot read adapter weights", "adapter_model.safetensors")


def test_unreadable_weights_file(capsys, make_adapter, tiny_model_dir):
    path = make_adapter("corrupt")
    (path / "adapter_model.safetensors").write_bytes(b"not a safetensors file")
    code, _, err = _validate(capsys, path, tiny_model_dir)
    _assert_one_line_error(code, err, "adapter weights", str(path))


def test_missing_config(capsys, make_adapter, tiny_model_dir):
    path = make_adapter("noconfig")
    (path / "adapter_config.json").unlink()
    code, _, err = _validate(capsys, path, tiny_model_dir)
    _assert_one_line_error(code, err, "no adapter_config.json")


def test_broken_config(capsys, make_adapter, tiny_model_dir):
    path = make_adapter("broken")
    (path / "adapter_config.json").write_text("{not json")
    code, _, err = _validate(capsys, path, tiny_model_dir)
    _assert_one_line_error(code, err, "cannot read", "adapter_config.json")


def test_rank_in_config_contradicting_weights(capsys, make_adapter, tiny_model_dir):
    path = make_adapter("liar", r=4)
    config = json.loads((path / "adapter_config.json").read_text())
    config["r"] = 8
    (path / "adapter_config.json").write_text(json.dumps(config))
    code, _, err = _validate(capsys, path, tiny_model_dir)
    _assert_one_line_error(code, err, "rank 4 in its weights", "r=8")


def test_unknown_pool_name_lists_known_names(capsys, tiny_model_dir):
    code, _, err = _validate(capsys, "no_such_module", tiny_model_dir)
    _assert_one_line_error(code, err, "unknown pool module 'no_such_module'", "cn_chat", "en_math")


def test_registered_but_unbuilt_module(capsys, tmp_path, tiny_model_dir):
    manifest = tmp_path / "pool.json"
    manifest.write_text(
        json.dumps(
            {
                "modules": {
                    "ghost": {
                        "source": "nowhere/ghost",
                        "skill": "none",
                        "base_model": "tiny",
                        "target_modules": ["q_proj"],
                        "rank": 4,
                        "alpha": 8,
                    }
                }
            }
        )
    )
    code, _, err = _validate(capsys, "ghost", tiny_model_dir, "--pool_manifest", str(manifest))
    _assert_one_line_error(code, err, "'ghost' is registered", "adapter is missing")


def test_manifest_names_resolve_relative_to_the_manifest(capsys, make_adapter, tiny_model_dir):
    path = make_adapter("mine", r=4, alpha=8)
    manifest = path.parent / "pool.json"
    entry = {
        "source": "mine",
        "skill": "test",
        "base_model": "tiny",
        "target_modules": ["q_proj", "v_proj"],
        "rank": 4,
        "alpha": 8,
    }
    manifest.write_text(json.dumps({"modules": {"mine": entry}}))
    assert main(["pool", "lock", "mine", "--pool_manifest", str(manifest)]) == 0
    code, _, err = _validate(capsys, "mine", tiny_model_dir, "--pool_manifest", str(manifest))
    assert code == 0, err
    # a manifest that records the wrong shape is caught
    entry["rank"] = 16
    entry["sha256"] = json.loads(manifest.read_text())["modules"]["mine"]["sha256"]
    manifest.write_text(json.dumps({"modules": {"mine": entry}}))
    code, _, err = _validate(capsys, "mine", tiny_model_dir, "--pool_manifest", str(manifest))
    _assert_one_line_error(code, err, "records rank 16")


def test_bad_manifest_field_names_file_and_field(capsys, tmp_path, tiny_model_dir):
    manifest = tmp_path / "pool.json"
    manifest.write_text(json.dumps({"modules": {"x": {"source": "x", "rank": "big"}}}))
    code, _, err = _validate(capsys, "x", tiny_model_dir, "--pool_manifest", str(manifest))
    _assert_one_line_error(code, err, str(manifest), "modules.x")


def test_model_state_is_untouched_by_validation(make_adapter):
    from smartfed.pool import load_lora_adapter

    from ..conftest import make_tiny_llama

    model = make_tiny_llama()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    load_lora_adapter(make_adapter("x")).validate_against(model)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_config_naming_targets_the_weights_lack(capsys, make_adapter, tiny_model_dir):
    path = make_adapter("overclaims", r=4)
    config = json.loads((path / "adapter_config.json").read_text())
    config["target_modules"] = ["q_proj", "v_proj", "qkv_fused"]
    (path / "adapter_config.json").write_text(json.dumps(config))
    code, _, err = _validate(capsys, path, tiny_model_dir)
    _assert_one_line_error(
        code, err, "qkv_fused", str(path / "adapter_config.json"), "adapt q_proj, v_proj"
    )
    # A target of the model that the weights lack is refused the same way.
    config["target_modules"] = ["q_proj", "v_proj", "k_proj"]
    (path / "adapter_config.json").write_text(json.dumps(config))
    code, _, err = _validate(capsys, path, tiny_model_dir)
    _assert_one_line_error(code, err, "target_modules k_proj,")
