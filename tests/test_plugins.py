"""A method and a router design written in one file each, outside the package, work through the
CLI: the flag shows in --help, runs, and is refused under another method."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

PLUGINS = Path(__file__).resolve().parent / "plugins"
TOYS = f"{PLUGINS / 'toy_method.py'},{PLUGINS / 'toy_router.py'}"


def _smartfed(*args: str, plugins: str = TOYS) -> subprocess.CompletedProcess:
    env = {**os.environ, "SMARTFED_PLUGINS": plugins, "FLWR_TELEMETRY_ENABLED": "0"}
    return subprocess.run(
        [sys.executable, "-m", "smartfed.cli.main", *args],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip


@pytest.fixture
def tiny_flags(tiny_run_config, tmp_path) -> list[str]:
    config = tiny_run_config()
    return [
        "--model_name_or_path", config.model_name_or_path, "--lora_pool", config.lora_pool,
        "--task", config.task, "--num_clients", "2", "--sample_clients", "2",
        "--num_rounds", "1", "--local_steps", "1", "--batch_size", "4", "--max_seq_len", "64",
        "--eval_samples", "4", "--eval_batch_size", "4",
    ]  # fmt: skip


@pytest.mark.integration  # a whole run end to end
def test_toy_method_setting_is_a_flag_runs_and_is_refused_elsewhere(tiny_flags, tmp_path):
    help_text = _smartfed("run", "--help").stdout
    assert "--toy_start" in help_text and "[toy]" in help_text
    out = tmp_path / "toy"
    done = _smartfed("run", *tiny_flags, "--method", "toy", "--toy_start", "0.3",
                     "--output_dir", str(out))  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    config = json.loads((out / "config.json").read_text())
    assert config["method"] == "toy" and config["method_settings"]["toy_start"] == 0.3
    weights = json.loads((out / "summary.json").read_text())["final_state"]["module_weights"]
    assert all(w != 0.3 for w in weights.values())  # trained away from the start
    refused = _smartfed("run", *tiny_flags, "--method", "fedit", "--toy_start", "0.3",
                        "--output_dir", str(tmp_path / "no"))  # fmt: skip
    assert refused.returncode == 1
    assert refused.stderr.strip().splitlines() == [
        "smartfed: error: --toy_start is a setting of toy, not of method fedit (fedit's "
        "settings: learning_rate, lora_rank, lora_alpha, lora_targets)"
    ]
    assert not (tmp_path / "no").exists()


@pytest.mark.integration  # a whole run end to end
def test_toy_router_runs_through_the_cli(tiny_flags, tmp_path):
    listed = _smartfed("methods").stdout
    assert "toy_scaled" in listed and "[router]" in listed
    out = tmp_path / "router"
    done = _smartfed("run", *tiny_flags, "--router", "toy_scaled", "--output_dir", str(out))
    assert done.returncode == 0, done.stderr[-2000:]
    from safetensors.torch import load_file

    routers = load_file(str(out / "final" / "routers.safetensors"))
    assert routers and all(name.endswith("router.scale") for name in routers)
    assert all(t.ndim == 1 for t in routers.values())  # M values per matrix travel, no more
    unknown = _smartfed("run", *tiny_flags, "--router", "toy_scaled", plugins="")
    assert unknown.returncode == 1
    assert "unknown router design 'toy_scaled'" in unknown.stderr
    assert len(unknown.stderr.strip().splitlines()) == 1
