"""A pinned pool: a registered module whose files changed is refused before any model loads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM

import smartfed.assembly.runtime as runtime_module
import smartfed.models as models_package
import smartfed.models.loading as loading_module
from smartfed.cli.main import main
from smartfed.errors import PoolError
from smartfed.pool import PoolRegistry
from smartfed.pool.pinning import adapter_digests, check_pins
from smartfed.pool.registry import BUILTIN_MANIFEST
from smartfed.utils.hashing import file_sha256

WEIGHTS = "adapter_model.safetensors"


@pytest.fixture
def no_model_loads(monkeypatch):
    """Loading a base model fails the test: a changed pool module must be refused first."""

    def refuse(*args, **kwargs):
        raise AssertionError("the base model was loaded before the pool's pins were checked")

    for owner in (runtime_module, models_package, loading_module):
        monkeypatch.setattr(owner, "load_base_model", refuse)
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", refuse)


@pytest.fixture
def pinned(make_adapter) -> tuple[Path, Path]:
    """(adapter folder, manifest): module 'mine' registered in its own manifest and locked."""
    folder = make_adapter("mine", r=4, alpha=8)
    manifest = folder.parent / "pool.json"
    entry = {
        "source": "mine",
        "skill": "test",
        "base_model": "tiny",
        "target_modules": ["q_proj", "v_proj"],
        "rank": 4,
        "alpha": 8,
    }
    manifest.write_text(json.dumps({"version": 1, "modules": {"mine": entry}}))
    assert main(["pool", "lock", "mine", "--pool_manifest", str(manifest)]) == 0
    return folder, manifest


def _flip_last_byte(path: Path) -> None:
    # The last byte of a safetensors file is tensor data (the JSON header comes first): the file
    # still loads, so only the pin can notice.
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))


def _one_line_error(code: int, err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 1 and len(lines) == 1, err
    assert lines[0].startswith("smartfed: error: ") and "Traceback" not in err
    return lines[0]


def test_lock_records_the_digests_of_config_and_weights(pinned):
    folder, manifest = pinned
    pins = json.loads(manifest.read_text())["modules"]["mine"]["sha256"]
    assert pins == {
        "adapter_config.json": file_sha256(folder / "adapter_config.json"),
        WEIGHTS: file_sha256(folder / WEIGHTS),
    }
    assert json.loads(manifest.read_text())["modules"]["mine"]["skill"] == "test"  # kept


def test_run_refuses_a_changed_tensor_byte_before_the_model_loads(
    pinned, capsys, tmp_path, tiny_task, tiny_model_dir, no_model_loads
):
    folder, manifest = pinned
    pinned_digest = file_sha256(folder / WEIGHTS)
    _flip_last_byte(folder / WEIGHTS)
    capsys.readouterr()
    code = main(["run", "--model_name_or_path", str(tiny_model_dir), "--task", tiny_task,
                 "--lora_pool", "mine", "--pool_manifest", str(manifest), "--num_clients", "2",
                 "--topk_experts", "4", "--output_dir", str(tmp_path / "run")])  # fmt: skip
    line = _one_line_error(code, capsys.readouterr().err)
    assert str(folder / WEIGHTS) in line
    assert pinned_digest in line and file_sha256(folder / WEIGHTS) in line
    assert "smartfed pool lock mine --pool_manifest" in line


def test_the_runtime_itself_checks_pins_before_the_model(pinned, tiny_run_config, no_model_loads):
    """Simulation workers and SuperNodes build a Runtime without the CLI's checks."""
    folder, manifest = pinned
    config = tiny_run_config(lora_pool="mine", pool_manifest=str(manifest))
    _flip_last_byte(folder / WEIGHTS)
    with pytest.raises(PoolError, match="has changed since it was pinned"):
        runtime_module.Runtime(config)


def test_validate_and_eval_refuse_a_changed_config(
    pinned, capsys, tiny_model_dir, tiny_task, no_model_loads
):
    folder, manifest = pinned
    config_file = folder / "adapter_config.json"
    config_file.write_text(config_file.read_text().replace('"r": 4', '"r":  4'))
    capsys.readouterr()
    code = main(["pool", "validate", "mine", "--model", str(tiny_model_dir),
                 "--pool_manifest", str(manifest)])  # fmt: skip
    line = _one_line_error(code, capsys.readouterr().err)
    assert str(config_file) in line and file_sha256(config_file) in line

    code = main(["eval", "--benchmark", "loss", "--pool_module", "mine",
                 "--model", str(tiny_model_dir), "--pool_manifest", str(manifest),
                 "--data", tiny_task.replace("{split}", "test")])  # fmt: skip
    line = _one_line_error(code, capsys.readouterr().err)
    assert str(config_file) in line


def test_eval_of_a_run_checks_its_pool_before_the_model(
    pinned, capsys, tiny_run_config, tmp_path, no_model_loads
):
    folder, manifest = pinned
    run_dir = tmp_path / "finished"
    run_dir.mkdir()
    config = tiny_run_config(lora_pool="mine", pool_manifest=str(manifest))
    (run_dir / "config.json").write_text(json.dumps(config.to_dict()))
    _flip_last_byte(folder / WEIGHTS)
    capsys.readouterr()
    code = main(["eval", "--benchmark", "mgsm_en", "--run", str(run_dir)])
    assert "has changed since it was pinned" in _one_line_error(code, capsys.readouterr().err)


def test_lock_accepts_a_deliberate_change(pinned, capsys, tiny_model_dir):
    folder, manifest = pinned
    _flip_last_byte(folder / WEIGHTS)
    validate = ["pool", "validate", "mine", "--model", str(tiny_model_dir),
                "--pool_manifest", str(manifest)]  # fmt: skip
    assert main(validate) == 1
    capsys.readouterr()
    assert main(["pool", "lock", "mine", "--pool_manifest", str(manifest)]) == 0
    assert "re-pinned mine" in capsys.readouterr().out
    assert main(validate) == 0
    registry = PoolRegistry([manifest])
    assert registry.get("mine").sha256[WEIGHTS] == file_sha256(folder / WEIGHTS)


def test_an_unpinned_entry_is_refused_with_the_command_that_pins_it(pinned, capsys, tiny_model_dir):
    _, manifest = pinned
    data = json.loads(manifest.read_text())
    del data["modules"]["mine"]["sha256"]
    manifest.write_text(json.dumps(data))
    capsys.readouterr()
    code = main(["pool", "validate", "mine", "--model", str(tiny_model_dir),
                 "--pool_manifest", str(manifest)])  # fmt: skip
    line = _one_line_error(code, capsys.readouterr().err)
    assert "is not pinned" in line and f"smartfed pool lock mine --pool_manifest {manifest}" in line


def test_an_added_weights_file_is_refused(pinned):
    folder, manifest = pinned
    (folder / "adapter_model.bin").write_bytes(b"not pinned")
    with pytest.raises(PoolError, match=r"adapter_model\.bin is not pinned"):
        check_pins(PoolRegistry([manifest]).get("mine"))
    (folder / "adapter_model.bin").unlink()
    (folder / WEIGHTS).unlink()
    with pytest.raises(PoolError, match=r"pinned file .* is missing"):
        check_pins(PoolRegistry([manifest]).get("mine"))


def test_show_reports_a_change_instead_of_refusing(pinned, capsys):
    folder, manifest = pinned
    _flip_last_byte(folder / WEIGHTS)
    capsys.readouterr()
    assert main(["pool", "show", "mine", "--pool_manifest", str(manifest)]) == 0
    assert "pinned          NO: pool module 'mine'" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("pins", "fragment"),
    [
        ({"../x": "0" * 64}, "names '../x'"),
        ({WEIGHTS: "abc"}, "64-digit lowercase hex"),
        ([], "must be an object"),
    ],
)
def test_malformed_pins_name_the_manifest_field(pinned, pins, fragment):
    _, manifest = pinned
    data = json.loads(manifest.read_text())
    data["modules"]["mine"]["sha256"] = pins
    manifest.write_text(json.dumps(data))
    with pytest.raises(PoolError, match=r"modules\.mine\.sha256") as caught:
        PoolRegistry([manifest])
    assert fragment in str(caught.value)


def test_lock_refuses_an_unregistered_name(capsys, make_adapter):
    folder = make_adapter("loose")
    capsys.readouterr()
    code = main(["pool", "lock", str(folder)])
    assert "no registered module of that name" in _one_line_error(code, capsys.readouterr().err)


def test_every_committed_module_is_pinned_and_matches():
    registry = PoolRegistry([BUILTIN_MANIFEST])
    for name in registry.names():
        entry = registry.get(name)
        check_pins(entry)  # raises with the file and both digests if one changed
        assert entry.sha256 == adapter_digests(entry.resolved_source())
